//! The one event stream: the pipeline and the dev engine send, the headless renderers and
//! the dashboard read. Serialized as JSON lines with `event`, `artifact` and `time`.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::pipeline::layer::LayerKind;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// The image as written in skaffold.yaml (empty for loop-wide events).
    pub artifact: String,
    /// RFC 3339 with milliseconds.
    pub time: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Watching,
    BuildStarted {
        platforms: Vec<String>,
        debug: bool,
    },
    BuildLog {
        platform: String,
        line: String,
    },
    /// `go build` finished for one platform (kodev's addition, for timing).
    Compiled {
        platform: String,
        duration_ms: u64,
        /// Built by replaying go's last compile and link of the main package (see `relink`).
        relinked: bool,
    },
    /// go confirmed (or not) that a relinked binary is the one `go build` makes.
    RelinkChecked {
        platform: String,
        same_as_go: bool,
    },
    /// A recipe for relinking this platform's binary was recorded in the background (go had
    /// built it without compiling the main package): the next edit of the main package is
    /// relinked without the go command.
    RelinkReady {
        platform: String,
    },
    Layer {
        platform: String,
        kind: LayerKind,
        digest: String,
        size: u64,
        uploaded: bool,
    },
    Pushed {
        tag: String,
        digest: String,
        debug: bool,
        bytes_uploaded: u64,
        /// Bytes of layers and configs the target already had.
        bytes_skipped: u64,
        /// Publishing alone (the rest of `duration_ms` is go build and layers).
        push_ms: u64,
        duration_ms: u64,
    },
    BuildFailed {
        error: String,
    },
    BuildCancelled,
    DebugChanged {
        debug: bool,
    },
    ConfigReloaded,
    Error {
        message: String,
    },
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Sends events for one artifact; a closed receiver is not an error (nobody is listening).
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: Option<UnboundedSender<Event>>,
    artifact: String,
    /// The build this sink speaks for, if any; see [`EventSink::noting_start`].
    build: Option<BuildHandle>,
}

/// Where one build of `kodev dev` stands, as its events have told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BuildStage {
    Waiting,
    Started,
    /// `pushed` or `build_failed` was sent: the build's outcome is told.
    Ended,
    Cancelled,
}

/// One build's stage, shared by its sink and whoever may cancel it. Sending a progress event
/// and cancelling take the same lock, so the stream tells one story: a build that said it
/// started and is cancelled before its outcome ends with `build_cancelled`, and says nothing
/// after it (its task may still run a moment before the abort takes hold); one cancelled
/// before it started says nothing at all.
#[derive(Debug, Clone)]
pub struct BuildHandle(Arc<std::sync::Mutex<BuildStage>>);

impl BuildHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, BuildStage> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The build is stopped: say so through `sink` if it had said it started and not ended.
    pub fn cancel(&self, sink: &EventSink) {
        let mut stage = self.lock();
        if *stage == BuildStage::Started {
            sink.send(EventKind::BuildCancelled);
        }
        *stage = BuildStage::Cancelled;
    }
}

impl EventSink {
    pub fn new(tx: UnboundedSender<Event>, artifact: &str) -> Self {
        EventSink { tx: Some(tx), artifact: artifact.to_string(), build: None }
    }

    pub fn discard() -> Self {
        EventSink { tx: None, artifact: String::new(), build: None }
    }

    pub fn for_artifact(&self, artifact: &str) -> Self {
        EventSink { tx: self.tx.clone(), artifact: artifact.to_string(), build: None }
    }

    /// This sink for one build, and the handle that cancels it (see [`BuildHandle`]): a build
    /// cancelled before it said it started (waiting for its turn under
    /// `build.local.concurrency`, say) was never announced, so its cancellation is not either.
    pub fn noting_start(&self) -> (Self, BuildHandle) {
        let handle = BuildHandle(Arc::new(std::sync::Mutex::new(BuildStage::Waiting)));
        (EventSink { build: Some(handle.clone()), ..self.clone() }, handle)
    }

    pub fn send(&self, kind: EventKind) {
        let Some(build) = &self.build else { return self.deliver(kind) };
        let mut stage = build.lock();
        // What a build tells of its own progress; checks of go and recorded recipes that
        // follow a finished build are not its progress and always go out.
        let progress = matches!(
            kind,
            EventKind::BuildStarted { .. }
                | EventKind::BuildLog { .. }
                | EventKind::Compiled { .. }
                | EventKind::Layer { .. }
                | EventKind::Pushed { .. }
                | EventKind::BuildFailed { .. }
        );
        if progress && *stage == BuildStage::Cancelled {
            return;
        }
        match kind {
            EventKind::BuildStarted { .. } => *stage = BuildStage::Started,
            EventKind::Pushed { .. } | EventKind::BuildFailed { .. } => *stage = BuildStage::Ended,
            _ => {}
        }
        self.deliver(kind);
    }

    fn deliver(&self, kind: EventKind) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Event { artifact: self.artifact.clone(), time: now_rfc3339(), kind });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(event) = rx.try_recv() {
            let json = serde_json::to_value(&event).unwrap();
            names.push(json["event"].as_str().unwrap().to_string());
        }
        names
    }

    fn started() -> EventKind {
        EventKind::BuildStarted { platforms: vec!["linux/amd64".into()], debug: false }
    }

    fn log() -> EventKind {
        EventKind::BuildLog { platform: "linux/amd64".into(), line: "x".into() }
    }

    /// A cancelled build's stream ends with `build_cancelled` if it said it started, and says
    /// nothing of its progress after that, even when its task runs on a moment (an abort
    /// takes hold at the task's next await); once its outcome is told, cancelling says nothing.
    #[test]
    fn a_cancelled_build_tells_one_story() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = EventSink::new(tx, "app");

        let (build, handle) = sink.noting_start();
        handle.cancel(&sink);
        build.send(started());
        assert_eq!(names(&mut rx), Vec::<String>::new(), "cancelled before it started: nothing at all");

        let (build, handle) = sink.noting_start();
        build.send(started());
        handle.cancel(&sink);
        build.send(log());
        assert_eq!(names(&mut rx), ["build_started", "build_cancelled"]);

        let (build, handle) = sink.noting_start();
        build.send(started());
        build.send(EventKind::BuildFailed { error: "e".into() });
        handle.cancel(&sink);
        build.send(EventKind::RelinkReady { platform: "linux/amd64".into() });
        assert_eq!(names(&mut rx), ["build_started", "build_failed", "relink_ready"], "ended: no cancellation");
    }
}
