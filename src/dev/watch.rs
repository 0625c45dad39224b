//! Watching the tree: notify (inotify) or polling, debounced, on directories so that
//! editors that save by rename are seen. Filtering of paths that never trigger lives here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

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

/// Quiet time that makes one save (its write, chmod and rename events) one batch, when no
/// event says the save is complete (a close after writing, a rename into place). It adds
/// directly to edit-to-pushed latency, so it is kept short; longer bursts are handled by
/// cancelling the stale build.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    /// None with the manual trigger, which watches nothing.
    inner: Option<Box<dyn Watcher + Send>>,
    pub trigger: Trigger,
}

impl WatchHandle {
    /// Watch one more directory: what is below it too when `recursive`, as for the roots given
    /// at the start; else only its own entries.
    pub fn add_dir(&mut self, dir: &Path, recursive: bool) -> Result<(), String> {
        let mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        match &mut self.inner {
            Some(watcher) => watcher.watch(dir, mode).map_err(|e| format!("cannot watch {}: {e}", dir.display())),
            None => Ok(()),
        }
    }
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

/// Events that can change what a build reads.
fn is_change(event: &notify::Event) -> bool {
    matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) || completes_a_save(event)
}

/// The last event of a save: the writer closed the file, or the new file was renamed into place.
fn completes_a_save(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    )
}

fn is_resource_exhaustion(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(io) => matches!(io.raw_os_error(), Some(24) | Some(28)),
        _ => false,
    }
}

type RawEvent = notify::Result<notify::Event>;

/// Debounce raw events into batches: wait (without waking) for the first event, then collect
/// until `DEBOUNCE` passes with none. An idle watcher costs no CPU.
fn spawn_debouncer(
    mut raw: UnboundedReceiver<RawEvent>,
    ignored_roots: Vec<PathBuf>,
    tx: UnboundedSender<WatchMessage>,
) {
    tokio::spawn(async move {
        let mut reported = Reported::default();
        while let Some(first) = raw.recv().await {
            let mut batch = vec![first];
            // A file closed after writing (or renamed into place) is a finished save: go now
            // rather than wait out the quiet window.
            if !batch[0].as_ref().is_ok_and(completes_a_save) {
                while let Ok(Some(next)) = tokio::time::timeout(DEBOUNCE, raw.recv()).await {
                    let done = next.as_ref().is_ok_and(completes_a_save);
                    batch.push(next);
                    if done {
                        break;
                    }
                }
            }
            while let Ok(next) = raw.try_recv() {
                batch.push(next);
            }
            let mut paths = Vec::new();
            let mut errors = Vec::new();
            for event in batch {
                match event {
                    Ok(e) if is_change(&e) => {
                        paths.extend(e.paths.into_iter().filter(|p| !is_ignored(p, &ignored_roots)))
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            paths.sort();
            paths.dedup();
            reported.keep_news(&mut paths);
            if !errors.is_empty() && tx.send(WatchMessage::Failed(errors.join("; "))).is_err() {
                break;
            }
            if !paths.is_empty() && tx.send(WatchMessage::Changed(paths)).is_err() {
                break;
            }
        }
    });
}

/// Start watching `root` (from within the runtime). An exhausted inotify limit or too many
/// open files falls back to polling.
/// The stamp each path had when a change of it was last reported. One save can reach the
/// debouncer in two batches (a rename's `To` event ends one, and notify's paired `Both` event
/// for the same rename can arrive after it when the machine is busy): reported twice, it
/// stopped the build the first report started, for nothing.
#[derive(Default)]
struct Reported(std::collections::HashMap<PathBuf, Option<crate::stamp::FileStamp>>);

impl Reported {
    /// Keep the paths whose file (or its absence) is not as it was when last reported: a
    /// path whose stamp is the same has not changed since, and whoever read the last report
    /// read the file after it.
    fn keep_news(&mut self, paths: &mut Vec<PathBuf>) {
        if self.0.len() > 100_000 {
            self.0.clear();
        }
        paths.retain(|path| {
            let now = crate::stamp::FileStamp::read(path);
            self.0.insert(path.clone(), now) != Some(now)
        });
    }
}

pub fn start(
    roots: &[PathBuf],
    trigger: Trigger,
    poll_interval: Duration,
    ignored_roots: Vec<PathBuf>,
    tx: UnboundedSender<WatchMessage>,
) -> Result<WatchHandle, String> {
    if trigger == Trigger::Manual {
        return Ok(WatchHandle { inner: None, trigger });
    }
    let (raw_tx, raw_rx) = tokio::sync::mpsc::unbounded_channel::<RawEvent>();
    let forward = move |event: RawEvent| {
        // go opens every source file it hashes, and so do editors and language servers: drop
        // reads here, before they wake the debouncer.
        if event.as_ref().is_ok_and(|e| matches!(e.kind, EventKind::Access(_)) && !completes_a_save(e)) {
            return;
        }
        let _ = raw_tx.send(event);
    };
    let shown = roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    let handle = match trigger {
        Trigger::Polling => poll(roots, poll_interval, forward)?,
        _ => {
            let attempt = notify::recommended_watcher(forward.clone()).and_then(|mut w| {
                for root in roots {
                    w.watch(root, RecursiveMode::Recursive)?;
                }
                Ok(w)
            });
            match attempt {
                Ok(watcher) => WatchHandle { inner: Some(Box::new(watcher)), trigger },
                Err(e) if is_resource_exhaustion(&e) => {
                    let _ = tx.send(WatchMessage::Failed(format!(
                        "cannot watch {} with inotify ({e}); falling back to polling every {} ms. Raise fs.inotify.max_user_watches or the open-file limit (ulimit -n) to use notify",
                        shown,
                        poll_interval.as_millis()
                    )));
                    poll(roots, poll_interval, forward)?
                }
                Err(e) => return Err(format!("cannot watch {shown}: {e}")),
            }
        }
    };
    spawn_debouncer(raw_rx, ignored_roots, tx);
    Ok(handle)
}

fn poll(roots: &[PathBuf], interval: Duration, forward: impl notify::EventHandler) -> Result<WatchHandle, String> {
    // notify's poller keeps mtimes in whole seconds; comparing contents catches two saves within one second.
    let config = notify::Config::default().with_poll_interval(interval).with_compare_contents(true);
    let mut watcher = notify::PollWatcher::new(forward, config).map_err(|e| format!("cannot start polling: {e}"))?;
    for root in roots {
        watcher.watch(root, RecursiveMode::Recursive).map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
    }
    Ok(WatchHandle { inner: Some(Box::new(watcher)), trigger: Trigger::Polling })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sed -i` under load: the temporary file's close ends a batch, the rename's `To` ends the
    /// next, and notify's `Both` for the same rename comes after it. The file is reported
    /// once; a later write to it is reported again.
    #[tokio::test]
    async fn one_save_split_over_batches_is_reported_once() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        let dir = tempfile::tempdir().unwrap();
        let (main_go, temp) = (dir.path().join("main.go"), dir.path().join("sedAbC123"));
        std::fs::write(&main_go, "package main // 1\n").unwrap();
        let (raw_tx, raw_rx) = tokio::sync::mpsc::unbounded_channel();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn_debouncer(raw_rx, Vec::new(), tx);
        let event = |kind, paths: &[&PathBuf]| {
            Ok(notify::Event {
                kind,
                paths: paths.iter().map(|p| p.to_path_buf()).collect(),
                attrs: Default::default(),
            })
        };
        let next = |rx: &mut UnboundedReceiver<WatchMessage>| {
            let message = rx.try_recv().ok();
            match message {
                Some(WatchMessage::Changed(paths)) => Some(paths),
                Some(WatchMessage::Failed(e)) => panic!("{e}"),
                None => None,
            }
        };
        let settle = || tokio::time::sleep(DEBOUNCE * 3);
        raw_tx.send(event(EventKind::Create(CreateKind::File), &[&temp])).unwrap();
        raw_tx.send(event(EventKind::Access(AccessKind::Close(AccessMode::Write)), &[&temp])).unwrap();
        settle().await;
        assert_eq!(next(&mut rx), Some(vec![temp.clone()]));
        raw_tx.send(event(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &[&temp])).unwrap();
        raw_tx.send(event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[&main_go])).unwrap();
        settle().await;
        assert_eq!(next(&mut rx), Some(vec![main_go.clone()]), "the temporary file is gone, as reported");
        raw_tx.send(event(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &[&temp, &main_go])).unwrap();
        settle().await;
        assert_eq!(next(&mut rx), None, "the rename's second event tells nothing new");
        std::fs::write(&main_go, "package main // 2\n").unwrap();
        raw_tx.send(event(EventKind::Access(AccessKind::Close(AccessMode::Write)), &[&main_go])).unwrap();
        settle().await;
        assert_eq!(next(&mut rx), Some(vec![main_go.clone()]), "a new write is news");
    }

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
