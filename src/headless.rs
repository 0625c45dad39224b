//! Headless renderers of the event stream: readable text lines, or one JSON object per line.

use crate::event::{Event, EventKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// How a platform's binary was built, for the log.
pub fn compiled_as(relinked: bool) -> &'static str {
    if relinked {
        "relinked without the go command, done"
    } else {
        "go build done"
    }
}

/// One event as a readable line (no trailing newline).
pub fn render_text(event: &Event) -> String {
    let who = if event.artifact.is_empty() { String::new() } else { format!("[{}] ", event.artifact) };
    let body = match &event.kind {
        EventKind::Watching => "watching for changes".to_string(),
        EventKind::BuildStarted { platforms, debug } => {
            format!("building for {}{}", platforms.join(", "), if *debug { " (debug)" } else { "" })
        }
        EventKind::BuildLog { platform, line } => format!("{platform} | {line}"),
        EventKind::Compiled { platform, duration_ms, relinked } => {
            format!("{platform} {} in {duration_ms} ms", compiled_as(*relinked))
        }
        EventKind::RelinkChecked { platform, same_as_go } => format!(
            "{platform} relinked binary {}",
            if *same_as_go { "confirmed by go build -n" } else { "differs from go build's" }
        ),
        EventKind::RelinkReady { platform } => format!("{platform} ready to relink edits without the go command"),
        EventKind::Layer { platform, kind, digest, size, uploaded } => format!(
            "{platform} layer {kind:<6} {} {:>9} {}",
            short_digest(digest),
            human_bytes(*size),
            if *uploaded { "uploaded" } else { "already there" }
        ),
        EventKind::Pushed { tag, bytes_uploaded, bytes_skipped, push_ms, duration_ms, debug, .. } => format!(
            "pushed {tag} ({} uploaded, {} already there, push {push_ms} ms, total {duration_ms} ms{})",
            human_bytes(*bytes_uploaded),
            human_bytes(*bytes_skipped),
            if *debug { ", debug" } else { "" }
        ),
        EventKind::BuildFailed { error } => format!("build failed: {error}"),
        EventKind::BuildCancelled => "build cancelled (newer changes arrived)".to_string(),
        EventKind::DebugChanged { debug } => {
            format!("debug mode {}", if *debug { "on" } else { "off" })
        }
        EventKind::ConfigReloaded => "configuration reloaded".to_string(),
        EventKind::Error { message } => format!("error: {message}"),
    };
    format!("{who}{body}")
}

pub fn render_json(event: &Event) -> String {
    serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"event\":\"error\",\"message\":\"{e}\"}}"))
}

pub fn render(format: OutputFormat, event: &Event) -> String {
    match format {
        OutputFormat::Text => render_text(event),
        OutputFormat::Json => render_json(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_event_artifact_and_time() {
        let event = Event {
            artifact: "hello".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            kind: EventKind::Pushed {
                tag: "a:b@sha256:00".into(),
                digest: "sha256:00".into(),
                debug: false,
                bytes_uploaded: 5,
                bytes_skipped: 0,
                push_ms: 3,
                duration_ms: 7,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&event)).unwrap();
        assert_eq!(v["event"], "pushed");
        assert_eq!(v["artifact"], "hello");
        assert_eq!(v["bytes_uploaded"], 5);
        assert!(render_text(&event).contains("pushed a:b@sha256:00"));
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
