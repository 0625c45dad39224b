//! The dashboard's state and `update`: a pure fold of events and keys, no I/O.

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::dev::command::Command;
use crate::event::{Event, EventKind};
use crate::pipeline::layer::LayerKind;

/// Log lines kept per artifact; older ones are dropped.
pub const LOG_CAPACITY: usize = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformState {
    Queued,
    Building,
    Pushing,
    Pushed,
    Failed,
    Cancelled,
}

impl PlatformState {
    pub fn label(self) -> &'static str {
        match self {
            PlatformState::Queued => "queued",
            PlatformState::Building => "building",
            PlatformState::Pushing => "pushing",
            PlatformState::Pushed => "pushed",
            PlatformState::Failed => "failed",
            PlatformState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerView {
    pub platform: String,
    pub kind: LayerKind,
    pub digest: String,
    pub size: u64,
    pub uploaded: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushView {
    pub tag: String,
    pub digest: String,
    pub bytes_uploaded: u64,
    /// Wall-clock time of the last push (HH:MM:SS).
    pub time: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub platform: String,
    pub text: String,
    pub is_error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactView {
    pub image: String,
    pub platforms: Vec<(String, PlatformState)>,
    pub last_duration_ms: Option<u64>,
    pub debug: bool,
    pub log: VecDeque<LogLine>,
    pub layers: Vec<LayerView>,
    pub push: Option<PushView>,
    pub last_error: Option<String>,
}

impl ArtifactView {
    pub fn new(image: &str, platforms: &[String]) -> Self {
        ArtifactView {
            image: image.to_string(),
            platforms: platforms.iter().map(|p| (p.clone(), PlatformState::Queued)).collect(),
            last_duration_ms: None,
            debug: false,
            log: VecDeque::new(),
            layers: Vec::new(),
            push: None,
            last_error: None,
        }
    }

    fn push_log(&mut self, platform: &str, text: &str) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(LogLine {
            platform: platform.to_string(),
            text: text.to_string(),
            is_error: is_go_error(text),
        });
    }

    fn set_all(&mut self, state: PlatformState) {
        for (_, s) in &mut self.platforms {
            *s = state;
        }
    }

    /// Share of the work done in the current build, for the progress gauge.
    pub fn progress(&self) -> f64 {
        if self.platforms.is_empty() {
            return 0.0;
        }
        let done: f64 = self
            .platforms
            .iter()
            .map(|(_, s)| match s {
                PlatformState::Queued | PlatformState::Building => 0.0,
                PlatformState::Pushing => 0.5,
                _ => 1.0,
            })
            .sum();
        done / self.platforms.len() as f64
    }

    pub fn is_busy(&self) -> bool {
        self.platforms
            .iter()
            .any(|(_, s)| matches!(s, PlatformState::Queued | PlatformState::Building | PlatformState::Pushing))
    }
}

/// `file.go:12:3: message` and friends: what go prints for compile errors.
pub fn is_go_error(line: &str) -> bool {
    let t = line.trim_start();
    t.contains(".go:")
        || t.starts_with("# ")
        || t.contains("undefined:")
        || t.starts_with("go: ")
        || t.contains("cannot ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Artifacts,
    Log,
    Layers,
}

impl Focus {
    fn next(self) -> Focus {
        match self {
            Focus::Artifacts => Focus::Log,
            Focus::Log => Focus::Layers,
            Focus::Layers => Focus::Artifacts,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub artifacts: Vec<ArtifactView>,
    pub selected: usize,
    pub focus: Focus,
    /// Lines scrolled up from the bottom of the log (0 = follow the tail).
    pub log_scroll: usize,
    pub target: String,
    pub auto: bool,
    pub debug: bool,
    pub watching: bool,
    pub help: bool,
    pub quitting: bool,
    /// Loop-wide message (errors, reloads).
    pub status: Option<String>,
    pub color: bool,
}

/// Everything `update` reacts to.
#[derive(Debug, Clone)]
pub enum Input {
    Event(Event),
    Key(KeyEvent),
}

impl State {
    pub fn new(target: &str, artifacts: Vec<(String, Vec<String>)>, debug: bool, color: bool) -> State {
        State {
            artifacts: artifacts.iter().map(|(image, platforms)| ArtifactView::new(image, platforms)).collect(),
            selected: 0,
            focus: Focus::Artifacts,
            log_scroll: 0,
            target: target.to_string(),
            auto: true,
            debug,
            watching: false,
            help: false,
            quitting: false,
            status: None,
            color,
        }
    }

    pub fn selected_artifact(&self) -> Option<&ArtifactView> {
        self.artifacts.get(self.selected)
    }

    fn artifact_mut(&mut self, image: &str) -> Option<&mut ArtifactView> {
        if let Some(i) = self.artifacts.iter().position(|a| a.image == image) {
            return self.artifacts.get_mut(i);
        }
        if image.is_empty() {
            return None;
        }
        // An artifact that appeared with a reloaded config.
        self.artifacts.push(ArtifactView::new(image, &[]));
        self.artifacts.last_mut()
    }
}

/// Fold one input into the state; returns the commands for the engine.
pub fn update(state: &mut State, input: Input) -> Vec<Command> {
    match input {
        Input::Event(event) => {
            apply_event(state, event);
            Vec::new()
        }
        Input::Key(key) => apply_key(state, key),
    }
}

fn apply_event(state: &mut State, event: Event) {
    let image = event.artifact.clone();
    match event.kind {
        EventKind::Watching => state.watching = true,
        EventKind::DebugChanged { debug } => state.debug = debug,
        EventKind::ConfigReloaded => state.status = Some("configuration reloaded".to_string()),
        EventKind::Error { message } => {
            if let Some(a) = state.artifacts.iter_mut().find(|a| a.image == image) {
                a.last_error = Some(message.clone());
            }
            state.status = Some(message);
        }
        EventKind::BuildStarted { platforms, debug } => {
            if let Some(a) = state.artifact_mut(&image) {
                a.platforms = platforms.iter().map(|p| (p.clone(), PlatformState::Building)).collect();
                a.debug = debug;
                a.layers.clear();
                a.last_error = None;
                a.push_log("", &format!("── build started{} ──", if debug { " (debug)" } else { "" }));
            }
        }
        EventKind::BuildLog { platform, line } => {
            if let Some(a) = state.artifact_mut(&image) {
                a.push_log(&platform, &line);
            }
        }
        EventKind::Compiled { platform, duration_ms, relinked } => {
            if let Some(a) = state.artifact_mut(&image) {
                if let Some((_, s)) = a.platforms.iter_mut().find(|(p, _)| *p == platform) {
                    *s = PlatformState::Pushing;
                }
                a.push_log(&platform, &format!("{} in {duration_ms} ms", crate::headless::compiled_as(relinked)));
            }
        }
        EventKind::RelinkChecked { platform, same_as_go } => {
            if let Some(a) = state.artifact_mut(&image).filter(|_| !same_as_go) {
                a.push_log(&platform, "the relinked binary differs from go build's: the next build runs go");
            }
        }
        EventKind::RelinkReady { platform } => {
            if let Some(a) = state.artifact_mut(&image) {
                a.push_log(&platform, "ready to relink edits without the go command");
            }
        }
        EventKind::Layer { platform, kind, digest, size, uploaded } => {
            if let Some(a) = state.artifact_mut(&image) {
                a.layers.push(LayerView { platform, kind, digest, size, uploaded });
            }
        }
        EventKind::Pushed { tag, digest, debug, bytes_uploaded, duration_ms, .. } => {
            let time = event.time.get(11..19).unwrap_or_default().to_string();
            if let Some(a) = state.artifact_mut(&image) {
                a.set_all(PlatformState::Pushed);
                a.debug = debug;
                a.last_duration_ms = Some(duration_ms);
                a.push_log("", &format!("pushed {tag}"));
                a.push = Some(PushView { tag, digest, bytes_uploaded, time, duration_ms });
            }
        }
        EventKind::BuildFailed { error } => {
            if let Some(a) = state.artifact_mut(&image) {
                a.set_all(PlatformState::Failed);
                a.push_log("", &format!("build failed: {}", error.lines().next().unwrap_or_default()));
                a.last_error = Some(error);
            }
        }
        EventKind::BuildCancelled => {
            if let Some(a) = state.artifact_mut(&image) {
                a.set_all(PlatformState::Cancelled);
                a.push_log("", "build cancelled: newer changes arrived");
            }
        }
    }
}

fn apply_key(state: &mut State, key: KeyEvent) -> Vec<Command> {
    if key.kind == KeyEventKind::Release {
        return Vec::new();
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        state.quitting = true;
        return vec![Command::Quit];
    }
    if state.help {
        // Any key closes the help overlay; q still quits.
        state.help = false;
        if key.code == KeyCode::Char('q') {
            state.quitting = true;
            return vec![Command::Quit];
        }
        return Vec::new();
    }
    let log_len = state.selected_artifact().map(|a| a.log.len()).unwrap_or(0);
    match key.code {
        KeyCode::Char('q') => {
            state.quitting = true;
            return vec![Command::Quit];
        }
        KeyCode::Up | KeyCode::Char('k') => {
            if state.focus == Focus::Log {
                state.log_scroll = (state.log_scroll + 1).min(log_len);
            } else {
                state.selected = state.selected.saturating_sub(1);
                state.log_scroll = 0;
            }
        }
        KeyCode::Down | KeyCode::Char('j') => {
            if state.focus == Focus::Log {
                state.log_scroll = state.log_scroll.saturating_sub(1);
            } else if state.selected + 1 < state.artifacts.len() {
                state.selected += 1;
                state.log_scroll = 0;
            }
        }
        KeyCode::Tab => state.focus = state.focus.next(),
        KeyCode::PageUp => state.log_scroll = (state.log_scroll + 10).min(log_len),
        KeyCode::PageDown => state.log_scroll = state.log_scroll.saturating_sub(10),
        KeyCode::Home => state.log_scroll = log_len,
        KeyCode::End => state.log_scroll = 0,
        KeyCode::Char('r') => {
            if let Some(a) = state.selected_artifact() {
                return vec![Command::Rebuild(Some(a.image.clone()))];
            }
        }
        KeyCode::Char('R') => return vec![Command::Rebuild(None)],
        KeyCode::Char('d') => return vec![Command::ToggleDebug],
        KeyCode::Char('a') => {
            state.auto = !state.auto;
            return vec![Command::ToggleAuto];
        }
        KeyCode::Char('c') => {
            if let Some(a) = state.artifacts.get_mut(state.selected) {
                a.log.clear();
            }
            state.log_scroll = 0;
        }
        KeyCode::Char('?') => state.help = true,
        _ => {}
    }
    Vec::new()
}
