//! `kodev dev --no-tui --output json` end to end: a fixture module with two mains and a
//! shared package, a real registry, real edits on disk.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Long enough for a go build on a loaded 2-core machine; a deadline, not a measurement.
const BUILD_DEADLINE: Duration = Duration::from_secs(180);
/// How long "nothing happens" is watched for after a change that must not rebuild.
const QUIET: Duration = Duration::from_millis(2500);

struct DevSession {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    seen: Vec<Value>,
    pub dir: tempfile::TempDir,
    /// What this session's go builds have on their command line (their output directory).
    pub build_marker: String,
    _cache: tempfile::TempDir,
    _registry: Registry,
}

impl DevSession {
    fn start(extra: &[&str], images: &[&str]) -> DevSession {
        Self::start_with(extra, images, |_| {})
    }

    /// Start on a copy of the fixture that `prepare` may change first.
    fn start_with(extra: &[&str], images: &[&str], prepare: impl FnOnce(&Path)) -> DevSession {
        Self::start_full(extra, images, prepare, None, &[])
    }

    /// Start with kodev's debug log written to `log`.
    fn start_logged(extra: &[&str], images: &[&str], log: &Path) -> DevSession {
        Self::start_full(extra, images, |_| {}, Some(log), &[])
    }

    fn start_full(
        extra: &[&str],
        images: &[&str],
        prepare: impl FnOnce(&Path),
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> DevSession {
        Self::start_tagged(extra, images, prepare, log, env, Some("dev"))
    }

    /// `tag`: given with `-t`; None leaves it to the tag policy.
    fn start_tagged(
        extra: &[&str],
        images: &[&str],
        prepare: impl FnOnce(&Path),
        log: Option<&Path>,
        env: &[(&str, &str)],
        tag: Option<&str>,
    ) -> DevSession {
        let mut session = Self::launch(extra, prepare, log, env, tag);
        session.wait_for("the first builds", |e| e["event"] == "watching");
        for image in images {
            assert!(
                session.seen.iter().any(|e| e["event"] == "pushed" && e["artifact"] == *image),
                "first round pushed {image}: {:?}",
                session.seen
            );
        }
        session
    }

    /// Start, without waiting for anything.
    fn launch(
        extra: &[&str],
        prepare: impl FnOnce(&Path),
        log: Option<&Path>,
        env: &[(&str, &str)],
        tag: Option<&str>,
    ) -> DevSession {
        Self::launch_on(Registry::start(), extra, prepare, log, env, tag)
    }

    /// Start, pushing to `registry` (under `dev/`), without waiting for anything.
    fn launch_on(
        registry: Registry,
        extra: &[&str],
        prepare: impl FnOnce(&Path),
        log: Option<&Path>,
        env: &[(&str, &str)],
        tag: Option<&str>,
    ) -> DevSession {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&repo_root().join("tests/fixtures/monorepo"), dir.path());
        prepare(dir.path());
        // A cache of its own: its go builds write under it, which tells them from other tests'.
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().to_path_buf();
        let mut command = kodev();
        command
            .env("KODEV_CACHE_DIR", &cache)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .args(["dev", "--no-tui", "--output", "json", "-d", &format!("{}/dev", registry.host)])
            .args(tag.map(|tag| ["-t", tag]).into_iter().flatten())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        match log {
            Some(log) => command.env("KODEV_LOG", "kodev=debug").stderr(std::fs::File::create(log).unwrap()),
            None => command.stderr(Stdio::inherit()),
        };
        let mut child = command.spawn().expect("start kodev dev");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let build_marker = cache.display().to_string();
        DevSession {
            child,
            stdin,
            events: rx,
            seen: Vec::new(),
            dir,
            build_marker,
            _cache: cache_dir,
            _registry: registry,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Wait for an event matching `pred`, keeping everything seen on the way.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + BUILD_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}; seen: {:#?}", self.seen),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("kodev dev ended while waiting for {what}; seen: {:#?}", self.seen)
                }
            }
        }
    }

    /// Everything that arrives within `quiet` of the last event.
    fn drain_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        while let Ok(event) = self.events.recv_timeout(quiet) {
            self.seen.push(event.clone());
            got.push(event);
        }
        got
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for DevSession {
    fn drop(&mut self) {
        // SIGTERM first: kodev then stops its go builds, which SIGKILL would leave running.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A module `example.com/lib` in `dir`, whose `Suffix` says `(lib one)`.
fn write_lib_module(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("go.mod"), "module example.com/lib\n\ngo 1.19\n").unwrap();
    std::fs::write(dir.join("lib.go"), "package lib\n\nconst Suffix = \" (lib one)\"\n").unwrap();
}

/// The fixture's alpha (in `fixture_dir`) printing `lib.Suffix` after its greeting.
fn alpha_imports_lib(fixture_dir: &Path) {
    let main = fixture_dir.join("cmd/alpha/main.go");
    edit(&main, "\"example.com/mono/internal/shared\"", "\"example.com/lib\"\n\t\"example.com/mono/internal/shared\"");
    edit(&main, "shared.Greeting(\"alpha\")", "shared.Greeting(\"alpha\") + lib.Suffix");
}

/// The fixture (in `fixture_dir`) with `example.com/lib` replaced by the directory `lib_dir`
/// (`replace example.com/lib => DIR`), and alpha printing its `Suffix`.
fn alpha_imports_lib_from(fixture_dir: &Path, lib_dir: &Path) {
    let go_mod = fixture_dir.join("go.mod");
    let text = std::fs::read_to_string(&go_mod).unwrap();
    let replace = format!("\nrequire example.com/lib v0.0.0\n\nreplace example.com/lib => {}\n", lib_dir.display());
    std::fs::write(&go_mod, text + &replace).unwrap();
    alpha_imports_lib(fixture_dir);
}

/// alpha as a one-shot `kodev build` with an empty kodev cache builds it from the session's
/// sources now: its reference.
fn alpha_from_an_empty_cache(dev: &DevSession) -> String {
    let fresh_cache = tempfile::tempdir().unwrap();
    let out = run(kodev().env("KODEV_CACHE_DIR", fresh_cache.path()).current_dir(dev.dir.path()).args([
        "build",
        "-b",
        "alpha",
        "-d",
        &format!("{}/fresh", dev._registry.host),
        "-t",
        "x",
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn count(events: &[Value], event: &str, artifact: &str) -> usize {
    events.iter().filter(|e| e["event"] == event && e["artifact"] == artifact).count()
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} holds {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn edits_rebuild_exactly_the_artifacts_that_depend_on_them() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start(&[], &["alpha", "beta"]);

    // One main: only it rebuilds.
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha v2\"");
    dev.wait_for("alpha pushed", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    let after = dev.drain_quiet(QUIET);
    let mark = dev.seen.len();
    let since_edit: Vec<Value> = dev.seen[dev.seen.len() - after.len()..].to_vec();
    assert_eq!(count(&since_edit, "build_started", "beta"), 0, "beta must not rebuild: {since_edit:#?}");
    let alpha_builds = dev.seen.iter().filter(|e| e["event"] == "build_started" && e["artifact"] == "alpha").count();
    assert_eq!(alpha_builds, 2, "first build + one rebuild");

    // An editor that saves by writing a temporary file and renaming it over the original.
    let main = dev.path("cmd/beta/main.go");
    let renamed = dev.path("cmd/beta/.main.go.kodev-tmp");
    std::fs::write(&renamed, std::fs::read_to_string(&main).unwrap().replace("\"beta\"", "\"beta renamed\"")).unwrap();
    std::fs::rename(&renamed, &main).unwrap();
    dev.wait_for("beta pushed after a rename-save", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    dev.drain_quiet(QUIET);

    // The shared package: both rebuild.
    edit(&dev.path("internal/shared/shared.go"), "\"hello, \"", "\"hi, \"");
    let mut pushed = std::collections::BTreeSet::new();
    while pushed.len() < 2 {
        let e = dev.wait_for("both pushed", |e| e["event"] == "pushed");
        pushed.insert(e["artifact"].as_str().unwrap().to_string());
    }
    dev.drain_quiet(QUIET);

    // A file outside the Go graph: nothing.
    let before = dev.seen.len();
    std::fs::write(dev.path("README.md"), "# changed\n").unwrap();
    std::fs::write(dev.path("notes.txt"), "new file\n").unwrap();
    let after = dev.drain_quiet(QUIET);
    assert!(after.iter().all(|e| e["event"] != "build_started"), "non-Go edits must not rebuild: {after:#?}");
    assert!(dev.seen.len() >= before && mark > 0);

    // The rebuilt layers: base and kodata already there, only the binary uploaded.
    let layers: Vec<&Value> = dev.seen.iter().filter(|e| e["event"] == "layer" && e["artifact"] == "alpha").collect();
    let last_three = &layers[layers.len() - 3..];
    assert_eq!(last_three[0]["kind"], "base");
    assert_eq!(last_three[0]["uploaded"], false);
    assert_eq!(last_three[1]["kind"], "kodata");
    assert_eq!(last_three[1]["uploaded"], false);
    assert_eq!(last_three[2]["kind"], "binary");
    assert_eq!(last_three[2]["uploaded"], true);

    // What the session reused (compressed chunks of earlier builds, streamed uploads) changes
    // nothing in the bytes: a one-shot build with an empty cache gives the same image.
    let last_alpha = dev.seen.iter().rev().find(|e| e["event"] == "pushed" && e["artifact"] == "alpha").unwrap();
    let dev_digest = last_alpha["digest"].as_str().unwrap().to_string();
    let reference = alpha_from_an_empty_cache(&dev);
    assert!(reference.ends_with(&format!("@{dev_digest}")), "{reference} vs {dev_digest}");

    dev.send("q");
    let status = dev.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn edits_of_a_module_replaced_by_a_directory_elsewhere_rebuild_its_importers() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    // A sibling module outside the tree kodev watches for skaffold.yaml, as in
    // `replace example.com/lib => ../lib`.
    let lib = tempfile::tempdir().unwrap();
    write_lib_module(lib.path());
    let lib_dir = lib.path().to_path_buf();
    let mut dev = DevSession::start_with(&[], &["alpha", "beta"], |dir| alpha_imports_lib_from(dir, &lib_dir));
    dev.drain_quiet(Duration::from_millis(500));
    let before = dev.seen.len();
    edit(&lib_dir.join("lib.go"), "lib one", "lib two");
    let pushed = dev.wait_for("alpha pushed after the edit of the replaced module", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha"
    });
    dev.drain_quiet(QUIET);
    let since_edit = dev.seen[before..].to_vec();
    assert_eq!(count(&since_edit, "build_started", "beta"), 0, "beta does not import the module: {since_edit:#?}");

    // The image holds the edit: the same as a one-shot build from an empty cache.
    let reference = alpha_from_an_empty_cache(&dev);
    let digest = pushed["digest"].as_str().unwrap();
    assert!(reference.ends_with(&format!("@{digest}")), "{reference} vs {digest}");
}

/// The first builds do not wait for the package graphs. With `go list -deps` held back, alpha
/// is built and pushed, and an edit made meanwhile of a module replaced from outside the tree
/// (known from go.mod, before any graph) rebuilds it. Once the graphs are read `watching`
/// comes, and a Go file outside them rebuilds nothing.
#[test]
fn the_first_builds_do_not_wait_for_the_package_graphs() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let lib = tempfile::tempdir().unwrap();
    write_lib_module(lib.path());
    let lib_dir = lib.path().to_path_buf();
    let held = tempfile::tempdir().unwrap();
    let release = held.path().join("release");
    let go = held.path().join("go");
    std::fs::write(
        &go,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" list \"*\"-deps\"*) while [ ! -e '{}' ]; do sleep 0.05; done ;; esac\nexec '{}' \"$@\"\n",
            release.display(),
            which("go").unwrap().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&go, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let go_path = go.display().to_string();
    let mut dev = DevSession::launch(
        &[],
        |dir| alpha_imports_lib_from(dir, &lib_dir),
        None,
        &[("KO_GO_PATH", &go_path)],
        Some("dev"),
    );
    dev.wait_for("alpha's first build pushed, the graphs held", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    edit(&lib_dir.join("lib.go"), "lib one", "lib two");
    let rebuilt = dev.wait_for("alpha pushed after the edit of the replaced module", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha"
    });
    assert!(dev.seen.iter().all(|e| e["event"] != "watching"), "the graphs are not read yet: {:#?}", dev.seen);
    std::fs::write(&release, "").unwrap();
    dev.wait_for("the graphs read", |e| e["event"] == "watching");
    dev.drain_quiet(Duration::from_millis(500));

    let before = dev.seen.len();
    std::fs::create_dir_all(dev.path("tools/gen")).unwrap();
    std::fs::write(dev.path("tools/gen/gen.go"), "package main\n\nfunc main() {}\n").unwrap();
    let after = dev.drain_quiet(QUIET);
    assert!(after.iter().all(|e| e["event"] != "build_started"), "a package outside the graphs: {after:#?}");
    assert!(dev.seen.len() >= before);

    let reference = alpha_from_an_empty_cache(&dev);
    let digest = rebuilt["digest"].as_str().unwrap();
    assert!(reference.ends_with(&format!("@{digest}")), "{reference} vs {digest}");
}

/// A package only the target platform's files import (`x_arm64.go` while kodev runs on
/// amd64; a developer's mac building linux images) is in the graph: its edits rebuild.
#[test]
fn a_package_only_the_target_platforms_files_import_is_watched() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start_with(&["--platform", "linux/arm64"], &["alpha", "beta"], |dir| {
        std::fs::write(
            dir.join("cmd/alpha/platform_arm64.go"),
            "package main\n\nimport \"example.com/mono/internal/armonly\"\n\nvar _ = armonly.Name\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("internal/armonly")).unwrap();
        std::fs::write(dir.join("internal/armonly/armonly.go"), "package armonly\n\nvar Name = \"arm one\"\n").unwrap();
    });
    let first = dev.seen.iter().find(|e| e["event"] == "pushed" && e["artifact"] == "alpha").unwrap().clone();
    dev.drain_quiet(Duration::from_millis(500));
    let before = dev.seen.len();
    edit(&dev.path("internal/armonly/armonly.go"), "arm one", "arm two");
    let pushed = dev.wait_for("alpha pushed after the edit of the arm64-only package", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha"
    });
    dev.drain_quiet(QUIET);
    let since_edit = dev.seen[before..].to_vec();
    assert_ne!(pushed["digest"], first["digest"], "the edit is in the image: {since_edit:#?}");
    assert_eq!(count(&since_edit, "build_started", "beta"), 0, "beta does not import it: {since_edit:#?}");
}

/// An edit of a file go leaves out for its name on every platform built (`x_windows.go`
/// for linux images) rebuilds nothing; an edit of the same package's other files does.
#[test]
fn an_edit_of_another_systems_file_rebuilds_nothing() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start_with(&[], &["alpha", "beta"], |dir| {
        std::fs::write(dir.join("cmd/alpha/console_windows.go"), "package main\n\nconst console = \"CONOUT$\"\n")
            .unwrap();
    });
    dev.drain_quiet(Duration::from_millis(500));
    edit(&dev.path("cmd/alpha/console_windows.go"), "CONOUT$", "CON");
    let after_windows_edit = dev.drain_quiet(QUIET);
    assert_eq!(count(&after_windows_edit, "build_started", "alpha"), 0, "{after_windows_edit:#?}");
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha 1\"");
    dev.wait_for("alpha rebuilt after an edit of main", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
}

/// GOWORK naming a workspace file elsewhere, by another name: its edits are seen, like a
/// go.work's. The edit swaps the module alpha takes `example.com/lib` from.
#[test]
fn a_workspace_file_gowork_names_elsewhere_is_watched() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let workspace = tempfile::tempdir().unwrap();
    let workspace = workspace.path().canonicalize().unwrap();
    write_lib_module(&workspace.join("lib"));
    write_lib_module(&workspace.join("lib2"));
    edit(&workspace.join("lib2/lib.go"), "lib one", "lib from lib2");
    let work_file = workspace.join("dev.work");
    let work_text = |dir: &Path, lib: &str| format!("go 1.19\n\nuse (\n\t{}\n\t./{lib}\n)\n", dir.display());
    let gowork = work_file.display().to_string();
    let mut dev = DevSession::start_full(
        &[],
        &["alpha", "beta"],
        |dir| {
            std::fs::write(&work_file, work_text(dir, "lib")).unwrap();
            alpha_imports_lib(dir);
        },
        None,
        &[("GOWORK", &gowork)],
    );
    dev.drain_quiet(Duration::from_millis(500));
    let before = dev.seen.len();
    std::fs::write(&work_file, work_text(dev.dir.path(), "lib2")).unwrap();
    let pushed = dev.wait_for("alpha pushed after the edit of the workspace file", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha"
    });
    dev.drain_quiet(QUIET);
    let since_edit = dev.seen[before..].to_vec();
    let first = dev.seen[..before].iter().find(|e| e["event"] == "pushed" && e["artifact"] == "alpha").unwrap();
    assert_ne!(pushed["digest"], first["digest"], "alpha takes lib2 now: {since_edit:#?}");
}

/// skaffold.yaml in `svc/`, in a go.work (one directory up) with a module `lib/` beside it:
/// neither is under the directory kodev watches for skaffold.yaml.
#[test]
fn a_workspace_above_the_skaffold_directory_and_its_other_module_are_watched() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start_full(
        &["-f", "svc/skaffold.yaml"],
        &["alpha", "beta"],
        |dir| {
            let svc = dir.join("svc");
            std::fs::create_dir(&svc).unwrap();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path != svc {
                    std::fs::rename(&path, svc.join(path.file_name().unwrap())).unwrap();
                }
            }
            write_lib_module(&dir.join("lib"));
            std::fs::write(dir.join("go.work"), "go 1.19\n\nuse (\n\t./svc\n\t./lib\n)\n").unwrap();
            alpha_imports_lib(&svc);
        },
        None,
        &[],
    );
    dev.drain_quiet(Duration::from_millis(500));
    let before = dev.seen.len();
    edit(&dev.path("lib/lib.go"), "lib one", "lib two");
    dev.wait_for("alpha pushed after the edit of the other module", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha"
    });
    dev.drain_quiet(QUIET);
    assert_eq!(count(&dev.seen[before..], "build_started", "beta"), 0, "beta does not import lib");

    // Without lib in the workspace, alpha's import of it has no module: the build says so.
    std::fs::write(dev.path("go.work"), "go 1.19\n\nuse ./svc\n").unwrap();
    let failed = dev
        .wait_for("alpha failing without lib in go.work", |e| e["event"] == "build_failed" && e["artifact"] == "alpha");
    assert!(failed["error"].as_str().unwrap().contains("example.com/lib"), "{failed}");
}

fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(Command::new("git").args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args).current_dir(dir))
}

/// Commit the directory's files to a new git repository.
fn into_git(dir: &Path) {
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "fixture"]);
}

/// A session building alpha with Skaffold's default tagger, on a copy of the fixture that
/// `prepare` may change and that is then committed to a new git repository.
fn alpha_in_git_tagged_by_its_tagger(prepare: impl FnOnce(&Path)) -> DevSession {
    let in_git = |dir: &Path| {
        prepare(dir);
        into_git(dir);
    };
    DevSession::start_tagged(&["--build-image", "alpha"], &["alpha"], in_git, None, &[], None)
}

/// Templated settings that read the git state or the tag are expanded again at each build,
/// as Skaffold and ko do: after a commit, the image's label and what its ldflags stamped in
/// name the new commit and tag, not the ones the session started with.
#[test]
fn templated_settings_follow_the_tree_from_build_to_build() {
    if !require_tools(&["docker-registry", "go", "git", "podman", "skopeo"]) {
        return;
    }
    let mut dev = alpha_in_git_tagged_by_its_tagger(|dir| {
        edit(
            &dir.join("skaffold.yaml"),
            "main: ./cmd/alpha\n",
            "main: ./cmd/alpha\n        env: [FLAVOR=blue]\n        ldflags: [\"-X main.commit={{.Git.ShortCommit}}\", \"-X main.tag={{.IMAGE_TAG}}\", \"-X main.flavor={{.Env.FLAVOR}}\"]\n        labels:\n          org.example.commit: \"{{.Git.ShortCommit}}\"\n",
        );
        edit(
            &dir.join("cmd/alpha/main.go"),
            "func main() {\n\tfmt.Println(shared.Greeting(\"alpha\"))",
            "var commit, tag, flavor = \"none\", \"none\", \"none\"\n\nfunc main() {\n\tfmt.Println(shared.Greeting(\"alpha\"), \"commit=\"+commit, \"tag=\"+tag, \"flavor=\"+flavor)",
        );
    });
    let short_commit = |dev: &DevSession| git(dev.dir.path(), &["rev-parse", "--short", "HEAD"]).trim().to_string();
    let label = |pushed: &Value| {
        // skopeo takes a tag or a digest, not both.
        let (name, digest) = pushed["tag"].as_str().unwrap().split_once('@').unwrap();
        let repository = name.rsplit_once(':').unwrap().0;
        let config = skopeo_inspect(&format!("docker://{repository}@{digest}"), false, true);
        config["config"]["Labels"]["org.example.commit"].as_str().unwrap_or_default().to_string()
    };
    let first_commit = short_commit(&dev);
    let first = dev.seen.iter().find(|e| e["event"] == "pushed").unwrap().clone();
    assert_eq!(label(&first), first_commit, "{first}");

    let podman = Podman::new(Some(dev._registry.host.as_str()));

    // An uncommitted edit: the tag (and what ldflags made of it) says so.
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha, edited\"");
    let edited = dev.wait_for("alpha pushed after an edit", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    let said = podman.run_image(edited["tag"].as_str().unwrap(), &[]);
    assert!(said.contains(&format!("commit={first_commit} tag={first_commit}-dirty")), "{said}");

    git(dev.dir.path(), &["commit", "-qam", "edit"]);
    let commit = short_commit(&dev);
    assert_ne!(commit, first_commit);
    dev.send("r");
    let rebuilt = dev.wait_for("alpha pushed after the commit", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha" && *e != edited
    });
    assert_eq!(label(&rebuilt), commit, "{rebuilt}");
    let said = podman.run_image(rebuilt["tag"].as_str().unwrap(), &[]);
    assert!(said.contains(&format!("commit={commit} tag={commit}")), "{said}");
    // ko's .Env holds the build's own env entries, at every build.
    assert!(said.contains("flavor=blue"), "{said}");
}

/// With Skaffold's default tagger (gitCommit), each build is tagged as the tree is then: an
/// image with uncommitted edits goes up as `COMMIT-dirty`, never under the clean commit's tag.
#[test]
fn the_default_tag_follows_the_tree_from_build_to_build() {
    if !require_tools(&["docker-registry", "go", "git"]) {
        return;
    }
    let mut dev = alpha_in_git_tagged_by_its_tagger(|_| {});
    let commit = git(dev.dir.path(), &["rev-parse", "--short", "HEAD"]).trim().to_string();
    let tag_of = |pushed: &Value| {
        let reference = pushed["tag"].as_str().unwrap();
        reference.split('@').next().unwrap().rsplit_once(':').unwrap().1.to_string()
    };
    let first = dev.seen.iter().find(|e| e["event"] == "pushed").unwrap().clone();
    assert_eq!(tag_of(&first), commit, "a clean tree: {first}");

    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha, edited\"");
    let edited = dev.wait_for("alpha pushed after an edit", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    assert_eq!(tag_of(&edited), format!("{commit}-dirty"), "{edited}");

    git(dev.dir.path(), &["commit", "-qam", "edit"]);
    let committed = git(dev.dir.path(), &["rev-parse", "--short", "HEAD"]).trim().to_string();
    dev.send("r");
    let rebuilt = dev.wait_for("alpha pushed after the commit", |e| {
        e["event"] == "pushed" && e["artifact"] == "alpha" && *e != edited
    });
    assert_eq!(tag_of(&rebuilt), committed, "{rebuilt}");
}

#[test]
fn bursts_coalesce_and_failures_keep_the_loop_alive() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start(&[], &["alpha", "beta"]);
    let main = dev.path("cmd/alpha/main.go");
    let original = std::fs::read_to_string(&main).unwrap();
    let start = dev.seen.len();
    for i in 0..40 {
        std::fs::write(&main, format!("{original}\n// edit {i}\n")).unwrap();
    }
    dev.wait_for("alpha pushed after the burst", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    dev.drain_quiet(QUIET);
    let burst = &dev.seen[start..];
    let builds = count(burst, "build_started", "alpha");
    assert!((1..=2).contains(&builds), "40 writes gave {builds} builds: {burst:#?}");
    assert_eq!(count(burst, "build_started", "beta"), 0);

    // A compile error: build_failed with go's message, and the loop goes on.
    std::fs::write(&main, original.replace("fmt.Println(", "fmt.Println(undefinedName, ")).unwrap();
    let failed = dev.wait_for("build_failed", |e| e["event"] == "build_failed" && e["artifact"] == "alpha");
    assert!(failed["error"].as_str().unwrap().contains("undefined: undefinedName"), "{failed}");
    let log = dev
        .seen
        .iter()
        .any(|e| e["event"] == "build_log" && e["line"].as_str().unwrap_or("").contains("undefinedName"));
    assert!(log, "go's output arrives as build_log events");
    std::fs::write(&main, &original).unwrap();
    let pushed = dev.wait_for("pushed after the fix", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    assert!(pushed["tag"].as_str().unwrap().contains("/dev/alpha:dev@sha256:"), "{pushed}");

    // Closing stdin does not stop the loop; the process keeps watching until killed.
    drop(dev.stdin.take());
    std::thread::sleep(Duration::from_millis(500));
    assert!(dev.child.try_wait().unwrap().is_none(), "end of input is not a quit");
}

#[test]
fn debug_toggle_rebuilds_without_optimizations_and_q_quits() {
    if !require_tools(&["docker-registry", "go", "curl", "skopeo"]) {
        return;
    }
    let mut dev = DevSession::start(&["-b", "alpha"], &["alpha"]);
    dev.send("d");
    dev.wait_for("debug_changed", |e| e["event"] == "debug_changed" && e["debug"] == true);
    let started = dev.wait_for("debug build", |e| e["event"] == "build_started" && e["artifact"] == "alpha");
    assert_eq!(started["debug"], true);
    let pushed = dev.wait_for("debug push", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    assert_eq!(pushed["debug"], true);

    let host = dev._registry.host.clone();
    let reference = pushed["tag"].as_str().unwrap();
    let digest = pushed["digest"].as_str().unwrap();
    let name = reference.split(':').take(2).collect::<Vec<_>>().join(":");
    let config = skopeo_inspect(&format!("docker://{}@{digest}", name.split('@').next().unwrap()), false, true);
    assert_eq!(config["config"]["Labels"]["dev.kodev.debug"], "true");
    let manifest = skopeo_inspect(&format!("docker://{host}/dev/alpha@{digest}"), true, false);
    let binary = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let blob = fetch_blob(&host, "dev/alpha", &binary);
    let work = tempfile::tempdir().unwrap();
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob[..]));
    archive.unpack(work.path()).unwrap();
    let go = which("go").expect("go");
    let info = run_ok(Command::new(go).arg("version").arg("-m").arg(work.path().join("ko-app/alpha")));
    assert!(info.contains("-gcflags=\"all=-N -l\"") || info.contains("-gcflags=all=-N -l"), "{info}");
    assert!(!info.contains("-trimpath=true"), "{info}");

    dev.send("q");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "q must end kodev dev");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn polling_trigger_sees_edits_and_manual_trigger_waits_for_r() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut polling = DevSession::start(&["--trigger", "polling", "--watch-poll-interval", "200"], &["alpha", "beta"]);
    edit(&polling.path("cmd/beta/main.go"), "\"beta\"", "\"beta polled\"");
    polling.wait_for("beta pushed", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    let after = polling.drain_quiet(QUIET);
    assert_eq!(count(&after, "build_started", "alpha"), 0, "{after:#?}");

    let mut manual = DevSession::start(&["--trigger", "manual"], &["alpha", "beta"]);
    edit(&manual.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha manual\"");
    let after = manual.drain_quiet(QUIET);
    assert!(after.iter().all(|e| e["event"] != "build_started"), "manual trigger: no build without r: {after:#?}");
    manual.send("r alpha");
    manual.wait_for("alpha pushed", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    let after = manual.drain_quiet(QUIET);
    assert_eq!(count(&after, "build_started", "beta"), 0);
    manual.send("r nosuch");
    let error = manual.wait_for("error for an unknown image", |e| e["event"] == "error");
    assert!(error["message"].as_str().unwrap().contains("nosuch"));
}

#[test]
fn auto_toggle_defers_builds_and_config_edits_reload() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start(&[], &["alpha", "beta"]);
    dev.send("a");
    std::thread::sleep(Duration::from_millis(300));
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha deferred\"");
    let after = dev.drain_quiet(QUIET);
    assert!(after.iter().all(|e| e["event"] != "build_started"), "auto off: {after:#?}");
    dev.send("a");
    let started = dev.wait_for("deferred build", |e| e["event"] == "build_started");
    assert_eq!(started["artifact"], "alpha");
    dev.wait_for("alpha pushed", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    dev.drain_quiet(QUIET);

    // Editing skaffold.yaml reloads the plan and rebuilds with it.
    edit(
        &dev.path("skaffold.yaml"),
        "main: ./cmd/beta\n",
        "main: ./cmd/beta\n        labels:\n          reloaded: \"yes\"\n",
    );
    dev.wait_for("config_reloaded", |e| e["event"] == "config_reloaded");
    dev.wait_for("beta pushed", |e| e["event"] == "pushed" && e["artifact"] == "beta");

    // A broken edit keeps the previous configuration and says why.
    edit(&dev.path("skaffold.yaml"), "main: ./cmd/beta\n", "mian: ./cmd/beta\n");
    let error = dev.wait_for("config error", |e| e["event"] == "error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("skaffold.yaml") && message.contains("mian"), "{message}");
    assert!(dev.child.try_wait().unwrap().is_none());
}

/// A reload before the first builds are done: `watching` then follows the new plan's builds,
/// even when the artifacts it names are fewer or at other positions.
#[test]
fn a_reload_during_the_first_builds_still_announces_watching() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    // Both first builds slow (`-a` rebuilds every package), so the reload comes during them.
    let slow = |dir: &Path| {
        let skaffold = dir.join("skaffold.yaml");
        edit(&skaffold, "main: ./cmd/alpha\n", "main: ./cmd/alpha\n        flags: [\"-a\"]\n");
        edit(&skaffold, "main: ./cmd/beta\n", "main: ./cmd/beta\n        flags: [\"-a\"]\n");
    };
    let mut dev = DevSession::launch(&[], slow, None, &[], Some("dev"));
    for image in ["alpha", "beta"] {
        if count(&dev.seen, "build_started", image) == 0 {
            dev.wait_for("the first builds", |e| e["event"] == "build_started" && e["artifact"] == image);
        }
    }
    // beta alone, first now where alpha was.
    std::fs::write(
        dev.path("skaffold.yaml"),
        "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: beta\n      ko:\n        main: ./cmd/beta\n",
    )
    .unwrap();
    dev.wait_for("config_reloaded", |e| e["event"] == "config_reloaded");
    dev.wait_for("beta pushed", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    dev.drain_quiet(QUIET);
    assert!(dev.seen.iter().any(|e| e["event"] == "watching"), "no watching after the reload: {:#?}", dev.seen);
    assert!(dev.seen.iter().all(|e| !(e["event"] == "pushed" && e["artifact"] == "alpha")), "{:#?}", dev.seen);
}

/// The base a pushed image of alpha was built on (its `org.opencontainers.image.base.digest`).
fn base_digest_of_pushed(dev: &DevSession, pushed: &Value) -> String {
    let reference = format!("docker://{}/dev/alpha@{}", dev._registry.host, pushed["digest"].as_str().unwrap());
    let manifest = skopeo_inspect(&reference, true, false);
    manifest["annotations"]["org.opencontainers.image.base.digest"]
        .as_str()
        .expect("base digest annotation")
        .to_string()
}

/// A base named by tag is looked up again at each build, as `skaffold dev` does (its ko builder
/// resolves the base per build): when the tag moves during the session, the next build is on
/// the new base. When the base's registry cannot be reached, the build goes on with the base
/// it had, and says so.
#[test]
fn a_base_whose_tag_moves_during_the_session_is_built_on_from_the_next_build() {
    if !require_tools(&["docker-registry", "go", "umoci", "skopeo"]) {
        return;
    }
    let bases = Registry::start();
    let layouts = tempfile::tempdir().unwrap();
    let layout = layouts.path().join("layout");
    umoci_image(&layout, "v1", "amd64");
    umoci_image(&layout, "v2", "amd64");
    let marker = layouts.path().join("second-marker");
    std::fs::write(&marker, "the second base\n").unwrap();
    run_ok(
        Command::new("umoci")
            .args(["insert", "--rootless", "--image", &format!("{}:v2", layout.display())])
            .arg(&marker)
            .arg("/etc/second-marker"),
    );
    let base = format!("{}/base/moving:latest", bases.host);
    let digest_of = |image: &str| {
        skopeo_inspect(&format!("oci:{}:{image}", layout.display()), false, false)["Digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (v1, v2) = (digest_of("v1"), digest_of("v2"));
    assert_ne!(v1, v2);
    skopeo_push(&layout, "v1", &base, false, false);

    let skaffold = format!(
        "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: alpha\n      ko:\n        main: ./cmd/alpha\n        fromImage: {base}\n"
    );
    let prepare = |dir: &Path| std::fs::write(dir.join("skaffold.yaml"), &skaffold).unwrap();
    let mut dev = DevSession::launch_on(Registry::start(), &[], prepare, None, &[], Some("dev"));
    let first = dev.wait_for("the first build", |e| e["event"] == "pushed");
    dev.wait_for("watching", |e| e["event"] == "watching");
    assert_eq!(base_digest_of_pushed(&dev, &first), v1);

    // The tag moves; the next build (an edit) is on the base it names now.
    skopeo_push(&layout, "v2", &base, false, false);
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha on a new base\"");
    let second = dev.wait_for("the build after the base moved", |e| e["event"] == "pushed");
    assert_eq!(base_digest_of_pushed(&dev, &second), v2);
    dev.drain_quiet(QUIET);

    // The base's registry gone: the next build is still made, on the base it had.
    drop(bases);
    let since = dev.seen.len();
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha on a new base\"", "\"alpha offline\"");
    let third = dev
        .wait_for("the build without the base's registry", |e| e["event"] == "pushed" || e["event"] == "build_failed");
    assert_eq!(third["event"], "pushed", "{:#?}", &dev.seen[since..]);
    assert_eq!(base_digest_of_pushed(&dev, &third), v2);
    let said = dev.seen[since..].iter().find(|e| e["event"] == "error").expect("the lookup's failure is said");
    let message = said["message"].as_str().unwrap();
    assert!(message.contains("base/moving:latest") && message.contains(&v2), "{message}");
    dev.drain_quiet(QUIET);

    // Still offline: the next build is made too, and the failure is not said again.
    let since = dev.seen.len();
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha offline\"", "\"alpha still offline\"");
    let fourth = dev.wait_for("the second build offline", |e| e["event"] == "pushed" || e["event"] == "build_failed");
    assert_eq!(fourth["event"], "pushed", "{:#?}", &dev.seen[since..]);
    assert_eq!(base_digest_of_pushed(&dev, &fourth), v2);
    dev.drain_quiet(QUIET);
    let errors: Vec<_> = dev.seen[since..].iter().filter(|e| e["event"] == "error").collect();
    assert!(errors.is_empty(), "said once, not at every build: {errors:#?}");
}

/// With `--platform all` the platforms come from the base. When `kodev dev` looks the base's
/// tag up again, go starts at once on the platforms of the base the session has, beside the
/// lookup: a registry that does not answer delays the push, not the compile. A tag that moved
/// to an index of more platforms is built again for all of them.
#[test]
fn with_every_platform_of_the_base_go_starts_beside_the_base_lookup() {
    if !require_tools(&["docker-registry", "go", "umoci", "skopeo"]) {
        return;
    }
    let bases = Registry::start();
    let layouts = tempfile::tempdir().unwrap();
    let layout = layouts.path().join("layout");
    umoci_image(&layout, "amd64-only", "amd64");
    umoci_image(&layout, "arm64", "arm64");
    make_index(&layout, &[("amd64-only", "amd64"), ("arm64", "arm64")], "both");
    let base = format!("{}/base/growing:latest", bases.host);
    skopeo_push(&layout, "amd64-only", &base, false, false);

    let skaffold = format!(
        "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: alpha\n      ko:\n        main: ./cmd/alpha\n        fromImage: {base}\n"
    );
    let prepare = |dir: &Path| std::fs::write(dir.join("skaffold.yaml"), &skaffold).unwrap();
    let mut dev = DevSession::launch_on(Registry::start(), &["--platform", "all"], prepare, None, &[], Some("dev"));
    let first = dev.wait_for("the first build", |e| e["event"] == "pushed");
    dev.wait_for("watching", |e| e["event"] == "watching");
    let pushed_manifest = |dev: &DevSession, pushed: &Value| {
        let reference = format!("docker://{}/dev/alpha@{}", dev._registry.host, pushed["digest"].as_str().unwrap());
        skopeo_inspect(&reference, true, false)
    };
    assert!(pushed_manifest(&dev, &first)["manifests"].is_null(), "one platform: a plain image");

    // The tag moves to an index of two platforms: the next build makes both.
    skopeo_push(&layout, "both", &base, false, true);
    let since = dev.seen.len();
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha on two platforms\"");
    let second =
        dev.wait_for("the build after the base grew", |e| e["event"] == "pushed" || e["event"] == "build_failed");
    assert_eq!(second["event"], "pushed", "{:#?}", &dev.seen[since..]);
    let index = pushed_manifest(&dev, &second);
    let platforms: Vec<&str> = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    dev.drain_quiet(QUIET);

    // The base's registry takes connections and never answers: go still starts at once.
    let host = bases.host.clone();
    drop(bases);
    let _silent = std::net::TcpListener::bind(&host).expect("listen where the base's registry was");
    let since = dev.seen.len();
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha on two platforms\"", "\"alpha, registry silent\"");
    let third = dev
        .wait_for("the build with a silent base registry", |e| e["event"] == "pushed" || e["event"] == "build_failed");
    let events = &dev.seen[since..];
    assert_eq!(third["event"], "pushed", "{events:#?}");
    let position = |wanted: &dyn Fn(&Value) -> bool| events.iter().position(wanted);
    let gave_up = position(&|e| e["event"] == "error").expect("the lookup's failure is said");
    assert!(events[gave_up]["message"].as_str().unwrap().contains("no answer"), "{events:#?}");
    for platform in ["linux/amd64", "linux/arm64"] {
        let compiled = position(&|e| e["event"] == "compiled" && e["platform"] == platform)
            .unwrap_or_else(|| panic!("{platform} compiled: {events:#?}"));
        assert!(compiled < gave_up, "go waited for the base's registry ({platform}): {events:#?}");
    }
}

/// Compiler and linker processes (of any build) whose parent is no longer a `go` process.
fn orphaned_go_tools() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !(cmdline.contains("/compile ") || cmdline.contains("/link ")) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat.rsplit(')').next().unwrap_or("").split_whitespace().nth(1).unwrap_or("0").to_string();
        let parent = std::fs::read(format!("/proc/{ppid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if !parent.contains(" build ") {
            found.push(format!("{} (parent {ppid}: {parent})", cmdline.chars().take(120).collect::<String>()));
        }
    }
    found
}

/// Processes of a `go build` for `marker`: `go` itself and the compilers and linker it runs.
fn go_build_processes(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let is_build = cmdline.contains(" build ") || cmdline.contains("/compile ") || cmdline.contains("/link ");
            if is_build && cmdline.contains(marker) {
                found.push(cmdline.chars().take(200).collect());
            }
        }
    }
    found
}

/// Make alpha's builds slow (`-a` rebuilds every package: long enough to interrupt) and wait
/// until one starts.
fn start_a_slow_alpha_build(dev: &mut DevSession) {
    edit(&dev.path("skaffold.yaml"), "main: ./cmd/alpha\n", "main: ./cmd/alpha\n        flags: [\"-a\"]\n");
    dev.wait_for("config_reloaded", |e| e["event"] == "config_reloaded");
    dev.wait_for("slow build started", |e| e["event"] == "build_started" && e["artifact"] == "alpha");
}

#[test]
fn a_change_during_a_build_kills_go_and_starts_again() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start(&["-b", "alpha"], &["alpha"]);
    start_a_slow_alpha_build(&mut dev);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!go_build_processes(&dev.build_marker).is_empty(), "go build is running");
    let before = dev.seen.len();
    edit(&dev.path("cmd/alpha/main.go"), "\"alpha\"", "\"alpha again\"");
    dev.wait_for("build_cancelled", |e| e["event"] == "build_cancelled" && e["artifact"] == "alpha");
    // The cancelled go's compilers and linker die with it: none is left without its go parent.
    std::thread::sleep(Duration::from_millis(100));
    let orphans = orphaned_go_tools();
    assert!(orphans.is_empty(), "compilers outlived their cancelled go build: {orphans:#?}");
    dev.wait_for("restarted", |e| e["event"] == "build_started" && e["artifact"] == "alpha");
    let pushed = dev.wait_for("pushed", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    assert!(pushed["digest"].as_str().is_some());
    let cancelled_pushes = dev.seen[before..].iter().filter(|e| e["event"] == "pushed").count();
    assert_eq!(cancelled_pushes, 1, "the cancelled build never pushes");
    std::thread::sleep(Duration::from_millis(300));
    let left = go_build_processes(&dev.build_marker);
    assert!(left.is_empty(), "no go build left behind: {left:#?}");
    // Nor its scratch space: each go build's GOTMPDIR goes with it, killed or not.
    let scratch: Vec<_> = std::fs::read_dir(Path::new(&dev.build_marker).join("tmp/go"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "go work directories left behind: {scratch:#?}");
}

/// Whether every `build_cancelled` of `artifact` in `events` ends a build that said it started.
fn cancellations_without_a_start(events: &[Value], artifact: &str) -> Vec<String> {
    let mut building = false;
    let mut odd = Vec::new();
    for event in events.iter().filter(|e| e["artifact"] == artifact) {
        match event["event"].as_str().unwrap_or_default() {
            "build_started" => building = true,
            "pushed" | "build_failed" => building = false,
            "build_cancelled" => {
                if !building {
                    odd.push(event.to_string());
                }
                building = false;
            }
            _ => {}
        }
    }
    odd
}

#[test]
fn a_build_waiting_for_its_turn_is_dropped_without_a_cancellation() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    // One build at a time (Skaffold's default): while alpha's slow build runs, beta's waits.
    let mut dev = DevSession::start_with(&[], &["alpha", "beta"], |dir| {
        edit(&dir.join("skaffold.yaml"), "concurrency: 0", "concurrency: 1");
    });
    start_a_slow_alpha_build(&mut dev);
    let alpha_started = dev.seen.len();
    edit(&dev.path("cmd/beta/main.go"), "\"beta\"", "\"beta again\"");
    std::thread::sleep(Duration::from_millis(500));
    edit(&dev.path("cmd/beta/main.go"), "\"beta again\"", "\"beta once more\"");
    std::thread::sleep(Duration::from_millis(500));
    dev.drain_quiet(Duration::from_millis(50));
    let alpha_done = dev.seen[alpha_started..].iter().any(|e| e["artifact"] == "alpha" && e["event"] == "pushed");
    assert!(!alpha_done, "alpha still builds while beta's builds wait: {:#?}", &dev.seen[alpha_started..]);
    assert!(
        !dev.seen[alpha_started..].iter().any(|e| e["artifact"] == "beta" && e["event"] == "build_started"),
        "beta waits for its turn"
    );
    dev.wait_for("alpha pushed", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    dev.wait_for("beta pushed", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    let odd = cancellations_without_a_start(&dev.seen, "beta");
    assert!(odd.is_empty(), "beta's waiting build never started, so no cancellation is said: {odd:#?}");
    let beta_builds =
        dev.seen[alpha_started..].iter().filter(|e| e["artifact"] == "beta" && e["event"] == "build_started").count();
    assert_eq!(beta_builds, 1, "one build of beta once its turn came: {:#?}", &dev.seen[alpha_started..]);
}

#[test]
fn a_broken_go_mod_at_start_still_rebuilds_once_fixed() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start_with(&["-b", "alpha"], &[], |dir| {
        let go_mod = dir.join("go.mod");
        let text = std::fs::read_to_string(&go_mod).unwrap();
        std::fs::write(&go_mod, format!("{text}\nbogus directive here\n")).unwrap();
    });
    assert!(dev.seen.iter().any(|e| e["event"] == "error"), "the unreadable graph is reported: {:#?}", dev.seen);
    assert!(dev.seen.iter().any(|e| e["event"] == "build_failed"), "{:#?}", dev.seen);
    let go_mod = dev.path("go.mod");
    let text = std::fs::read_to_string(&go_mod).unwrap();
    std::fs::write(&go_mod, text.replace("bogus directive here\n", "")).unwrap();
    dev.wait_for("pushed once go.mod is fixed", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
    // The precise graph is back: a file outside it no longer rebuilds.
    dev.drain_quiet(QUIET);
    std::fs::write(dev.path("README.md"), "changed\n").unwrap();
    std::fs::write(
        dev.path("cmd/beta/main.go"),
        std::fs::read_to_string(dev.path("cmd/beta/main.go")).unwrap() + "\n// beta only\n",
    )
    .unwrap();
    let after = dev.drain_quiet(QUIET);
    assert!(after.iter().all(|e| e["event"] != "build_started"), "{after:#?}");
}

#[test]
fn sigterm_during_a_build_quits_and_leaves_no_go_behind() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start(&["-b", "alpha"], &["alpha"]);
    start_a_slow_alpha_build(&mut dev);
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(dev.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM must end kodev dev");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    let left = go_build_processes(&dev.build_marker);
    assert!(left.is_empty(), "go builds outlived kodev: {left:#?}");
    assert!(orphaned_go_tools().is_empty());
}

#[test]
fn watch_image_limits_rebuilds_to_the_named_artifacts() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let mut dev = DevSession::start(&["-w", "beta"], &["alpha", "beta"]);
    let mark = dev.seen.len();
    edit(&dev.path("internal/shared/shared.go"), "\"hello, \"", "\"hey, \"");
    dev.wait_for("beta pushed", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    dev.drain_quiet(QUIET);
    let since = &dev.seen[mark..];
    assert_eq!(count(since, "build_started", "alpha"), 0, "alpha is not watched: {since:#?}");
    // A rebuild asked for by name still works for an unwatched artifact.
    dev.send("r alpha");
    dev.wait_for("alpha pushed on request", |e| e["event"] == "pushed" && e["artifact"] == "alpha");
}

#[test]
fn a_new_import_joins_the_graph_and_body_edits_do_not_read_it_again() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kodev.log");
    let graph_reads = || std::fs::read_to_string(&log).unwrap().matches("package graph read image=beta").count();
    let mut dev = DevSession::start_logged(&[], &["alpha", "beta"], &log);

    // A package nothing imports yet: nothing to build.
    std::fs::create_dir_all(dev.path("internal/extra")).unwrap();
    let extra = dev.path("internal/extra/extra.go");
    std::fs::write(&extra, "package extra\n\n// Word is said by beta.\nfunc Word() string { return \"extra\" }\n")
        .unwrap();
    let after = dev.drain_quiet(QUIET);
    assert!(after.iter().all(|e| e["event"] != "build_started"), "{after:#?}");

    // beta imports it: beta rebuilds and reads its graph again, which now has the package.
    let main = dev.path("cmd/beta/main.go");
    edit(&main, "\"fmt\"\n", "\"fmt\"\n\n\t\"example.com/mono/internal/extra\"\n");
    edit(&main, "shared.Greeting(\"beta\")", "shared.Greeting(\"beta\"), extra.Word()");
    dev.wait_for("beta pushed with the import", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    dev.drain_quiet(QUIET);
    let reads = graph_reads();
    let mark = dev.seen.len();
    edit(&extra, "\"extra\"", "\"more\"");
    dev.wait_for("beta pushed after its new package changed", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    dev.drain_quiet(QUIET);
    assert_eq!(count(&dev.seen[mark..], "build_started", "alpha"), 0, "alpha does not import it");

    // Edits inside function bodies cannot change the graph: it is not read again for them.
    edit(&main, "extra.Word()", "extra.Word(), \"!\"");
    dev.wait_for("beta pushed after a body edit", |e| e["event"] == "pushed" && e["artifact"] == "beta");
    dev.drain_quiet(QUIET);
    assert_eq!(graph_reads(), reads + 1, "read again only for the new package's first edit");
}

/// go's flags for the relinking test: stamp the git state even where the machine's go
/// configuration turns that off.
const STAMP_GIT: &str = "-buildvcs=true";

/// The image go makes of `dir` as it is now (a one-shot `kodev build` that does not relink, in
/// a cache of its own): `alpha`'s digest.
fn one_shot_alpha_digest(dir: &Path, host: &str) -> String {
    one_shot_alpha_digest_with(dir, host, &[])
}

fn one_shot_alpha_digest_with(dir: &Path, host: &str, env: &[(&str, &Path)]) -> String {
    let cache = tempfile::tempdir().unwrap();
    let mut go_only = kodev();
    go_only.env("KODEV_CACHE_DIR", cache.path()).env("GOFLAGS", STAMP_GIT).env("KODEV_RELINK", "0");
    go_only.envs(env.iter().copied());
    // go as it runs by default (kodev turns its async preemption off otherwise).
    go_only.env("GODEBUG", "asyncpreemptoff=0");
    let out =
        run(go_only.current_dir(dir).args(["build", "-b", "alpha", "-d", &format!("{host}/check"), "-t", "check"]));
    assert!(out.status.success(), "kodev build: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let reference = stdout.lines().find(|l| l.contains("/alpha")).unwrap_or_else(|| panic!("alpha in {stdout}"));
    reference.rsplit_once('@').expect("a digest").1.trim().to_string()
}

/// alpha's digest from go alone, with a go build cache of its own: what kodev put in go's cache
/// must be go's bytes, not only go's names.
fn alpha_digest_from_empty_go_cache(dir: &Path, host: &str) -> String {
    let go_cache = tempfile::tempdir().unwrap();
    one_shot_alpha_digest_with(dir, host, &[("GOCACHE", go_cache.path())])
}

/// One edit of alpha: how its binary was built, and the digest pushed.
fn alpha_rebuilt(dev: &mut DevSession, what: &str) -> (bool, String) {
    let mark = dev.seen.len();
    let pushed =
        dev.wait_for(what, |e| (e["event"] == "pushed" || e["event"] == "build_failed") && e["artifact"] == "alpha");
    assert_eq!(pushed["event"], "pushed", "{what}: {pushed}");
    let compiled = dev.seen[mark..].iter().find(|e| e["event"] == "compiled" && e["artifact"] == "alpha").cloned();
    let relinked = compiled.unwrap_or_else(|| panic!("{what}: no compiled event"))["relinked"] == true;
    if relinked {
        let checked = dev.wait_for("go's check of the relinked binary", |e| {
            e["event"] == "relink_checked" && e["artifact"] == "alpha"
        });
        assert_eq!(checked["same_as_go"], true, "{what}: go agrees with the relinked binary");
    }
    (relinked, pushed["digest"].as_str().unwrap().to_string())
}

/// A session on the fixture after `change`, started once go alone had built alpha from those
/// sources (pushing to `host`): its first build runs go, which compiles nothing. Returns once
/// the recipe recorded in the background is kept.
fn session_after_go_built(extra: &[&str], change: impl FnOnce(&Path), log: Option<&Path>, host: &str) -> DevSession {
    let prepare = |dir: &Path| {
        change(dir);
        one_shot_alpha_digest(dir, host);
    };
    let mut dev = DevSession::start_full(extra, &["alpha"], prepare, log, &[("GOFLAGS", STAMP_GIT)]);
    let first = dev.seen.iter().find(|e| e["event"] == "compiled" && e["artifact"] == "alpha").cloned();
    assert_eq!(first.expect("alpha compiled")["relinked"], false, "the session's first build runs go");
    // Only the background build says this: a go build that compiles the main package records
    // its recipe without a word.
    dev.wait_for("alpha's recipe recorded in the background", |e| {
        e["event"] == "relink_ready" && e["artifact"] == "alpha"
    });
    dev
}

/// A user who built the project with go (or ko) before: go finds the main package in its
/// cache, prints no compile, and kodev has no recipe. The session records one in the
/// background, so the very first edit is relinked.
#[test]
fn the_first_edit_relinks_when_go_had_built_the_sources_before() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let check_registry = Registry::start();
    let host = check_registry.host.clone();
    // Sources no other test builds, compiled once by go before the session starts.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let unique = format!("alpha {nanos}");
    let change = |dir: &Path| edit(&dir.join("cmd/alpha/main.go"), "\"alpha\"", &format!("\"{unique}\""));
    let mut dev = session_after_go_built(&[], change, None, &host);
    edit(&dev.path("cmd/alpha/main.go"), &unique, &format!("{unique}, edited"));
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after the first edit");
    assert!(relinked, "the first edit is relinked without go: {:#?}", dev.seen);
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host), "the relinked image is go's");
}

#[test]
fn main_package_edits_relink_without_go_and_give_go_builds_image() {
    if !require_tools(&["docker-registry", "go", "git"]) {
        return;
    }
    // In a git work tree, as most projects are: go stamps the revision and whether the tree
    // was modified into the binary, and the relinked binary must carry the same stamp.
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kodev.log");
    let mut dev = DevSession::start_full(&[], &["alpha"], into_git, Some(&log), &[("GOFLAGS", STAMP_GIT)]);
    let host = dev._registry.host.clone();
    let main = dev.path("cmd/alpha/main.go");
    let uncaptured = || std::fs::read_to_string(&log).unwrap().matches("go builds without capturing").count();

    // The first edit runs go (the tree was clean: go's recipe then stamped it unmodified).
    edit(&main, "\"alpha\"", "\"alpha 1\"");
    let (relinked, _) = alpha_rebuilt(&mut dev, "alpha after the first edit");
    assert!(!relinked, "the first edit after a clean tree goes through go");

    // An edit of the main package alone is relinked, and is go's image to the byte.
    edit(&main, "\"alpha 1\"", "\"alpha, relinked\"");
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a main-only edit");
    let log_text = || std::fs::read_to_string(&log).unwrap();
    assert!(relinked, "a main-only edit is relinked without go: {:#?}\n{}", dev.seen, log_text());
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host), "the same image as go build's");

    // A new import in a package main imports goes through go, with the right result. go runs
    // as the user would, without printing what kodev records a recipe from (that slows it
    // down), and the recipe is recorded in the background once the image is pushed, with the
    // compile of the package go compiled again.
    assert_eq!(uncaptured(), 0, "{}", std::fs::read_to_string(&log).unwrap());
    let shared = dev.path("internal/shared/shared.go");
    let source = std::fs::read_to_string(&shared).unwrap();
    let source = source.replace("package shared\n", "package shared\n\nimport \"strings\"\n");
    // One write, one build.
    std::fs::write(&shared, source.replace("\"hello, \" + who", "\"hello, \" + strings.TrimSpace(who)")).unwrap();
    let mark = dev.seen.len();
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a new import in a shared package");
    assert!(!relinked, "a new import in a dependency runs go");
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host));
    assert_eq!(uncaptured(), 1, "go built without capturing: {}", std::fs::read_to_string(&log).unwrap());
    let ready = |e: &Value| e["event"] == "relink_ready" && e["artifact"] == "alpha";
    if !dev.seen[mark..].iter().any(ready) {
        dev.wait_for("alpha's recipe recorded after the push", ready);
    }

    // An edit inside the shared package is then rebuilt without go: kodev compiles the package
    // and main with go's recorded commands and keeps them in go's cache, where go's check
    // (`relink_checked`, in `alpha_rebuilt`) finds them.
    // (Sources no earlier run put in go's cache: kodev must compile them.)
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    edit(&shared, "\"hello, \"", &format!("\"hi {nanos}, \""));
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a shared package's edit");
    assert!(relinked, "a dependency's edit is rebuilt without go: {:#?}", dev.seen);
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host), "go's image, byte for byte");
    assert_eq!(uncaptured(), 1, "{}", std::fs::read_to_string(&log).unwrap());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("package compiled package=\"example.com/mono/internal/shared\""), "{log_text}");
    // The next main-only edit relinks again (go's run for alpha, or beta's, compiled the
    // dependency; a recipe names it where go's cache keeps it, see tests/build.rs).
    edit(&main, "\"alpha, relinked\"", "\"alpha, relinked again\"");
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a main-only edit after a dependency's");
    assert!(relinked, "relinked after a dependency's edit: {:#?}", dev.seen);
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host));
    edit(&main, "\"alpha, relinked again\"", "\"alpha, relinked\"");
    let (relinked, _) = alpha_rebuilt(&mut dev, "alpha edited back");
    assert!(relinked, "edited back, and relinked: {:#?}", dev.seen);

    // So does a new import in main (the package graph changes)…
    edit(&main, "\"fmt\"\n", "\"fmt\"\n\t\"os\"\n");
    edit(&main, "\"alpha, relinked\"", "\"alpha\" + os.Getenv(\"X\")");
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a new import");
    assert!(!relinked, "a new import runs go");
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host));

    // …and a new file in main's directory, which joins the package.
    std::fs::write(dev.path("cmd/alpha/extra.go"), "package main\n\nvar extra = \"x\"\n").unwrap();
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a new file");
    assert!(!relinked, "a new file runs go");
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host));

    // A compile error while relinking is reported by go, as always.
    edit(&main, "func main() {", "func main() { undefinedName()");
    let failed = dev.wait_for("alpha's compile error", |e| e["event"] == "build_failed" && e["artifact"] == "alpha");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("main.go") && error.contains("undefinedName"), "go's own error: {error}");

    // Fixed: a mistake in the edit does not change what go would do, so the recipe still holds.
    // (Fixed into new sources: back to the last build's, the binary would simply be up to date.)
    edit(&main, "func main() { undefinedName()", "func main() { _ = len(os.Args)");
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha fixed");
    assert!(relinked, "the fix is relinked");
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host));
    edit(&main, "os.Getenv(\"X\")", "os.Getenv(\"Y\")");
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after another main-only edit");
    assert!(relinked, "main-only edits go on relinking");
    assert_eq!(digest, one_shot_alpha_digest(dev.dir.path(), &host));
}

/// A one-shot `kodev build` of alpha with its own kodev cache and the debug log: the digest
/// pushed, and the log.
fn one_shot_alpha_logged(dir: &Path, cache: &Path, host: &str, tag: &str) -> (String, String) {
    let out = run(kodev()
        .env("KODEV_CACHE_DIR", cache)
        .env("KODEV_LOG", "kodev=debug")
        .env("GOFLAGS", STAMP_GIT)
        .current_dir(dir)
        .args(["build", "-b", "alpha", "-d", &format!("{host}/one"), "-t", tag]));
    assert!(out.status.success(), "kodev build: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (stdout.rsplit_once('@').expect("a digest").1.trim().to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// A registry, a copy of the two-main fixture, and a number no earlier run used (for edits that
/// go's cache cannot already hold).
fn monorepo_copy() -> (Registry, tempfile::TempDir, u128) {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/monorepo"), dir.path());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    (registry, dir, nanos)
}

/// One-shot builds have no background recording. When a package main imports itself is edited
/// and no build recorded its compile (go had it in its cache), the go build that follows
/// captures, so the next edit of that package is rebuilt without go (before, every such
/// one-shot build ran go, and the one after it too).
#[test]
fn one_shot_builds_record_an_imported_packages_compile_for_its_next_edit() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let (registry, dir, nanos) = monorepo_copy();
    let shared = dir.path().join("internal/shared/shared.go");
    let main = dir.path().join("cmd/alpha/main.go");
    edit(&shared, "\"hello, \"", &format!("\"hello {nanos}, \""));
    // go alone first: the shared package is in go's cache, so kodev's first build (which
    // compiles only main, edited next) records no compile of it.
    one_shot_alpha_digest(dir.path(), &registry.host);
    edit(&main, "shared.Greeting(\"alpha\")", &format!("shared.Greeting(\"alpha {nanos}\")"));
    let cache = tempfile::tempdir().unwrap();
    let build = |tag: &str| one_shot_alpha_logged(dir.path(), cache.path(), &registry.host, tag);
    let (_, first) = build("a");
    assert!(first.contains("go build done") && first.contains("recipe for relinking captured"), "{first}");

    edit(&shared, &format!("\"hello {nanos}, \""), &format!("\"hey {nanos}, \""));
    let (digest, second) = build("b");
    assert!(second.contains("go builds, capturing") && second.contains("recipe for relinking captured"), "{second}");
    assert_eq!(digest, one_shot_alpha_digest(dir.path(), &registry.host), "go's image");

    edit(&shared, &format!("\"hey {nanos}, \""), &format!("\"hi {nanos}, \""));
    let (digest, third) = build("c");
    assert!(third.contains("relinked without the go command"), "{third}");
    assert!(third.contains("package compiled package=\"example.com/mono/internal/shared\""), "{third}");
    assert_eq!(digest, alpha_digest_from_empty_go_cache(dir.path(), &registry.host), "go's image from nothing");
}

/// A package `internal/deep` behind the shared one, whose function returns `"deep {nanos}"`. It
/// is not inlined: the shared package's archive does not change with its body, so after an
/// edit of it go takes main from its cache. Returns its file.
fn add_deep_package(dir: &Path, nanos: u128) -> PathBuf {
    let deep = dir.join("internal/deep/deep.go");
    std::fs::create_dir_all(deep.parent().unwrap()).unwrap();
    std::fs::write(&deep, format!("package deep\n\n//go:noinline\nfunc Word() string {{ return \"deep {nanos}\" }}\n"))
        .unwrap();
    let shared = dir.join("internal/shared/shared.go");
    edit(&shared, "package shared\n", "package shared\n\nimport \"example.com/mono/internal/deep\"\n");
    edit(&shared, "\"hello, \" + who", "\"hello, \" + who + deep.Word()");
    deep
}

/// The same when the edited package is deeper and the edit leaves main's inputs as they were
/// (the package between it and main compiles to the same archive), so go takes main from its
/// cache: main's compile comes from the recipe the edit made stale. Edits of main and of the
/// deep package are then rebuilt without go, and give go's images from an empty go build cache.
#[test]
fn one_shot_builds_record_a_deeper_packages_compile_when_go_takes_main_from_its_cache() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let (registry, dir, nanos) = monorepo_copy();
    let deep = add_deep_package(dir.path(), nanos);
    let main = dir.path().join("cmd/alpha/main.go");
    // go alone first, so that kodev's first build (of an edit of main) records no compile of
    // the other packages.
    one_shot_alpha_digest(dir.path(), &registry.host);
    edit(&main, "shared.Greeting(\"alpha\")", &format!("shared.Greeting(\"alpha {nanos}\")"));
    let cache = tempfile::tempdir().unwrap();
    let build = |tag: &str| one_shot_alpha_logged(dir.path(), cache.path(), &registry.host, tag);
    let (_, first) = build("a");
    assert!(first.contains("recipe for relinking captured"), "{first}");
    let fresh = |what: &str, digest: &str| {
        assert_eq!(
            digest,
            alpha_digest_from_empty_go_cache(dir.path(), &registry.host),
            "{what}: go's image from nothing"
        );
    };

    edit(&deep, &format!("\"deep {nanos}\""), &format!("\"deeper {nanos}\""));
    let (digest, second) = build("b");
    assert!(second.contains("go builds, capturing") && second.contains("recipe for relinking captured"), "{second}");
    fresh("the deep edit go built", &digest);

    // main's compile, from the stale recipe, with the archives this build's link read.
    edit(&main, &format!("\"alpha {nanos}\""), &format!("\"alpha again {nanos}\""));
    let (digest, third) = build("c");
    assert!(third.contains("relinked without the go command"), "{third}");
    fresh("an edit of main after it", &digest);

    edit(&deep, &format!("\"deeper {nanos}\""), &format!("\"deepest {nanos}\""));
    let (digest, fourth) = build("d");
    assert!(fourth.contains("relinked without the go command"), "{fourth}");
    assert!(fourth.contains("package compiled package=\"example.com/mono/internal/deep\""), "{fourth}");
    fresh("the next deep edit", &digest);
}

/// A one-shot build with no recipe at all, of sources whose main go has in its cache, after an
/// edit of a deeper package: nothing can give main's compile, so kodev removes main's entry
/// from go's cache. The next build's go compiles main again and is recorded, and the edit after
/// it is rebuilt without go (before, every such build ran go, and none was ever recorded).
#[test]
fn one_shot_builds_without_a_recipe_get_one_when_go_had_main_in_its_cache() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let (registry, dir, nanos) = monorepo_copy();
    let deep = add_deep_package(dir.path(), nanos);
    one_shot_alpha_digest(dir.path(), &registry.host);
    let cache = tempfile::tempdir().unwrap();
    let build = |tag: &str| one_shot_alpha_logged(dir.path(), cache.path(), &registry.host, tag);
    edit(&deep, &format!("\"deep {nanos}\""), &format!("\"deeper {nanos}\""));
    let (_, first) = build("a");
    assert!(first.contains("main's entry removed from go's cache"), "{first}");
    edit(&deep, &format!("\"deeper {nanos}\""), &format!("\"deepest {nanos}\""));
    let (digest, second) = build("b");
    assert!(second.contains("go build done") && second.contains("recipe for relinking captured"), "{second}");
    assert_eq!(
        digest,
        alpha_digest_from_empty_go_cache(dir.path(), &registry.host),
        "go compiled main again: go's image"
    );
    edit(&deep, &format!("\"deepest {nanos}\""), &format!("\"deep again {nanos}\""));
    let (digest, third) = build("c");
    assert!(third.contains("relinked without the go command"), "{third}");
    assert_eq!(digest, alpha_digest_from_empty_go_cache(dir.path(), &registry.host), "go's image from nothing");
}

/// A one-shot `kodev build` after an edit of a package main imports compiles that package and
/// main itself with go's recorded commands, once a build recorded the package's compile, and
/// makes the image go makes from nothing (a go build cache of its own: what kodev kept in go's
/// cache must be go's bytes, not only go's names).
#[test]
fn one_shot_builds_rebuild_an_imported_packages_edit_without_go() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/monorepo"), dir.path());
    // Sources go has not compiled: the first build compiles the shared package and records it.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let shared = dir.path().join("internal/shared/shared.go");
    edit(&shared, "\"hello, \"", &format!("\"hello {nanos}, \""));
    let cache = tempfile::tempdir().unwrap();
    let build = |tag: &str| one_shot_alpha_logged(dir.path(), cache.path(), &registry.host, tag);
    let (_, first) = build("a");
    assert!(first.contains("go build done"), "{first}");
    edit(&shared, &format!("\"hello {nanos}, \""), &format!("\"hi {nanos}, \""));
    let (digest, second) = build("b");
    assert!(second.contains("relinked without the go command"), "{second}");
    assert!(second.contains("package compiled package=\"example.com/mono/internal/shared\""), "{second}");
    assert_eq!(digest, alpha_digest_from_empty_go_cache(dir.path(), &registry.host), "go's image from nothing");
}

/// `add_deep_package`, with main importing the deep package itself as well. Returns its file.
fn add_deep_package_main_imports_too(dir: &Path, nanos: u128) -> PathBuf {
    let deep = add_deep_package(dir, nanos);
    let main = dir.join("cmd/alpha/main.go");
    edit(&main, "\"fmt\"\n", "\"fmt\"\n\n\t\"example.com/mono/internal/deep\"\n");
    edit(&main, "shared.Greeting(\"alpha\")", "shared.Greeting(\"alpha\"), deep.Word()");
    deep
}

/// go compiles again every package that imports an edited one, even when the edit leaves what
/// the package exports as it was (a body the compiler does not inline): the importers'
/// archives come out the same but for their build IDs. kodev compiles only the edited package
/// and, seeing its export data unchanged, takes its importers (here the shared package and
/// main, which both import it) from their earlier compiles. The image is go's from an empty go
/// build cache, and go's own check finds everything where it would have put it.
#[test]
fn importers_of_a_package_that_exports_the_same_are_not_compiled_again() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kodev.log");
    // alpha alone: beside it, beta's go build could compile the shared packages first, and
    // alpha's recipe would then hold no compile of them.
    let mut dev = DevSession::start_full(
        &["-b", "alpha"],
        &["alpha"],
        |dir| {
            add_deep_package_main_imports_too(dir, nanos);
        },
        Some(&log),
        &[],
    );
    let host = dev._registry.host.clone();
    let deep = dev.path("internal/deep/deep.go");
    let from_nothing = |dev: &DevSession, what: &str, digest: &str| {
        assert_eq!(digest, alpha_digest_from_empty_go_cache(dev.dir.path(), &host), "{what}: go's image from nothing");
    };
    let log_since = |from: usize| std::fs::read_to_string(&log).unwrap()[from..].to_string();

    for (round, (from, to)) in [("deep", "deeper"), ("deeper", "deepest")].into_iter().enumerate() {
        let mark = std::fs::read_to_string(&log).unwrap().len();
        edit(&deep, &format!("\"{from} {nanos}\""), &format!("\"{to} {nanos}\""));
        let (relinked, digest) = alpha_rebuilt(&mut dev, &format!("alpha after deep edit {round}"));
        assert!(relinked, "edit {round} rebuilt without go: {:#?}", dev.seen);
        let text = log_since(mark);
        assert!(text.contains("package compiled package=\"example.com/mono/internal/deep\""), "{text}");
        assert!(!text.contains("package compiled package=\"example.com/mono/internal/shared\""), "{text}");
        assert!(
            text.contains("package taken from its earlier compile: what it imports exports the same package=\"example.com/mono/internal/shared\""),
            "{text}"
        );
        assert!(text.contains("main package ready") && text.contains("from=\"its earlier compile"), "{text}");
        from_nothing(&dev, &format!("deep edit {round}"), &digest);
    }

    // An edit that changes what the package exports (a new exported function) compiles its
    // importers again.
    let mark = std::fs::read_to_string(&log).unwrap().len();
    let source = std::fs::read_to_string(&deep).unwrap();
    std::fs::write(&deep, format!("{source}\nfunc Extra() int {{ return 7 }}\n")).unwrap();
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after a new exported function");
    assert!(relinked, "{:#?}", dev.seen);
    let text = log_since(mark);
    assert!(text.contains("package compiled package=\"example.com/mono/internal/shared\""), "{text}");
    assert!(!text.contains("taken from its earlier compile"), "{text}");
    from_nothing(&dev, "a new exported function", &digest);
}

/// A user who built the project with go before: the session's first go build compiles
/// nothing, and the recipe recorded in the background holds no compile of the packages main
/// imports. A `go build -a -n` after it prints the compile go would run for each, and the
/// recipe records them: the very first edit of such a package is rebuilt without go (before,
/// it ran go, which recorded the compile for the next edit), and the image is go's from an
/// empty go build cache.
#[test]
fn the_first_edit_of_an_imported_package_is_rebuilt_without_go_when_go_had_built_it_before() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let check_registry = Registry::start();
    let host = check_registry.host.clone();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kodev.log");
    let change = |dir: &Path| {
        add_deep_package_main_imports_too(dir, nanos);
    };
    let mut dev = session_after_go_built(&["-b", "alpha"], change, Some(&log), &host);
    let deadline = Instant::now() + BUILD_DEADLINE;
    let recorded = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(at) = text.find("package compiles recorded from go build -a -n") {
            break text[at..].lines().next().unwrap().to_string();
        }
        assert!(!text.contains("no package compiles recorded"), "{text}");
        assert!(Instant::now() < deadline, "no compiles recorded: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // deep and shared, the two packages main imports from the module.
    assert!(recorded.contains("count=2"), "{recorded}");

    let deep = dev.path("internal/deep/deep.go");
    let mark = std::fs::read_to_string(&log).unwrap().len();
    edit(&deep, &format!("\"deep {nanos}\""), &format!("\"deeper {nanos}\""));
    let (relinked, digest) = alpha_rebuilt(&mut dev, "alpha after the first edit of the deep package");
    assert!(relinked, "the first edit of an imported package is rebuilt without go: {:#?}", dev.seen);
    let text = std::fs::read_to_string(&log).unwrap()[mark..].to_string();
    assert!(text.contains("package compiled package=\"example.com/mono/internal/deep\""), "{text}");
    assert_eq!(digest, alpha_digest_from_empty_go_cache(dev.dir.path(), &host), "go's image from nothing");
}

/// The same for one-shot builds: after an edit of the deep package only it is compiled, the
/// image is go's from an empty go build cache, and the next build with nothing changed sees
/// the binary up to date without go (its check works out the importers' build IDs the same way).
#[test]
fn one_shot_builds_take_importers_that_export_the_same_from_their_earlier_compile() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    let (registry, dir, nanos) = monorepo_copy();
    let deep = add_deep_package_main_imports_too(dir.path(), nanos);
    let cache = tempfile::tempdir().unwrap();
    let build = |tag: &str| one_shot_alpha_logged(dir.path(), cache.path(), &registry.host, tag);
    let (_, first) = build("a");
    assert!(first.contains("go build done") && first.contains("recipe for relinking captured"), "{first}");

    edit(&deep, &format!("\"deep {nanos}\""), &format!("\"deeper {nanos}\""));
    let (digest, second) = build("b");
    assert!(second.contains("relinked without the go command"), "{second}");
    assert!(second.contains("package compiled package=\"example.com/mono/internal/deep\""), "{second}");
    assert!(!second.contains("package compiled package=\"example.com/mono/internal/shared\""), "{second}");
    assert!(second.contains("from=\"its earlier compile"), "{second}");
    assert_eq!(digest, alpha_digest_from_empty_go_cache(dir.path(), &registry.host), "go's image from nothing");

    let (unchanged, third) = build("c");
    assert!(third.contains("the binary is up to date") && !third.contains("relinked"), "{third}");
    assert_eq!(unchanged, digest);
}
