//! The dev engine: one loop that owns all state and receives every input as a message —
//! file changes, commands, finished builds. Per artifact: at most one build in flight; a newer
//! change cancels it (dropping the task kills `go`), builds run up to `build.local.concurrency`.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::command::Command;
use super::deps::Dependencies;
use super::watch::{self, Trigger, WatchHandle, WatchMessage};
use crate::config::{self, Artifact, LoadOptions, Plan};
use crate::error::{KodevError, Result};
use crate::event::{BuildHandle, Event, EventKind, EventSink};
use crate::pipeline::{base::cache_dir, Builder};

#[derive(Debug)]
pub enum EngineMessage {
    Watch(WatchMessage),
    Command(Command),
    Finished {
        /// `Engine::plan_generation` when the build started: a build of an earlier plan, whose
        /// message was already queued when a reload replaced the slots, is not the new slot's.
        plan_generation: u64,
        index: usize,
        generation: u64,
        result: std::result::Result<(), KodevError>,
        deps: Option<Box<DepsRefresh>>,
        /// `Slot::graph_edits` when the build started.
        graph_edits_before: u64,
    },
    /// An artifact's package graph, read beside its first build (see `Engine::read_graphs`).
    Graph {
        /// `Engine::plan_generation` when the read started: a graph of an earlier plan is dropped.
        plan_generation: u64,
        index: usize,
        deps: Box<DepsRefresh>,
    },
}

/// A refreshed dependency graph, or why it could not be had.
pub type DepsRefresh = std::result::Result<Dependencies, String>;

pub struct EngineSettings {
    pub options: LoadOptions,
    pub debug: bool,
    pub trigger: Trigger,
    pub poll_interval: Duration,
    pub watch_images: Vec<String>,
}

#[derive(Default)]
struct Slot {
    generation: u64,
    running: Option<JoinHandle<()>>,
    /// The running build's stage, which cancelling it tells (see `EventSink::noting_start`).
    build: Option<BuildHandle>,
    /// Changed while automatic rebuilds were off.
    dirty: bool,
    /// Changes seen that may alter the Go dependency graph…
    graph_edits: u64,
    /// …and how many of them the graph in use was read after. While fewer, the next build
    /// reads the graph again; a build cancelled before it read the graph leaves this as it was.
    graph_edits_read: u64,
    /// A burst of changes cancelled the build; it starts again once they stop.
    restart_at: Option<tokio::time::Instant>,
}

impl Slot {
    /// Stop the running build, if any, saying so when it had said it started.
    fn cancel(&mut self, sink: &EventSink) {
        if let Some(running) = self.running.take() {
            running.abort();
            // Whatever the aborted task still sends (its `Finished`, a failure) is stale.
            self.generation += 1;
            if let Some(build) = &self.build {
                build.cancel(sink);
            }
        }
    }
}

/// How long changes must stop, after one interrupted a build, before it starts again:
/// a burst of writes gives the interrupted build and one more, never a build per write.
pub const BURST_QUIET: Duration = Duration::from_millis(150);

pub struct Engine {
    settings: EngineSettings,
    plan: Plan,
    builder: Arc<Builder>,
    deps: Vec<Option<Dependencies>>,
    slots: Vec<Slot>,
    debug: bool,
    auto: bool,
    /// Artifacts of the first round still building, and those whose package graph is still
    /// being read: `watching` is announced when neither has any left.
    first_round: BTreeSet<usize>,
    graphs_pending: BTreeSet<usize>,
    watching_announced: bool,
    /// Counts the plans loaded (the first, then each reload).
    plan_generation: u64,
    events: EventSink,
    tx: UnboundedSender<EngineMessage>,
    rx: UnboundedReceiver<EngineMessage>,
    slots_limit: Arc<Semaphore>,
    watcher: WatchHandle,
    /// Module directories outside the plan's watch roots that are watched too (see
    /// [`Engine::watch_module_dirs`]).
    watched_module_dirs: BTreeSet<PathBuf>,
    /// Directories of go.work files outside all of those, watched for their own entries.
    watched_workspace_dirs: BTreeSet<PathBuf>,
}

fn config_files(plan: &Plan) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        plan.config_files.iter().map(|f| f.canonicalize().unwrap_or_else(|_| f.clone())).collect();
    for artifact in &plan.artifacts {
        files.push(artifact.work_dir.join(".ko.yaml"));
    }
    files
}

impl Engine {
    pub async fn start(
        settings: EngineSettings,
        event_tx: UnboundedSender<Event>,
        tx: UnboundedSender<EngineMessage>,
        rx: UnboundedReceiver<EngineMessage>,
    ) -> Result<Engine> {
        let plan = config::load(&settings.options)?;
        let builder = Arc::new(Builder::for_dev(&plan));
        let events = EventSink::new(event_tx, "");
        let limit = if plan.concurrency == 0 { Semaphore::MAX_PERMITS } else { plan.concurrency };
        // The package graphs are read beside the first builds (`read_graphs`); until then
        // every Go file of the context and the local modules counts.
        let deps = plan.artifacts.iter().map(|a| Some(Dependencies::provisional(a))).collect();

        // Watch before the first build, so edits made during it are not lost.
        let (watch_tx, mut watch_rx) = tokio::sync::mpsc::unbounded_channel();
        let forward = tx.clone();
        tokio::spawn(async move {
            while let Some(message) = watch_rx.recv().await {
                if forward.send(EngineMessage::Watch(message)).is_err() {
                    break;
                }
            }
        });
        let watcher =
            watch::start(&plan.watch_roots(), settings.trigger, settings.poll_interval, vec![cache_dir()], watch_tx)
                .map_err(KodevError::Usage)?;

        let slots = plan.artifacts.iter().map(|_| Slot::default()).collect();
        let mut engine = Engine {
            debug: settings.debug,
            settings,
            builder,
            deps,
            slots,
            auto: true,
            first_round: BTreeSet::new(),
            graphs_pending: BTreeSet::new(),
            watching_announced: false,
            plan_generation: 0,
            events,
            tx,
            rx,
            slots_limit: Arc::new(Semaphore::new(limit)),
            watcher,
            watched_module_dirs: BTreeSet::new(),
            watched_workspace_dirs: BTreeSet::new(),
            plan,
        };
        engine.watch_module_dirs();
        engine.read_graphs();
        Ok(engine)
    }

    /// Read every artifact's package graph in the background, each as an `EngineMessage::Graph`:
    /// the builds need not wait for `go list` (0.2 s a platform for ko's source, one after
    /// another for the artifacts of a monorepo).
    fn read_graphs(&mut self) {
        self.graphs_pending = (0..self.plan.artifacts.len()).collect();
        for (index, artifact) in self.plan.artifacts.iter().enumerate() {
            let (artifact, tx, plan_generation) = (artifact.clone(), self.tx.clone(), self.plan_generation);
            tokio::task::spawn_blocking(move || {
                let deps = Box::new(Dependencies::resolve(&artifact, &HashSet::new()));
                let _ = tx.send(EngineMessage::Graph { plan_generation, index, deps });
            });
        }
    }

    /// A package graph read by `read_graphs`.
    fn on_graph(&mut self, index: usize, deps: DepsRefresh) {
        if !self.graphs_pending.remove(&index) {
            return;
        }
        match deps {
            // A build that started since read it again or will (an edit that may change it).
            Ok(deps) => self.deps[index] = Some(deps),
            Err(message) => self
                .events
                .for_artifact(&self.plan.artifacts[index].image)
                .send(EventKind::Error { message: format!("{message}{UNTIL_THE_GRAPH_IS_READ}") }),
        }
        self.watch_module_dirs();
        self.announce_watching_when_ready();
    }

    fn announce_watching_when_ready(&mut self) {
        if self.first_round.is_empty() && self.graphs_pending.is_empty() && !self.watching_announced {
            self.watching_announced = true;
            self.announce(EventKind::Watching);
        }
    }

    /// Watch the directories of the modules the artifacts' graphs reach outside the plan's
    /// watch roots: a module replaced by a sibling directory (`replace … => ../lib`), or a
    /// go.work member elsewhere, whose edits change the image like any other; and the
    /// directory of a go.work above them all (its own entries only).
    fn watch_module_dirs(&mut self) {
        let roots = self.plan.watch_roots();
        let modules: BTreeSet<PathBuf> = self.deps.iter().flatten().flat_map(Dependencies::module_dirs).collect();
        let workspaces: BTreeSet<PathBuf> = self
            .deps
            .iter()
            .flatten()
            .flat_map(Dependencies::workspace_files)
            .filter_map(|file| file.parent().map(std::path::Path::to_path_buf))
            .collect();
        let wanted = modules.into_iter().map(|dir| (dir, true)).chain(workspaces.into_iter().map(|dir| (dir, false)));
        for (dir, recursive) in wanted {
            let covered = roots.iter().chain(&self.watched_module_dirs).any(|root| dir.starts_with(root));
            if covered || self.watched_workspace_dirs.contains(&dir) {
                continue;
            }
            // Tried once: a directory that cannot be watched is said once, not at every graph read.
            match self.watcher.add_dir(&dir, recursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), recursive, "watching a directory outside the watched ones")
                }
                Err(message) => self.announce(EventKind::Error { message }),
            }
            if recursive {
                self.watched_module_dirs.insert(dir);
            } else {
                self.watched_workspace_dirs.insert(dir);
            }
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn wants(&self, index: usize) -> bool {
        self.settings.watch_images.is_empty() || self.settings.watch_images.contains(&self.plan.artifacts[index].image)
    }

    /// Start (or restart) the build of one artifact.
    fn schedule(&mut self, index: usize) {
        let artifact = self.plan.artifacts[index].clone();
        let sink = self.events.for_artifact(&artifact.image);
        let slot = &mut self.slots[index];
        slot.cancel(&sink);
        let (sink, build) = sink.noting_start();
        slot.build = Some(build);
        slot.generation += 1;
        slot.dirty = false;
        slot.restart_at = None;
        let refresh = slot.graph_edits_read < slot.graph_edits;
        let known_dirs = self.deps[index].as_ref().map(Dependencies::package_dirs).unwrap_or_default();
        let graph_edits_before = slot.graph_edits;
        let generation = slot.generation;
        let builder = self.builder.clone();
        let limit = self.slots_limit.clone();
        let tx = self.tx.clone();
        let debug = self.debug;
        let plan_generation = self.plan_generation;
        slot.running = Some(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let tag = retag_beside_the_build(&artifact, &sink);
            let (artifact, tag) = match artifact.retemplate.clone() {
                Some(retemplate) => (expanded_for_this_build(artifact, retemplate, tag, &sink).await, None),
                None => (artifact, tag),
            };
            let result = builder.build_artifact_tagged(&artifact, debug, &sink, tag).await.map(|_| ());
            let deps = if refresh {
                let artifact = artifact.clone();
                tokio::task::spawn_blocking(move || Dependencies::resolve(&artifact, &known_dirs))
                    .await
                    .ok()
                    .map(Box::new)
            } else {
                None
            };
            let _ = tx.send(EngineMessage::Finished {
                plan_generation,
                index,
                generation,
                result,
                deps,
                graph_edits_before,
            });
        }));
    }

    fn schedule_all(&mut self) {
        for i in 0..self.plan.artifacts.len() {
            self.schedule(i);
        }
    }

    fn announce(&self, kind: EventKind) {
        self.events.send(kind);
    }

    pub async fn run(mut self) -> Result<i32> {
        self.first_round = (0..self.plan.artifacts.len()).collect();
        self.schedule_all();
        loop {
            let next_restart = self.slots.iter().filter_map(|s| s.restart_at).min();
            let message = match next_restart {
                Some(deadline) => tokio::select! {
                    message = self.rx.recv() => message,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.restart_due();
                        continue;
                    }
                },
                None => self.rx.recv().await,
            };
            let Some(message) = message else { break };
            match message {
                EngineMessage::Finished { plan_generation, index, generation, result, deps, graph_edits_before } => {
                    let stale = plan_generation != self.plan_generation
                        || index >= self.slots.len()
                        || self.slots[index].generation != generation;
                    if stale {
                        continue;
                    }
                    self.slots[index].running = None;
                    if let Err(e) = result {
                        self.events
                            .for_artifact(&self.plan.artifacts[index].image)
                            .send(EventKind::BuildFailed { error: e.to_string() });
                    }
                    match deps.map(|d| *d) {
                        Some(Ok(d)) => {
                            self.deps[index] = Some(d);
                            self.slots[index].graph_edits_read = graph_edits_before;
                            self.watch_module_dirs();
                            // Read after the background read started: that one is older.
                            if self.graphs_pending.remove(&index) {
                                self.announce_watching_when_ready();
                            }
                        }
                        Some(Err(message)) => self.announce(EventKind::Error { message }),
                        None => {}
                    }
                    if self.first_round.remove(&index) {
                        self.announce_watching_when_ready();
                    }
                    if self.slots.iter().all(|slot| slot.running.is_none()) {
                        tokio::task::spawn_blocking(release_free_memory);
                    }
                }
                EngineMessage::Graph { plan_generation, index, deps } => {
                    if plan_generation == self.plan_generation {
                        self.on_graph(index, *deps);
                    }
                }
                EngineMessage::Watch(WatchMessage::Failed(message)) => self.announce(EventKind::Error { message }),
                EngineMessage::Watch(WatchMessage::Changed(paths)) => self.on_changes(&paths).await,
                EngineMessage::Command(command) => {
                    if self.on_command(command) {
                        break;
                    }
                }
            }
        }
        for slot in &mut self.slots {
            if let Some(running) = slot.running.take() {
                running.abort();
            }
        }
        Ok(0)
    }

    fn restart_due(&mut self) {
        let now = tokio::time::Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].restart_at.is_some_and(|at| at <= now) {
                self.schedule(i);
            }
        }
    }

    /// A change for an artifact: build now when idle; during a build (or a burst), stop the
    /// stale build at once and start again when the changes stop.
    fn changed(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.running.is_none() && slot.restart_at.is_none() {
            self.schedule(index);
            return;
        }
        slot.cancel(&self.events.for_artifact(&self.plan.artifacts[index].image));
        self.slots[index].restart_at = Some(tokio::time::Instant::now() + BURST_QUIET);
    }

    /// Returns true to quit.
    fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Quit => return true,
            Command::Rebuild(None) => self.schedule_all(),
            Command::Rebuild(Some(image)) => match self.plan.artifacts.iter().position(|a| a.image == image) {
                Some(i) => self.schedule(i),
                None => self.announce(EventKind::Error { message: format!("no artifact {image:?} to rebuild") }),
            },
            Command::ToggleDebug => {
                self.debug = !self.debug;
                self.announce(EventKind::DebugChanged { debug: self.debug });
                self.schedule_all();
            }
            Command::ToggleAuto => {
                self.auto = !self.auto;
                if self.auto {
                    for i in 0..self.slots.len() {
                        if self.slots[i].dirty {
                            self.schedule(i);
                        }
                    }
                }
            }
        }
        false
    }

    async fn on_changes(&mut self, paths: &[PathBuf]) {
        let config_files = config_files(&self.plan);
        if paths.iter().any(|p| config_files.iter().any(|c| c == p)) {
            self.reload().await;
            return;
        }
        let mut affected = BTreeSet::new();
        for path in paths {
            for (i, deps) in self.deps.iter().enumerate() {
                let Some(deps) = deps else { continue };
                if self.wants(i) && deps.matches(path) {
                    affected.insert(i);
                    if deps.needs_refresh(path) {
                        self.slots[i].graph_edits += 1;
                    }
                }
            }
        }
        for i in affected {
            if self.auto && self.settings.trigger != Trigger::Manual {
                self.changed(i);
            } else {
                self.slots[i].dirty = true;
            }
        }
    }

    async fn reload(&mut self) {
        match config::load(&self.settings.options) {
            Ok(plan) => {
                for slot in &mut self.slots {
                    if let Some(running) = slot.running.take() {
                        running.abort();
                    }
                }
                // Graphs still being read from the plan before are not this plan's.
                self.plan_generation += 1;
                self.graphs_pending.clear();
                self.deps = resolve_all_deps(&plan, &self.events).await;
                self.slots = plan.artifacts.iter().map(|_| Slot::default()).collect();
                self.builder.retire();
                self.builder = Arc::new(Builder::for_dev(&plan));
                // A reload before `watching` replaces the first round: its builds were stopped,
                // and `watching` then waits for this plan's (the old round's artifacts may be
                // gone or at other positions).
                if !self.watching_announced {
                    self.first_round = (0..plan.artifacts.len()).collect();
                }
                self.plan = plan;
                self.watch_module_dirs();
                self.announce(EventKind::ConfigReloaded);
                self.schedule_all();
            }
            Err(e) => self.announce(EventKind::Error { message: format!("{e} (keeping the previous configuration)") }),
        }
    }
}

/// The tag as the artifact's tagger gives it now (see `Retag`), worked out beside the build:
/// git for the default tagger, which takes longer in a large repository. When that fails, the
/// tag it had, and why.
fn retag_beside_the_build(artifact: &Artifact, sink: &EventSink) -> Option<tokio::task::JoinHandle<String>> {
    let retag = artifact.retag.clone()?;
    let (kept, sink) = (artifact.tag.clone(), sink.clone());
    Some(tokio::task::spawn_blocking(move || {
        retag.current().unwrap_or_else(|message| {
            sink.send(EventKind::Error { message: format!("build.tagPolicy: {message}; keeping the tag {kept}") });
            kept
        })
    }))
}

/// The artifact with its templated settings expanded as they read now, under the tag worked
/// out for this build (see `Retemplate`): its go build needs them, so the tag is awaited
/// first, while the git state the templates read is read beside it. When they do not
/// expand, the settings as loaded, and why.
async fn expanded_for_this_build(
    artifact: Artifact,
    retemplate: Arc<crate::config::Retemplate>,
    tag: Option<tokio::task::JoinHandle<String>>,
    sink: &EventSink,
) -> Artifact {
    let reading = retemplate.clone();
    let vars = tokio::task::spawn_blocking(move || reading.vars_now());
    let tag = match tag {
        Some(worked_out) => worked_out.await.unwrap_or_else(|_| artifact.tag.clone()),
        None => artifact.tag.clone(),
    };
    let Ok(vars) = vars.await else { return artifact };
    match retemplate.apply(&artifact, vars, &tag) {
        Ok(now) => now,
        Err(message) => {
            sink.send(EventKind::Error { message: format!("{message}; keeping the settings as loaded") });
            Artifact { tag, ..artifact }
        }
    }
}

/// Give the allocator's free pages back to the system once no build is running. Compression
/// workers free pieces of every size in many of glibc's arenas, which keep the pages: a dev
/// session on a 47 MB binary and two platforms held 122 MB for 42 MB in use, and grew.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes the arenas' locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What an error reading a package graph adds: the provisional dependencies stand meanwhile.
const UNTIL_THE_GRAPH_IS_READ: &str = " (watching every Go file of the context until the package graph can be read)";

/// Every artifact's package graph, read side by side; an artifact whose graph cannot be read
/// counts every Go file of its context until it can, and says why.
async fn resolve_all_deps(plan: &Plan, events: &EventSink) -> Vec<Option<Dependencies>> {
    let reads = plan.artifacts.iter().map(|artifact| {
        let a = artifact.clone();
        tokio::task::spawn_blocking(move || Dependencies::resolve(&a, &HashSet::new()))
    });
    let mut out = Vec::new();
    for (artifact, resolved) in plan.artifacts.iter().zip(futures::future::join_all(reads).await) {
        match resolved {
            Ok(Ok(d)) => out.push(Some(d)),
            Ok(Err(message)) => {
                let message = format!("{message}{UNTIL_THE_GRAPH_IS_READ}");
                events.for_artifact(&artifact.image).send(EventKind::Error { message });
                out.push(Some(Dependencies::provisional(artifact)));
            }
            Err(e) => {
                events.send(EventKind::Error { message: e.to_string() });
                out.push(None);
            }
        }
    }
    out
}
