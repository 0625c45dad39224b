//! Watching the tree: notify (inotify) or polling, debounced, on directories so that
//! editors that save by rename are seen. Filtering of paths that never trigger lives here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{self, EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, new_debouncer_opt, DebounceEventResult, FileIdMap};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Trigger {
    Notify,
    Polling,
    Manual,
}

/// What the watcher reports to the engine.
#[derive(Debug)]
pub enum WatchMessage {
    Changed(Vec<PathBuf>),
    Failed(String),
}

/// Quiet time that makes one save (its write, chmod and rename events) one batch; it adds
/// directly to edit-to-pushed latency, so it is kept short. Longer bursts are handled by
/// cancelling the stale build.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _inner: Box<dyn std::any::Any + Send>,
    pub trigger: Trigger,
}

/// Paths that never trigger a build: VCS metadata, kodev's own output, caches.
pub fn is_ignored(path: &Path, ignored_roots: &[PathBuf]) -> bool {
    path.components().any(|c| {
        let s = c.as_os_str();
        s == ".git" || s == ".kodev" || s == ".hg" || s == ".svn"
    }) || ignored_roots.iter().any(|r| path.starts_with(r))
        || path.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            // Editor swap and backup files.
            n.ends_with('~') || n.ends_with(".swp") || n.ends_with(".swx") || n.starts_with(".#") || n == "4913"
        })
}

fn handler(
    tx: UnboundedSender<WatchMessage>,
    ignored_roots: Vec<PathBuf>,
) -> impl FnMut(DebounceEventResult) + Send + 'static {
    move |result: DebounceEventResult| match result {
        Ok(events) => {
            let mut paths: Vec<PathBuf> = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)))
                .flat_map(|e| e.paths.iter().cloned())
                .filter(|p| !is_ignored(p, &ignored_roots))
                .collect();
            paths.sort();
            paths.dedup();
            if !paths.is_empty() {
                let _ = tx.send(WatchMessage::Changed(paths));
            }
        }
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            let _ = tx.send(WatchMessage::Failed(text.join("; ")));
        }
    }
}

fn is_resource_exhaustion(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(io) => matches!(io.raw_os_error(), Some(24) | Some(28)),
        _ => false,
    }
}

/// Start watching `root`. An exhausted inotify limit or too many open files falls back to polling.
pub fn start(
    root: &Path,
    trigger: Trigger,
    poll_interval: Duration,
    ignored_roots: Vec<PathBuf>,
    tx: UnboundedSender<WatchMessage>,
) -> Result<WatchHandle, String> {
    match trigger {
        Trigger::Manual => Ok(WatchHandle { _inner: Box::new(()), trigger }),
        Trigger::Notify => {
            let attempt = new_debouncer(DEBOUNCE, None, handler(tx.clone(), ignored_roots.clone()))
                .and_then(|mut d| d.watch(root, RecursiveMode::Recursive).map(|_| d));
            match attempt {
                Ok(debouncer) => Ok(WatchHandle { _inner: Box::new(debouncer), trigger }),
                Err(e) if is_resource_exhaustion(&e) => {
                    let _ = tx.send(WatchMessage::Failed(format!(
                        "cannot watch {} with inotify ({e}); falling back to polling every {} ms. Raise fs.inotify.max_user_watches or the open-file limit (ulimit -n) to use notify",
                        root.display(),
                        poll_interval.as_millis()
                    )));
                    start(root, Trigger::Polling, poll_interval, ignored_roots, tx)
                }
                Err(e) => Err(format!("cannot watch {}: {e}", root.display())),
            }
        }
        Trigger::Polling => {
            // notify's poller keeps mtimes in whole seconds; comparing contents catches two saves within one second.
            let config = notify::Config::default().with_poll_interval(poll_interval).with_compare_contents(true);
            let mut debouncer = new_debouncer_opt::<_, notify::PollWatcher, FileIdMap>(
                DEBOUNCE,
                None,
                handler(tx, ignored_roots),
                FileIdMap::new(),
                config,
            )
            .map_err(|e| format!("cannot start polling: {e}"))?;
            debouncer
                .watch(root, RecursiveMode::Recursive)
                .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
            Ok(WatchHandle { _inner: Box::new(debouncer), trigger })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_vcs_output_and_swap_files() {
        let roots = vec![PathBuf::from("/cache/kodev")];
        assert!(is_ignored(Path::new("/p/.git/index"), &roots));
        assert!(is_ignored(Path::new("/p/.kodev/oci/index.json"), &roots));
        assert!(is_ignored(Path::new("/cache/kodev/tmp/x"), &roots));
        assert!(is_ignored(Path::new("/p/main.go~"), &roots));
        assert!(!is_ignored(Path::new("/p/main.go"), &roots));
    }
}
