//! Running `go build` exactly as ko does (REFERENCE §4), streaming its output as events.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::config::{go_binary, Artifact};
use crate::error::{KodevError, Result};
use crate::event::{EventKind, EventSink};
use crate::pipeline::gocache;
use crate::pipeline::relink::{self, Relinker};
use crate::platform::Platform;
use std::sync::Arc;

/// Process groups of `go build`s still running.
static RUNNING_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// A running `go build`'s process group: killed whole when the build is dropped (cancelled).
struct BuildGroup {
    pgid: i32,
    running: bool,
}

impl BuildGroup {
    fn new(pid: u32) -> Self {
        let pgid = pid as i32;
        RUNNING_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
        BuildGroup { pgid, running: true }
    }

    fn finished(&mut self) {
        self.running = false;
        RUNNING_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| *g != self.pgid);
    }
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        if self.running {
            kill_group(self.pgid);
            self.finished();
        }
    }
}

/// How many `go build`s of this process are running now.
pub fn running_go_builds() -> usize {
    RUNNING_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Kill every `go build` still running (on quit or interrupt, when tasks may not get dropped).
pub fn kill_running_builds() {
    for pgid in RUNNING_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        kill_group(pgid);
    }
}

/// The `go build` arguments for an artifact (without the platform, which goes in the env).
pub fn build_args(artifact: &Artifact, debug: bool, output: &Path) -> Vec<String> {
    let mut args = vec!["build".to_string()];
    args.extend(artifact.flags.iter().cloned());
    if debug {
        // ko's disable-optimizations: no inlining or optimizing, and keep paths for debuggers.
        let mut gcflags = "all=-N -l".to_string();
        for extra in &artifact.gcflags {
            gcflags.push(' ');
            gcflags.push_str(extra);
        }
        args.push(format!("-gcflags={gcflags}"));
    } else {
        args.push("-trimpath".to_string());
        if !artifact.gcflags.is_empty() {
            args.push(format!("-gcflags={}", artifact.gcflags.join(" ")));
        }
    }
    if !artifact.asmflags.is_empty() {
        args.push(format!("-asmflags={}", artifact.asmflags.join(" ")));
    }
    if !artifact.ldflags.is_empty() {
        args.push(format!("-ldflags={}", artifact.ldflags.join(" ")));
    }
    args.push("-o".to_string());
    args.push(output.display().to_string());
    args.push(artifact.import_path.clone());
    args
}

/// The environment on top of the process's: platform defaults unless the user set them, then the artifact's env.
pub fn build_env(artifact: &Artifact, platform: &Platform) -> Vec<(String, String)> {
    let mut env = platform.go_env_over_process();
    for entry in &artifact.env {
        if let Some((k, v)) = entry.split_once('=') {
            env.retain(|(existing, _)| existing != k);
            env.push((k.to_string(), v.to_string()));
        }
    }
    env
}

/// `GODEBUG` for the go command and its compiler and linker (`env` is the build's, on top of
/// the process's): the user's, plus `asyncpreemptoff=1` unless the user chose. The linker of a
/// large binary spends 5–6% of its time taking the preemption signals its runtime sends
/// (35–40 ms of 620 here); without them it writes the same bytes sooner. How a tool's
/// goroutines are scheduled never changes what it writes (go's builds are reproducible at any
/// `GOMAXPROCS`); the tests compare kodev's images with go's.
pub fn go_godebug(env: &[(String, String)]) -> String {
    let user = env.iter().rev().find(|(k, _)| k == "GODEBUG").map(|(_, v)| v.clone());
    let user = user.or_else(|| std::env::var("GODEBUG").ok()).unwrap_or_default();
    if user.split(',').any(|setting| setting.trim().starts_with("asyncpreemptoff=")) {
        return user;
    }
    if user.is_empty() {
        "asyncpreemptoff=1".to_string()
    } else {
        format!("{user},asyncpreemptoff=1")
    }
}

/// `GOMAXPROCS` for each of `builds` go builds that relink their platform's binary at the same
/// time (an edit rebuilt for several platforms), or None for go's own default. Each go then
/// keeps to its share of the cores instead of every runtime (go, its compiler, its linker)
/// spreading over all of them and contending: on two cores, two platforms' go builds of an
/// edit take about 10% less time this way. The user's own `GOMAXPROCS` wins, from the
/// environment or the artifact's env. The output does not depend on it.
pub fn gomaxprocs_share(artifact: &Artifact, builds: usize) -> Option<usize> {
    if builds < 2 || go_sees(artifact, "GOMAXPROCS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Some((cores / builds.min(cores)).max(1))
}

/// A variable as the artifact's go builds see it: its `env` (the last entry) over kodev's.
fn go_sees(artifact: &Artifact, name: &str) -> Option<String> {
    seen_with(&artifact.env, name)
}

/// A variable as a go build with `env` (`KEY=value` entries, the last one winning) over
/// kodev's environment sees it.
fn seen_with(env: &[String], name: &str) -> Option<String> {
    let own = env.iter().rev().find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='));
    own.map(str::to_string).or_else(|| std::env::var(name).ok())
}

/// A setting `go env -w` can make too, as the artifact's go builds see it: the environment's
/// value (see `go_sees`) unless empty, else the one in go's settings file.
fn go_setting(artifact: &Artifact, name: &str) -> Option<String> {
    go_setting_with(&artifact.env, name)
}

/// [`go_setting`] for a go build with `env` (the settings of an artifact still being read).
pub fn go_setting_with(env: &[String], name: &str) -> Option<String> {
    let lookup = |name: &str| seen_with(env, name).filter(|v| !v.is_empty());
    lookup(name).or_else(|| relink::go_env_file_setting(lookup, name))
}

/// GOWORK as the artifact's go builds see it (`off`, a file, or None: go looks for go.work).
pub fn workspace_setting(artifact: &Artifact) -> Option<String> {
    go_setting(artifact, "GOWORK")
}

/// The flags go builds an artifact with: GOFLAGS', then the artifact's own.
fn go_flags(artifact: &Artifact) -> Vec<String> {
    let goflags = go_setting(artifact, "GOFLAGS").unwrap_or_default();
    goflags.split_whitespace().map(str::to_string).chain(artifact.flags.iter().cloned()).collect()
}

/// Whether go reads some sources from elsewhere (`-overlay`: its file hashes then do not say
/// what the files on disk hold), or its module graph from another file than go.mod
/// (`-modfile`): a recipe cannot tell when they change.
fn reads_sources_elsewhere(artifact: &Artifact) -> bool {
    go_flags(artifact).iter().any(|f| {
        let name = f.trim_start_matches('-');
        f.starts_with('-') && (name.starts_with("overlay") || name.starts_with("modfile"))
    })
}

/// The workspace file GOWORK names for the artifact's builds.
pub fn named_workspace(artifact: &Artifact) -> Option<PathBuf> {
    let value = go_setting(artifact, "GOWORK")?;
    // go refuses a relative path: the build then fails whatever kodev watches.
    (!value.is_empty() && value != "off").then(|| artifact.work_dir.join(value))
}

/// What a recipe needs to know of how go builds an artifact besides what go prints.
pub fn recipe_settings(artifact: &Artifact) -> relink::BuildSettings {
    relink::BuildSettings { tags: build_tags(artifact), workspace_file: named_workspace(artifact) }
}

/// Every tag `-tags` names in an artifact's go flags (all of them, though the last `-tags`
/// wins for go: a tag too many only keeps a file a recipe input).
pub fn build_tags(artifact: &Artifact) -> Vec<String> {
    tags_named(&go_flags(artifact))
}

fn tags_named(flags: &[String]) -> Vec<String> {
    let mut tags = Vec::new();
    let mut words = flags.iter();
    while let Some(word) = words.next() {
        let Some(name) = word.strip_prefix('-').map(|w| w.trim_start_matches('-')) else { continue };
        let value = match name.strip_prefix("tags") {
            Some("") => words.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        // Comma-separated, or space-separated in go's older form.
        tags.extend(value.into_iter().flat_map(|v| v.split([',', ' '])).filter(|t| !t.is_empty()).map(str::to_string));
    }
    tags
}

/// Where an artifact's binary for a platform is built, kept between builds: go checks the
/// build ID of an existing output and skips the link when nothing changed.
pub fn output_dir(artifact: &Artifact, platform: &Platform, debug: bool) -> PathBuf {
    use sha2::Digest;
    let identity = format!(
        "{:?}",
        (
            &artifact.image_name,
            &artifact.work_dir,
            &artifact.import_path,
            platform.to_string(),
            debug,
            &artifact.flags,
            &artifact.ldflags,
            &artifact.gcflags,
            &artifact.asmflags,
            &artifact.env,
        )
    );
    let key = hex::encode(sha2::Sha256::digest(identity));
    crate::pipeline::base::cache_dir().join("bin").join(&key[..24])
}

/// The root of go's scratch space: next to the outputs, so the finished binary is renamed into
/// place (atomic: a reader never sees half a binary) rather than copied across file systems;
/// or the user's `GOTMPDIR` when set, where each build still gets a directory of its own (so
/// relinking works there too). None when that `GOTMPDIR` cannot be used: go then says why.
///
/// The path is made canonical: go prints its work directory as `GOTMPDIR` spells it, but the
/// commands it prints with the path cleaned, and writes `$WORK` only where they match. A cache
/// directory named with `..` or `.` (`cache_dir` is absolute, not clean) would leave no
/// `$WORK/b001` in go's output, and no recipe would ever be read from it.
fn go_scratch_root() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let (dir, users) = match std::env::var_os("GOTMPDIR").filter(|d| !d.is_empty()) {
            // Relative to where kodev runs, not to the app's directory where go runs.
            Some(dir) => (std::path::absolute(dir).ok()?, true),
            None => (crate::pipeline::base::cache_dir().join("tmp").join("go"), false),
        };
        if !users {
            std::fs::create_dir_all(&dir).ok()?;
        }
        let dir = std::fs::canonicalize(&dir).ok()?;
        sweep_stale_work_dirs(&dir, std::time::Duration::from_secs(3600), !users);
        Some(dir)
    })
    .clone()
}

/// One go build's own `GOTMPDIR`: the only go work directory in it is that build's, so its
/// linker's output can be recognised. Removed with whatever a killed go left in it.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(root: &Path) -> Option<ScratchDir> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("{SCRATCH_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).ok().map(|()| ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() && self.0.exists() {
            // A go just killed may still be writing into it for a moment: try again shortly.
            let dir = self.0.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }
}

const SCRATCH_PREFIX: &str = "kodev-";

/// A killed go (a cancelled build), or a killed kodev, leaves its work directory behind; once
/// per process, remove those old enough that no running build can own them. go's own
/// `go-build*` directories only in kodev's root: in the user's `GOTMPDIR` they may be another
/// go's, running for hours.
fn sweep_stale_work_dirs(dir: &Path, age: std::time::Duration, gos_too: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        let name = entry.file_name().to_string_lossy().to_string();
        if stale && ((gos_too && name.starts_with("go-build")) || name.starts_with(SCRATCH_PREFIX)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a path is a go linker's output in a go work directory (`$WORK/b001/exe/a.out`).
fn is_linker_output(path: &Path) -> bool {
    path.ends_with("exe/a.out")
}

/// What a go build tells before it exits, when kodev can watch it (go's scratch space is
/// kodev's): each is sent at most once, and not at all without a watch.
pub struct Milestones {
    /// When kodev relinks without go: its compile of the main package is done and the linker
    /// starts, which then has one core busy for most of the build. Not sent when go builds.
    pub linking: tokio::sync::oneshot::Sender<()>,
    /// The linker's output, when the linker closes it. go then still hashes it and writes
    /// its final build ID into it (tens of milliseconds for a large binary) before moving it
    /// into place: time the layer's compression can use.
    pub linked: tokio::sync::oneshot::Sender<LinkerOutput>,
    /// The output path, when go has moved the finished binary there. go then only removes its
    /// work directory and exits (a few milliseconds): the layer can start meanwhile, while the
    /// exit status is still awaited.
    pub placed: tokio::sync::oneshot::Sender<PathBuf>,
}

/// The linker's output, as the linker closes it.
pub struct LinkerOutput {
    pub path: PathBuf,
    /// Only when kodev links (go's linker may close its output before it is done with it):
    /// once go's content ID is written into the file, where (offsets in the binary) and its
    /// length. Every other byte is then as the linker left it.
    pub stamped: Option<tokio::sync::oneshot::Receiver<(Vec<u64>, usize)>>,
}

/// Watch go's scratch space (recursively, for the linker closing its output) and the output's
/// directory (for go renaming the finished binary into place). Best effort: no watch, no message.
fn watch_milestones(scratch: &Path, output: &Path, milestones: Milestones) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    // go's own link start is not heard: its linker opens its output only at the end.
    let Milestones { linking: _, linked, placed } = milestones;
    type Heard = Box<dyn FnOnce(PathBuf) + Send>;
    let linked: Heard = Box::new(move |path| {
        let _ = linked.send(LinkerOutput { path, stamped: None });
    });
    let placed: Heard = Box::new(move |path| {
        let _ = placed.send(path);
    });
    let linked = std::sync::Mutex::new(Some(linked));
    let placed = std::sync::Mutex::new(Some(placed));
    let wanted_output = output.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let (pending, path) = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                (&linked, event.paths.into_iter().find(|p| is_linker_output(p)))
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                (&placed, event.paths.into_iter().find(|p| *p == wanted_output))
            }
            _ => return,
        };
        if let Some(path) = path {
            if let Some(sender) = pending.lock().unwrap_or_else(|e| e.into_inner()).take() {
                sender(path);
            }
        }
    })
    .ok()?;
    watcher.watch(scratch, RecursiveMode::Recursive).ok()?;
    // Without the output's directory only the first milestone comes; the exit then stands in
    // for the second.
    let _ = watcher.watch(output.parent()?, RecursiveMode::NonRecursive);
    Some(watcher)
}

/// The go command with `args` in `dir`, with the build's `env` on top of kodev's and `scratch`
/// as its `GOTMPDIR`. In a process group of its own, so that a cancelled build takes go's
/// compilers and linker with it (see `BuildGroup`); killed when dropped.
fn go_command(args: &[String], dir: &Path, env: &[(String, String)], scratch: Option<&Path>) -> Command {
    let mut command = Command::new(go_binary());
    command
        .args(args)
        .current_dir(dir)
        .envs(env.iter().cloned())
        .envs(scratch.map(|dir| ("GOTMPDIR", dir)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Build one platform's binary into `out_dir`; the `go` process dies with the future.
/// `milestones` (if given) hear of the linker's output and of the finished binary before go exits.
/// `gomaxprocs` (see `gomaxprocs_share`) is set in go's environment.
#[allow(clippy::too_many_arguments)]
pub async fn go_build(
    artifact: &Artifact,
    platform: &Platform,
    debug: bool,
    out_dir: &Path,
    events: &EventSink,
    mut milestones: Option<Milestones>,
    gomaxprocs: Option<usize>,
    relinker: Option<&Arc<Relinker>>,
) -> Result<PathBuf> {
    // Until the binary is made: what other platforms put in layers meanwhile gives way.
    let _toolchain = crate::pipeline::priority::ToolchainBusy::begin();
    let output = out_dir.join(artifact.binary_name());
    let started = Instant::now();
    let mut env = build_env(artifact, platform);
    env.extend(gomaxprocs.map(|n| ("GOMAXPROCS".to_string(), n.to_string())));
    if let Some(relinker) = relinker {
        relinker.stop_recaptures();
        // The last build's recipe may still be being read (that build was cancelled after
        // its push): without it this one would run go.
        relinker.settle_for(&output).await;
    }
    // Set when the compiler refused the sources while relinking: go then runs only to say why.
    let mut relink_refused = false;
    let fit = relinker.map_or(relink::Fit::Unknown, |r| r.fit(&output));
    // After an edit outside the main package that kodev cannot rebuild itself (a package whose
    // compile no recorded build ran, a new import), go often takes main from its cache, and capturing
    // records nothing; its output (the text of every action ID: megabytes for a large module)
    // slows go down by a few percent. When go does compile main (the edit is in a package main
    // imports itself), reading a recipe beside the build slowed the push more than recording it
    // after the push, as `Recapture` does (BENCHMARKS, session 17). A one-shot build records
    // nothing after its push, so there go captures: the compiles of the edited package and of
    // those it changes are then recorded for the next edit (main's from the stale recipe when
    // go takes main from its cache).
    let previous = match &fit {
        relink::Fit::EditedElsewhere(recipe) => Some(recipe.clone()),
        _ => None,
    };
    let edited_elsewhere = previous.is_some();
    let capture_anyway = edited_elsewhere && relinker.is_some_and(|r| !r.records_in_background());
    if capture_anyway {
        tracing::debug!(platform = %platform, "an edit outside the main package that kodev cannot rebuild itself: go builds, capturing");
    } else if edited_elsewhere {
        tracing::debug!(platform = %platform, "an edit outside the main package that kodev cannot rebuild itself: go builds without capturing");
    }
    if let (Some(relinker), relink::Fit::Usable(recipe, text)) = (relinker, fit) {
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "recipe and compile text ready");
        if recipe.already_built(&text, &output).await {
            // What go would find too: nothing to link (its check, without loading the packages).
            tracing::debug!(platform = %platform, "the binary is up to date");
            let duration_ms = started.elapsed().as_millis() as u64;
            events.send(EventKind::Compiled { platform: platform.to_string(), duration_ms, relinked: false });
            return Ok(output);
        }
        let (linking, linked) = milestones.take().map(|m| (m.linking, m.linked)).unzip();
        let relinked = match go_scratch_root().and_then(|root| ScratchDir::create(&root)) {
            Some(scratch) => recipe.relink(&text, &output, &scratch.0, &env, linking, linked).await,
            None => Err(relink::failed("no scratch directory")),
        };
        match relinked {
            Ok(action) => {
                tracing::debug!(platform = %platform, "relinked without go");
                let duration_ms = started.elapsed().as_millis() as u64;
                events.send(EventKind::Compiled { platform: platform.to_string(), duration_ms, relinked: true });
                relinker.to_check(recipe, action, artifact, platform, debug, &output, &env);
                return Ok(output);
            }
            Err(e) if e.compile_error => {
                tracing::debug!(error = %e, "the edit does not compile; go build says why");
                relink_refused = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "relinking failed; running go build");
                relinker.forget(&output);
            }
        }
    }
    let mut args = build_args(artifact, debug, &output);
    // Declared before the process group: dropped after go is killed.
    let scratch = go_scratch_root().and_then(|root| ScratchDir::create(&root));
    let capture = !relink_refused
        && (!edited_elsewhere || capture_anyway)
        && relinker.is_some()
        && scratch.is_some()
        && !reads_sources_elsewhere(artifact);
    // The compiles the stale recipe recorded, for packages go finds unchanged in this build.
    let adopt_from = previous.clone().filter(|_| capture);
    let recapture =
        relinker.filter(|r| (capture || edited_elsewhere) && r.recaptures_wanted(&output)).map(|_| relink::Recapture {
            artifact: artifact.clone(),
            platform: platform.clone(),
            debug,
            env: env.clone(),
            output: output.clone(),
            main_action: None,
            previous,
        });
    // In `kodev dev`, what the recipe this build records lacks is recorded after the push.
    let compiles_job = relinker.filter(|r| capture && r.records_in_background()).map(|_| relink::RecordCompiles {
        artifact: artifact.clone(),
        debug,
        env: env.clone(),
        output: output.clone(),
    });
    let mut godebug = go_godebug(&env);
    if capture {
        args.splice(1..1, relink::CAPTURE_FLAGS.iter().map(|f| f.to_string()));
        godebug = format!("{godebug},{}", relink::CAPTURE_GODEBUG);
    }
    env.push(("GODEBUG".to_string(), godebug));
    let _milestone_watch = match (&scratch, milestones) {
        (Some(scratch), Some(milestones)) => watch_milestones(&scratch.0, &output, milestones),
        _ => None,
    };
    let mut command = go_command(&args, &artifact.work_dir, &env, scratch.as_ref().map(|dir| dir.0.as_path()));
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    tracing::debug!(platform = %platform, "starting go build");
    let mut child = command.spawn().map_err(|e| {
        KodevError::build(format!("cannot run {}: {e}; install Go or set KO_GO_PATH", go_binary().display()))
    })?;
    let mut group = child.id().map(BuildGroup::new);
    let platform_name = platform.to_string();
    let stderr = child.stderr.take();
    let stdout = child.stdout.take();
    let forward = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let events = events.clone();
        let platform_name = platform_name.clone();
        async move {
            let mut lines_seen = Vec::new();
            if let Some(stream) = stream {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // A capturing build's commands and hashes are not the user's log; what
                    // go says of its own (downloads, errors) is.
                    if !capture || line.starts_with("go: ") {
                        events.send(EventKind::BuildLog { platform: platform_name.clone(), line: line.clone() });
                    }
                    lines_seen.push(line);
                }
            }
            lines_seen
        }
    };
    let (err_lines, _out_lines, status) = tokio::join!(
        forward(stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        forward(stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        child.wait()
    );
    let status = status.map_err(|e| KodevError::build(format!("go build: {e}")))?;
    // go has exited and waited for its tools: nothing of the group is left to kill.
    if let Some(group) = group.as_mut() {
        group.finished();
    }
    if !status.success() {
        if capture {
            // The capture's output buries go's errors: the same build again says them plainly.
            return Box::pin(go_build(artifact, platform, debug, out_dir, events, None, gomaxprocs, None)).await;
        }
        let shown = err_lines.join("\n");
        return Err(KodevError::build(format!("go build of {} for {platform} failed:\n{shown}", artifact.import_path)));
    }
    if let Some(relinker) = relinker.filter(|_| relink_refused) {
        // go built what the compiler refused: the recipe was at fault, not the sources (go's
        // cache lost a package the recipe names, say). The next build records a new one.
        tracing::debug!(output = %output.display(), "go built what the relink could not compile; recipe dropped");
        relinker.forget(&output);
    }
    if let Some(relinker) = relinker.filter(|_| capture) {
        // Off the build's path: the recipe is for the next edit. The kept work directory
        // goes once it has been read.
        let (kept_by, output, go_dir, scratch) = (relinker.clone(), output.clone(), artifact.work_dir.clone(), scratch);
        let (relinker, settings) = (kept_by.clone(), recipe_settings(artifact));
        let kept_for = output.clone();
        kept_by.capturing(
            &kept_for,
            tokio::task::spawn_blocking(move || {
                match relink::Recipe::capture(&err_lines, &go_dir, &output, adopt_from.as_deref(), &settings) {
                    Ok(mut recipe) => {
                        if let Some(previous) = &adopt_from {
                            recipe.adopt_compiles(previous);
                        }
                        tracing::debug!(output = %output.display(), "recipe for relinking captured");
                        if let Some(job) = compiles_job.filter(|_| recipe.lacks_compiles()) {
                            relinker.to_record_compiles(job);
                        }
                        relinker.keep(&output, recipe)
                    }
                    // go found the main package in its cache: the recipe kept, if any, still tells
                    // whether it applies; without one, `kodev dev` records one in the background.
                    Err(why @ relink::NOT_COMPILED) => {
                        tracing::debug!(why, "no new recipe");
                        if let (Some(mut job), Some(main_action)) =
                            (recapture, relink::main_action_in_cache(&err_lines))
                        {
                            job.main_action = Some(main_action);
                            relinker.to_recapture(job);
                        } else if !relinker.records_in_background() && relink::forget_cached_main(&err_lines) {
                            tracing::debug!(
                                "main's entry removed from go's cache: the next go build compiles it and is recorded"
                            );
                        }
                    }
                    Err(why) => {
                        tracing::debug!(output = %output.display(), why, "this go build cannot be replayed");
                        relinker.forget(&output)
                    }
                }
                drop(scratch);
            }),
        );
    } else if let (Some(relinker), Some(job)) = (relinker, recapture) {
        // Built without capturing (an edit outside the main package): recorded after the push.
        relinker.to_recapture(job);
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    events.send(EventKind::Compiled { platform: platform_name, duration_ms, relinked: false });
    Ok(output)
}

/// Record a recipe for a binary go built without compiling its main package (see
/// `relink::Recapture`), in the background: go compiles the main package again once kodev
/// removed it from go's cache, and links a copy of the binary. Killed with its go when the
/// task is aborted (a new build starts). `RelinkReady` tells when the recipe is kept.
pub async fn recapture(job: relink::Recapture, relinker: Arc<Relinker>, events: EventSink) {
    let Some(scratch) = go_scratch_root().and_then(|root| ScratchDir::create(&root)) else { return };
    let go = |args: &[String]| go_command(args, &job.artifact.work_dir, &job.env, Some(&scratch.0));
    let gocache = go(&["env".into(), "GOCACHE".into()]).stdout(Stdio::piped()).output().await;
    let Some(gocache) =
        gocache.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        return;
    };
    let capture_godebug = format!("{},{}", go_godebug(&job.env), relink::CAPTURE_GODEBUG);
    // go's cache entries of the other packages to compile again (see `Recapture::previous`).
    let mut stale_packages = Vec::new();
    let mut main_action = match job.main_action {
        Some(action) => action,
        // The build did not capture: go tells, without building, where the main package is.
        None => {
            let mut args = build_args(&job.artifact, job.debug, &job.output);
            args.insert(1, "-n".to_string());
            let mut dry_run = go(&args);
            dry_run.env("GODEBUG", &capture_godebug).stdout(Stdio::null()).stderr(Stdio::piped());
            let told = dry_run.output().await.ok().filter(|out| out.status.success()).and_then(|out| {
                let lines: Vec<String> = String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect();
                if let Some(previous) = &job.previous {
                    stale_packages = previous.packages_changed_since(&lines);
                }
                relink::package_action(&lines, &job.artifact.import_path)
            });
            let Some(action) = told else {
                tracing::debug!("no recipe recorded: go build -n did not tell where the main package is");
                return;
            };
            action
        }
    };
    let previous = job.previous.clone();
    let copy = scratch.0.join("copy").join(job.artifact.binary_name());
    let mut args = build_args(&job.artifact, job.debug, &copy);
    args.splice(1..1, relink::CAPTURE_FLAGS.iter().map(|f| f.to_string()));
    // Another go build of these sources (the user's own, say) may put the main package back
    // in go's cache before this one compiles it: then again, a few times at most.
    let mut outcome = Err(relink::NOT_COMPILED);
    for _ in 0..3 {
        // go's cache entry of the main package's compile: without it go compiles the package again.
        let entry = gocache::entry_path(Path::new(&gocache), &main_action);
        if let Err(e) = std::fs::remove_file(&entry) {
            tracing::debug!(entry = %entry.display(), error = %e, "go's cache entry of the main package is not there");
        }
        for action in &stale_packages {
            let _ = std::fs::remove_file(gocache::entry_path(Path::new(&gocache), action));
        }
        // An earlier attempt's copy names the main package's build in its build ID: go would
        // take that for the compile and skip it.
        let _ = std::fs::remove_file(&copy);
        let Ok(child) = go(&args).env("GODEBUG", &capture_godebug).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
        else {
            return;
        };
        let mut group = child.id().map(BuildGroup::new);
        let finished = child.wait_with_output().await;
        if let Some(group) = group.as_mut() {
            group.finished();
        }
        let Some(finished) = finished.ok().filter(|o| o.status.success()) else {
            tracing::debug!("no recipe recorded: the background go build failed");
            return;
        };
        let lines: Vec<String> = String::from_utf8_lossy(&finished.stderr).lines().map(str::to_string).collect();
        let (relinker, go_dir, copy, output, previous) =
            (relinker.clone(), job.artifact.work_dir.clone(), copy.clone(), job.output.clone(), previous.clone());
        let settings = recipe_settings(&job.artifact);
        let kept = tokio::task::spawn_blocking(move || {
            let kept = relinker.keep_recaptured(&lines, &go_dir, &copy, &output, previous.as_deref(), &settings);
            (kept, relink::main_action_in_cache(&lines))
        })
        .await;
        let Ok((kept, in_cache)) = kept else { return };
        outcome = kept;
        match (outcome, in_cache) {
            (Err(relink::NOT_COMPILED), Some(action)) => main_action = action,
            _ => break,
        }
    }
    let platform = job.platform.to_string();
    match outcome {
        Ok(()) => {
            tracing::debug!(platform, "recipe recorded in the background");
            events.send(EventKind::RelinkReady { platform });
        }
        Err(why) => tracing::debug!(why, "no recipe recorded in the background"),
    }
    let _ = tokio::task::spawn_blocking(move || drop(scratch)).await;
    if outcome.is_ok() {
        let relink::Recapture { artifact, debug, env, output, .. } = job;
        relinker.start_recording_compiles(relink::RecordCompiles { artifact, debug, env, output });
    }
}

/// Complete a recipe with the compiles it lacks (see `relink::RecordCompiles`), in the
/// background: go prints, without building anything, the compile it would run for every
/// package. Killed with its go when the task is aborted (a new build starts).
pub async fn record_compiles(job: relink::RecordCompiles, relinker: Arc<Relinker>) {
    if !relinker.lacks_compiles(&job.output) {
        return;
    }
    let mut args = build_args(&job.artifact, job.debug, &job.output);
    args.splice(1..1, ["-a".to_string(), "-n".to_string()]);
    let mut dry_run = go_command(&args, &job.artifact.work_dir, &job.env, None);
    dry_run.env("GODEBUG", go_godebug(&job.env)).stdout(Stdio::null()).stderr(Stdio::piped());
    let Some(printed) = dry_run.output().await.ok().filter(|out| out.status.success()) else {
        tracing::debug!("go build -a -n failed; no package compiles recorded");
        return;
    };
    let lines: Vec<String> = String::from_utf8_lossy(&printed.stderr).lines().map(str::to_string).collect();
    let go_dir = job.artifact.work_dir.clone();
    let recorded = tokio::task::spawn_blocking(move || relinker.record_compiles(&job.output, &lines, &go_dir)).await;
    match recorded {
        Ok(Ok(count)) => tracing::debug!(count, "package compiles recorded from go build -a -n"),
        Ok(Err(why)) => tracing::debug!(why, "no package compiles recorded from go build -a -n"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GOFLAGS and GOWORK in the artifact's `env` are what its go builds see, over kodev's own.
    #[test]
    fn the_artifacts_env_says_what_goflags_and_gowork_are() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("go.mod", "module example.com/app\n\ngo 1.22\n");
        write("main.go", "package main\n\nfunc main() {}\n");
        write(
            "skaffold.yaml",
            "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: app\n      ko:\n        main: .\n        env: [\"GOFLAGS=-tags=a -modfile=dev.mod\", GOWORK=/elsewhere/dev.work]\n        flags: [-tags=b]\n",
        );
        let options = crate::config::LoadOptions {
            file: dir.path().join("skaffold.yaml"),
            push: Some(false),
            ..Default::default()
        };
        let plan = crate::config::load(&options).unwrap();
        let artifact = &plan.artifacts[0];
        assert!(reads_sources_elsewhere(artifact), "-modfile from the artifact's GOFLAGS");
        assert_eq!(build_tags(artifact), ["a", "b"]);
        assert_eq!(named_workspace(artifact), Some(PathBuf::from("/elsewhere/dev.work")));
    }

    /// What `go env -w` wrote (the file GOENV names here) counts where the environment leaves
    /// a setting unset or empty, as go reads it: the last line of a name wins.
    #[test]
    fn go_env_w_settings_count_where_the_environment_sets_none() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("go.mod", "module example.com/app\n\ngo 1.22\n");
        write("main.go", "package main\n\nfunc main() {}\n");
        write(
            "goenv",
            "GOFLAGS=-tags=old\n# a comment\nGOFLAGS=-tags=filetag -overlay=o.json\nGOWORK=/from/file.work\n",
        );
        let load = |env: &str| {
            write(
                "skaffold.yaml",
                &format!("apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: app\n      ko:\n        main: .\n        env: [\"GOENV={}\", {env}]\n        flags: [-tags=b]\n", dir.path().join("goenv").display()),
            );
            let options = crate::config::LoadOptions {
                file: dir.path().join("skaffold.yaml"),
                push: Some(false),
                ..Default::default()
            };
            crate::config::load(&options).unwrap().artifacts.remove(0)
        };
        let from_file = load("GOFLAGS=");
        assert_eq!(build_tags(&from_file), ["filetag", "b"]);
        assert!(reads_sources_elsewhere(&from_file), "-overlay from go's settings file");
        assert_eq!(named_workspace(&from_file), Some(PathBuf::from("/from/file.work")));
        let from_env = load("GOFLAGS=-tags=envtag");
        assert_eq!(build_tags(&from_env), ["envtag", "b"]);
        assert!(!reads_sources_elsewhere(&from_env));

        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(relink::go_env_file(env(&[("GOENV", "off"), ("HOME", "/h")])), None);
        assert_eq!(relink::go_env_file(env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "rel")])), None);
        if !cfg!(target_os = "macos") {
            assert_eq!(relink::go_env_file(env(&[("HOME", "/h")])), Some(PathBuf::from("/h/.config/go/env")));
            let xdg = env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]);
            assert_eq!(relink::go_env_file(xdg), Some(PathBuf::from("/x/go/env")));
        }
    }

    #[test]
    fn every_tag_of_every_tags_flag_is_read() {
        let flags: Vec<String> =
            ["-tags=a,b", "-trimpath", "--tags", "c d", "-tagsx=no", "tags=no", "-ldflags=-tags=no"]
                .map(String::from)
                .into();
        assert_eq!(tags_named(&flags), ["a", "b", "c", "d"]);
        assert!(tags_named(&["-tags".to_string()]).is_empty(), "a flag without its value names nothing");
    }

    #[test]
    fn go_runs_without_async_preemption_unless_the_user_chose() {
        let env =
            |value: &str| vec![("GOOS".to_string(), "linux".to_string()), ("GODEBUG".to_string(), value.to_string())];
        assert_eq!(go_godebug(&env("http2client=0")), "http2client=0,asyncpreemptoff=1");
        assert_eq!(go_godebug(&env("asyncpreemptoff=0,x=1")), "asyncpreemptoff=0,x=1", "the user's choice stands");
    }

    #[test]
    fn only_a_linkers_output_starts_compression_ahead() {
        assert!(is_linker_output(Path::new("/c/tmp/go/kodev-1-2/go-build123/b001/exe/a.out")));
        assert!(!is_linker_output(Path::new("/c/tmp/go/kodev-1-2/go-build123/b001/_pkg_.a")));
        assert!(!is_linker_output(Path::new("/c/tmp/go/kodev-1-2/go-build123/b001/exe/a.out.tmp")));
    }

    /// What go does to its output, by hand: the linker writes and closes `$WORK/b001/exe/a.out`,
    /// go renames it into place; each step is heard once, with its path.
    #[tokio::test]
    async fn the_linker_closing_and_the_rename_into_place_are_heard() {
        let scratch = tempfile::tempdir().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let output = out_dir.path().join("app");
        let (linked, link_seen) = tokio::sync::oneshot::channel();
        let (placed, in_place) = tokio::sync::oneshot::channel();
        let (linking, _) = tokio::sync::oneshot::channel();
        let _watch =
            watch_milestones(scratch.path(), &output, Milestones { linking, linked, placed }).expect("a watch");
        let exe = scratch.path().join("go-build1/b001/exe");
        std::fs::create_dir_all(&exe).unwrap();
        // Let the recursive watch pick up the new directories, as it does for go's.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Another file in the output's directory (go's umask probe) is not the binary.
        std::fs::write(out_dir.path().join("app-go-tmp-umask"), b"").unwrap();
        std::fs::write(exe.join("a.out"), b"linked").unwrap();
        let wait = std::time::Duration::from_secs(5);
        let linker_output = tokio::time::timeout(wait, link_seen).await.expect("linker heard").unwrap();
        assert_eq!(linker_output.path, exe.join("a.out"));
        assert!(linker_output.stamped.is_none(), "go's linker output is only a guess");
        std::fs::rename(out_dir.path().join("app-go-tmp-umask"), out_dir.path().join("other")).unwrap();
        std::fs::rename(exe.join("a.out"), &output).unwrap();
        let binary = tokio::time::timeout(wait, in_place).await.expect("rename heard").unwrap();
        assert_eq!(binary, output);
    }

    #[test]
    fn only_old_go_work_dirs_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let make = |name: &str, age_secs: u64| {
            let path = root.path().join(name);
            std::fs::create_dir_all(path.join("b001/exe")).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
            std::fs::File::open(&path).unwrap().set_modified(when).unwrap();
            path
        };
        let stale = make("go-build111", 7200);
        let stale_scratch = make("kodev-123-4", 7200);
        let running = make("go-build222", 10);
        let running_scratch = make("kodev-123-5", 10);
        let other = make("something-else", 7200);
        // In the user's GOTMPDIR only kodev's own directories go.
        sweep_stale_work_dirs(root.path(), std::time::Duration::from_secs(3600), false);
        assert!(!stale_scratch.exists(), "a killed build's old scratch dir goes");
        assert!(stale.exists(), "an old go-build dir in the user's GOTMPDIR may be another go's");
        sweep_stale_work_dirs(root.path(), std::time::Duration::from_secs(3600), true);
        assert!(!stale.exists(), "in kodev's own root a killed build's old work dir goes");
        assert!(running.exists() && running_scratch.exists(), "a recent one may belong to a running go");
        assert!(other.exists(), "only go's own directories are touched");
    }
}
