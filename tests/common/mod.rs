//! Shared harness for integration tests: a real `docker-registry` on a free loopback port,
//! base images made by umoci + skopeo, podman configured for this sandbox, and the kodev binary.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Fails under CI=true when a tool is missing; elsewhere the test says loudly that it skips.
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| which(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("required tools missing under CI: {missing:?} (the README's test command installs them)");
    }
    eprintln!("SKIPPING: tools missing: {missing:?}; run the README's test command to install them");
    false
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin"), PathBuf::from("/usr/local/go/bin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

/// A real registry for one test, stopped on drop.
pub struct Registry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with_auth(None)
    }

    /// A registry that demands HTTP basic credentials (an htpasswd file with one user).
    pub fn start_with_auth(credentials: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            let mut text = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            if let Some((user, password)) = credentials {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).expect("write htpasswd");
                text.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kodev-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            std::fs::write(&config, text).expect("write registry config");
            let mut child = Command::new(which("docker-registry").expect("docker-registry"))
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start docker-registry");
            let host = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(&host).is_ok() {
                    return Registry { host, child, _dir: dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }
}

impl Registry {
    /// Where the registry keeps its repositories and upload sessions.
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("data/docker/registry/v2")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `docker-registry serve CONFIG` and wait until it listens on `port` (the caller stops it).
pub fn serve_registry(config: &Path, port: u16) -> Child {
    let child = Command::new(which("docker-registry").expect("docker-registry"))
        .arg("serve")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    out
}

pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// podman configured as this sandbox needs, with the test registry marked insecure.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new(registry: Option<&str>) -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .expect("write containers.conf");
        let mut registries = String::from("unqualified-search-registries = []\n");
        if let Some(host) = registry {
            registries.push_str(&format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"));
        }
        std::fs::write(dir.path().join("registries.conf"), registries).expect("write registries.conf");
        Podman { dir }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.dir.path().join("registries.conf"));
        cmd
    }

    /// `podman run --rm IMAGE ARGS…`, returning stdout.
    pub fn run_image(&self, image: &str, args: &[&str]) -> String {
        let mut cmd = self.command();
        cmd.args(["run", "--rm", "--pull=always", image]).args(args);
        run_ok(&mut cmd)
    }
}

/// A lowercase, dot-free directory: podman 4.3 names `oci:` images after their path.
pub struct PlainDir {
    pub path: PathBuf,
}

impl PlainDir {
    pub fn new() -> PlainDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("kodevtest{}n{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("mkdir");
        PlainDir { path }
    }
}

impl Drop for PlainDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// kodev with credentials from a Docker config holding `user:password` for `host` (None: no
/// credentials at all, neither Docker's nor podman's).
pub fn kodev_with_credentials(config_dir: &Path, host: &str, credentials: Option<(&str, &str)>) -> Command {
    use base64::Engine as _;
    let auths = match credentials {
        Some((user, password)) => {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            json!({ host: {"auth": auth} })
        }
        None => json!({}),
    };
    std::fs::write(config_dir.join("config.json"), json!({ "auths": auths }).to_string()).expect("write config.json");
    let mut cmd = kodev();
    cmd.env("DOCKER_CONFIG", config_dir).env("REGISTRY_AUTH_FILE", config_dir.join("no-podman-auth.json"));
    cmd
}

pub fn kodev() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kodev"));
    // A cache per test process: content-addressed, so sharing is safe, but keep tests hermetic.
    cmd.env("KODEV_CACHE_DIR", cache_dir());
    cmd.env_remove("SKAFFOLD_DEFAULT_REPO").env_remove("KO_DOCKER_REPO").env_remove("SOURCE_DATE_EPOCH");
    for ko_setting in [
        "KO_DEFAULTBASEIMAGE",
        "KO_BASEIMAGEOVERRIDES",
        "KO_DEFAULTPLATFORMS",
        "KO_DEFAULTENV",
        "KO_DEFAULTFLAGS",
        "KO_DEFAULTLDFLAGS",
    ] {
        cmd.env_remove(ko_setting);
    }
    // Skaffold's flags given in the environment (see cli.rs) stay out of the tests too.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SKAFFOLD_")) {
        cmd.env_remove(name);
    }
    // Nor the machine's Kubernetes context and Skaffold global config (a test may set its own).
    cmd.env("KUBECONFIG", "/nonexistent/kubeconfig").env("SKAFFOLD_CONFIG", "/nonexistent/skaffold-config");
    if which("go").is_none() {
        cmd.env("KO_GO_PATH", "/usr/local/go/bin/go");
    }
    cmd
}

/// One kodev cache per test process. A static is never dropped, so the directory is
/// removed when the process exits; left behind, each one held up to 250 MB of binaries.
fn cache_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove_cache_dir() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        // SAFETY: registers a plain function with no arguments, once per process.
        unsafe { libc::atexit(remove_cache_dir) };
        dir
    })
    .clone()
}

pub fn skopeo_inspect(reference: &str, raw: bool, config: bool) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect").arg("--tls-verify=false");
    if raw {
        cmd.arg("--raw");
    }
    if config {
        cmd.arg("--config");
    }
    cmd.arg(reference);
    serde_json::from_str(&run_ok(&mut cmd)).expect("skopeo prints JSON")
}

/// Copy a directory tree (the test app) into a fresh place.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            if entry.file_name() == ".kodev" {
                continue;
            }
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of examples/hello in a temp dir, with the given skaffold.yaml artifact settings.
pub fn hello_app(dir: &Path, ko_block: &str, artifact_extra: &str) -> PathBuf {
    copy_tree(&repo_root().join("examples/hello"), dir);
    let yaml = format!(
        "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: hello\n{artifact_extra}      ko:\n        main: .\n{ko_block}"
    );
    std::fs::write(dir.join("skaffold.yaml"), yaml).expect("write skaffold.yaml");
    dir.join("skaffold.yaml")
}

/// Give a copy of examples/hello sources no other build had, so that go compiles its main
/// package (rather than finding it in go's cache) and kodev reads a relink recipe from that.
pub fn make_hello_unique(app: &Path) {
    let main_go = app.join("main.go");
    let nonce = format!("\nvar buildNonce = \"{:?}\"\n", std::time::SystemTime::now());
    std::fs::write(&main_go, std::fs::read_to_string(&main_go).expect("read main.go") + &nonce).expect("write main.go");
}

/// Make a one-line edit to a copy of examples/hello that changes its binary.
pub fn edit_hello(app: &Path) {
    let main_go = app.join("main.go");
    let source = std::fs::read_to_string(&main_go).expect("read main.go");
    assert!(source.contains("\"listen address\""), "examples/hello changed: pick another edit");
    std::fs::write(&main_go, source.replace("\"listen address\"", "\"the address to listen on\""))
        .expect("write main.go");
}

/// An OCI layout made by umoci with one image per platform: a file layer, a user, env and a label.
pub fn umoci_image(layout: &Path, tag: &str, arch: &str) {
    let image = format!("{}:{tag}", layout.display());
    if !layout.join("index.json").exists() {
        run_ok(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    let payload = tempfile::tempdir().expect("tempdir");
    std::fs::write(payload.path().join("base-marker"), format!("base for {arch}\n")).expect("write");
    run_ok(
        Command::new("umoci")
            .args(["insert", "--rootless", "--image", &image])
            .arg(payload.path().join("base-marker"))
            .arg("/etc/base-marker"),
    );
    run_ok(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        arch,
        "--config.user",
        "1234",
        "--config.env",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "--config.env",
        "BASE_ENV=kept",
        "--config.label",
        "base.label=inherited",
        "--config.cmd",
        "/bin/false",
    ]));
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Join two images of an umoci layout into an index stored in the same layout under `tag`.
pub fn make_index(layout: &Path, tags: &[(&str, &str)], tag: &str) {
    let index_path = layout.join("index.json");
    let mut top: Value = serde_json::from_slice(&std::fs::read(&index_path).expect("read index")).expect("json");
    let mut entries = Vec::new();
    for (child_tag, arch) in tags {
        let desc = top["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == *child_tag)
            .expect("child tag")
            .clone();
        let mut entry = json!({"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"]});
        entry["platform"] = json!({"os": "linux", "architecture": arch});
        entries.push(entry);
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let bytes = serde_json::to_vec(&index).expect("json");
    let hex = sha256_hex(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).expect("write index blob");
    top["manifests"].as_array_mut().expect("manifests").push(json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{hex}"),
        "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&top).expect("json")).expect("write index.json");
}

/// Push a layout image to the registry with skopeo (optionally as Docker schema2).
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str, docker_format: bool, all: bool) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if docker_format {
        cmd.args(["--format", "v2s2"]);
    }
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{dest}"));
    run_ok(&mut cmd);
}

/// Fetch a blob straight from the registry's HTTP API.
pub fn fetch_blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("http://{host}/v2/{repo}/blobs/{digest}");
    let output = Command::new("curl").args(["-sfL", &url]).output().expect("curl");
    assert!(output.status.success(), "fetch {url} failed");
    output.stdout
}
