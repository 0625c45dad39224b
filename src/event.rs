//! The one event stream: the pipeline and the dev engine send, the headless renderers and
//! the dashboard read. Serialized as JSON lines with `event`, `artifact` and `time`.

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set once this sink (or a clone) sent `BuildStarted`; see [`EventSink::noting_start`].
    started: Option<Arc<AtomicBool>>,
}

impl EventSink {
    pub fn new(tx: UnboundedSender<Event>, artifact: &str) -> Self {
        EventSink { tx: Some(tx), artifact: artifact.to_string(), started: None }
    }

    pub fn discard() -> Self {
        EventSink { tx: None, artifact: String::new(), started: None }
    }

    pub fn for_artifact(&self, artifact: &str) -> Self {
        EventSink { tx: self.tx.clone(), artifact: artifact.to_string(), started: None }
    }

    /// This sink for one build, and a flag that turns true once the build has said it
    /// started: a build cancelled before that (waiting for its turn under
    /// `build.local.concurrency`, say) was never announced, so its cancellation is not either.
    pub fn noting_start(&self) -> (Self, Arc<AtomicBool>) {
        let started = Arc::new(AtomicBool::new(false));
        (EventSink { started: Some(started.clone()), ..self.clone() }, started)
    }

    pub fn send(&self, kind: EventKind) {
        if let (Some(started), EventKind::BuildStarted { .. }) = (&self.started, &kind) {
            started.store(true, Ordering::Relaxed);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Event { artifact: self.artifact.clone(), time: now_rfc3339(), kind });
        }
    }
}
