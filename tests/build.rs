//! `kodev build` end to end: real registry, real go, bases made by umoci + skopeo, images run by podman.

mod common;

use std::io::Read;
use std::process::Command;

use common::*;
use serde_json::Value;

const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "podman", "runc", "qemu-aarch64-static", "curl"];

struct Fixture {
    registry: Registry,
    _bases: tempfile::TempDir,
}

/// A registry holding three bases: single-platform OCI, a two-platform OCI index, Docker schema2.
fn fixture() -> Fixture {
    let registry = Registry::start();
    let bases = tempfile::tempdir().expect("tempdir");
    let layout = bases.path().join("layout");
    umoci_image(&layout, "amd64", "amd64");
    umoci_image(&layout, "arm64", "arm64");
    make_index(&layout, &[("amd64", "amd64"), ("arm64", "arm64")], "multi");
    skopeo_push(&layout, "amd64", &format!("{}/base/single:v1", registry.host), false, false);
    skopeo_push(&layout, "multi", &format!("{}/base/multi:v1", registry.host), false, true);
    skopeo_push(&layout, "amd64", &format!("{}/base/docker:v1", registry.host), true, false);
    Fixture { registry, _bases: bases }
}

fn build(skaffold: &std::path::Path, args: &[&str]) -> std::process::Output {
    run(kodev().arg("build").arg("-f").arg(skaffold).args(args))
}

/// `kodev build` with its cache in `cache` rather than the tests' shared one.
fn build_in_cache(cache: &std::path::Path, skaffold: &std::path::Path, args: &[&str]) -> std::process::Output {
    run(kodev().env("KODEV_CACHE_DIR", cache).arg("build").arg("-f").arg(skaffold).args(args))
}

/// `kodev build` with kodev's debug log on stderr (which says how each layer went up).
fn build_logged(skaffold: &std::path::Path, args: &[&str]) -> std::process::Output {
    run(kodev().env("KODEV_LOG", "kodev=debug").arg("build").arg("-f").arg(skaffold).args(args))
}

fn stdout_ref(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kodev build failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().expect("a reference on stdout").trim().to_string()
}

fn env_of(config: &Value) -> Vec<String> {
    config["config"]["Env"].as_array().expect("Env").iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn single_platform_oci_base_builds_pushes_and_runs() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let base = format!("{}/base/single:v1", fx.registry.host);
    let skaffold = hello_app(
        app.path(),
        &format!("        fromImage: {base}\n        labels:\n          team: platform\n        ldflags:\n          - -s -w\n"),
        "",
    );
    let out =
        build_logged(&skaffold, &["-d", &format!("{}/dev", fx.registry.host), "-t", "t1", "--file-output", "out.json"]);
    let reference = stdout_ref(&out);
    let name = format!("{}/dev/hello", fx.registry.host);
    assert!(reference.starts_with(&format!("{name}:t1@sha256:")), "{reference}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("go build done"), "{stderr}");
    // The binary layer went up while it was being compressed, not after.
    assert!(stderr.contains("layer streamed to the registry while compressing"), "{stderr}");
    // Its compression started when the linker was done, before go had finished the binary.
    // (How many chunks it got to before go finished depends on the machine's load: that it ran
    // is what is checked here; what it makes is checked in layer.rs.)
    let ahead = stderr.split("compressed ahead chunks=").nth(1).and_then(|rest| rest.split(' ').next());
    assert!(ahead.is_some_and(|n| n.parse::<u32>().is_ok()), "{stderr}");

    let manifest = skopeo_inspect(&format!("docker://{name}:t1"), true, false);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "one base layer + kodata + binary");
    assert!(layers.iter().all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"));
    // The config went up while the layer was still being compressed, and it is the image's.
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert!(stderr.contains(&format!("config uploaded ahead of its layer digest={config_digest}")), "{stderr}");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.base.name"], format!("{base}"));
    let base_digest = skopeo_inspect(&format!("docker://{base}"), false, false)["Digest"].clone();
    assert_eq!(manifest["annotations"]["org.opencontainers.image.base.digest"], base_digest);

    let config = skopeo_inspect(&format!("docker://{name}:t1"), false, true);
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/ko-app/hello"]));
    assert!(config["config"].get("Cmd").is_none() || config["config"]["Cmd"].is_null());
    let env = env_of(&config);
    assert!(env.iter().any(|e| e.starts_with("PATH=") && e.ends_with(":/ko-app")), "{env:?}");
    assert!(env.contains(&"KO_DATA_PATH=/var/run/ko".to_string()));
    assert!(env.contains(&"BASE_ENV=kept".to_string()));
    assert_eq!(config["config"]["User"], "1234");
    assert_eq!(config["config"]["Labels"]["base.label"], "inherited");
    assert_eq!(config["config"]["Labels"]["team"], "platform");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);

    let file_output: Value = serde_json::from_slice(
        &std::fs::read(app.path().join("out.json")).or_else(|_| std::fs::read("out.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(file_output["builds"][0]["imageName"], "hello");
    assert_eq!(file_output["builds"][0]["tag"], reference);

    let podman = Podman::new(Some(&fx.registry.host));
    let said = podman.run_image(&format!("{name}:t1"), &["--once"]);
    assert!(said.contains("Hello from kodev (from linux/amd64)"), "{said}");

    // A second push of the same image uploads nothing new, and its layer is not even compressed.
    let again = build_logged(&skaffold, &["-d", &format!("{}/dev", fx.registry.host), "-t", "t1"]);
    assert_eq!(stdout_ref(&again), reference, "same input, same digest");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("(0 B uploaded"), "{stderr}");
    assert!(stderr.contains("binary unchanged since an earlier build"), "{stderr}");
    assert!(!stderr.contains("layer streamed"), "{stderr}");
}

#[test]
fn an_unchanged_binary_still_reaches_every_target_whole() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    let first = stdout_ref(&build(&skaffold, &["-d", &format!("{}/one", fx.registry.host), "-t", "a"]));
    let digest = first.split('@').nth(1).unwrap().to_string();

    // The binary is unchanged (go does not relink it), but this repository lacks its layer.
    let out = build_logged(&skaffold, &["-d", &format!("{}/two", fx.registry.host), "-t", "a"]);
    let second = stdout_ref(&out);
    assert_eq!(second.split('@').nth(1).unwrap(), digest, "same binary, same image");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("binary unchanged since an earlier build"), "{stderr}");
    let copied = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/two/hello:a", fx.registry.host))
            .arg(format!("dir:{}", copied.path().display())),
    );

    // Nor does an OCI layout: the layer is compressed again, byte for byte the same.
    let layout = PlainDir::new();
    let out = build(&skaffold, &["--oci-layout", &layout.path.display().to_string(), "-t", "a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_layout = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:hello:a", layout.path.display()))
            .arg(format!("dir:{}", from_layout.path().display())),
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(from_layout.path().join("manifest.json")).unwrap()).unwrap();
    let binary_layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let pushed: Value = serde_json::from_slice(&std::fs::read(copied.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(pushed["layers"].as_array().unwrap().last().unwrap()["digest"], binary_layer.as_str());
}

/// examples/hello on the one-platform base.
fn single_platform_hello(fx: &Fixture, dir: &std::path::Path) -> std::path::PathBuf {
    hello_app(dir, &format!("        fromImage: {}/base/single:v1\n", fx.registry.host), "")
}

/// examples/hello on the two-platform base, for `platforms` (a YAML list).
fn two_platform_hello(fx: &Fixture, dir: &std::path::Path, platforms: &str) -> std::path::PathBuf {
    hello_app(
        dir,
        &format!("        fromImage: {}/base/multi:v1\n", fx.registry.host),
        &format!("      platforms: {platforms}\n"),
    )
}

#[test]
fn two_platform_index_runs_on_amd64_and_arm64() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = two_platform_hello(&fx, app.path(), "[linux/arm64, linux/amd64]");
    let out = build(&skaffold, &["-d", &format!("{}/dev", fx.registry.host), "-t", "multi"]);
    let reference = stdout_ref(&out);
    let name = format!("{}/dev/hello", fx.registry.host);

    let index = skopeo_inspect(&format!("docker://{name}:multi"), true, false);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, vec!["amd64", "arm64"], "index follows the base's order");
    assert!(index["annotations"]["org.opencontainers.image.base.name"].as_str().unwrap().ends_with("base/multi:v1"));
    assert!(reference.ends_with(index_digest(&name, "multi").as_str()));

    let podman = Podman::new(Some(&fx.registry.host));
    let said = podman.run_image(&format!("{name}:multi"), &["--once"]);
    assert!(said.contains("(from linux/amd64)"), "{said}");

    // The arm64 binary, taken out of its layer, runs under qemu.
    let work = arm64_hello(&fx, "multi");
    std::fs::write(work.path().join("greeting.txt"), "Hello from kodev").unwrap();
    let said = run_ok(
        Command::new("qemu-aarch64-static")
            .arg(work.path().join("hello"))
            .arg("--once")
            .env("KO_DATA_PATH", work.path()),
    );
    assert!(said.contains("(from linux/arm64)"), "{said}");
}

/// The arm64 binary of the two-platform image `dev/hello:TAG`, taken out of its layer (where
/// it is `/ko-app/hello`, mode 0555) into a directory of its own.
fn arm64_hello(fx: &Fixture, tag: &str) -> tempfile::TempDir {
    let name = format!("{}/dev/hello", fx.registry.host);
    let index = skopeo_inspect(&format!("docker://{name}:{tag}"), true, false);
    let arm = index["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == "arm64").unwrap();
    let arm_manifest = skopeo_inspect(&format!("docker://{name}@{}", arm["digest"].as_str().unwrap()), true, false);
    let binary_layer =
        arm_manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let blob = fetch_blob(&fx.registry.host, "dev/hello", &binary_layer);
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob[..]));
    let work = tempfile::tempdir().unwrap();
    let mut found = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == "/ko-app/hello" {
            assert_eq!(entry.header().mode().unwrap(), 0o555);
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            std::fs::write(work.path().join("hello"), bytes).unwrap();
            std::fs::set_permissions(work.path().join("hello"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            found = true;
        }
    }
    assert!(found, "binary layer holds /ko-app/hello");
    work
}

/// Prints the values ldflags gave (`-X main.arch=…`) when run with `--flavor`.
const PRINT_LINKED_VALUES: &str = r#"package main

import (
	"fmt"
	"os"
	"runtime"
)

var arch, extra, goVersion string

func init() {
	if len(os.Args) > 1 && os.Args[1] == "--flavor" {
		fmt.Printf("arch=%s runtime=%s extra=%q go=%s\n", arch, runtime.GOARCH, extra, goVersion)
		os.Exit(0)
	}
}
"#;

/// ko's templates in `.ko.yaml` as real projects write them: kyverno's ldflag that is empty
/// unless `LD_FLAGS` is set (`if index .Env …`), and values that differ by platform (ko's
/// `.Env.GOARCH`, `.GoEnv`), each platform's binary linked with its own.
#[test]
fn ko_templates_with_conditions_and_per_platform_values_reach_each_binary() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = two_platform_hello(&fx, app.path(), "[linux/arm64, linux/amd64]");
    std::fs::write(app.path().join("flavor.go"), PRINT_LINKED_VALUES).unwrap();
    std::fs::write(
        app.path().join(".ko.yaml"),
        "builds:\n- id: hello\n  main: .\n  ldflags:\n  - '{{ if index .Env \"LD_FLAGS\" }}{{ .Env.LD_FLAGS }}{{ end }}'\n  \
         - -X main.arch={{.Env.GOARCH}} -X main.goVersion={{.GoEnv.GOVERSION}}\n",
    )
    .unwrap();
    let go_version = run_ok(Command::new(which("go").unwrap()).args(["env", "GOVERSION"])).trim().to_string();
    let repo = format!("{}/dev", fx.registry.host);
    let podman = Podman::new(Some(&fx.registry.host));
    for (tag, ld_flags, extra) in [("with", Some("-X main.extra=set"), "set"), ("without", None, "")] {
        let mut kodev = kodev();
        kodev.env_remove("LD_FLAGS");
        if let Some(value) = ld_flags {
            kodev.env("LD_FLAGS", value);
        }
        stdout_ref(&run(kodev.arg("build").arg("-f").arg(&skaffold).args(["-d", &repo, "-t", tag])));
        let amd64 = podman.run_image(&format!("{repo}/hello:{tag}"), &["--flavor"]);
        assert_eq!(amd64.trim(), format!("arch=amd64 runtime=amd64 extra={extra:?} go={go_version}"), "{tag}");
        let work = arm64_hello(&fx, tag);
        let arm64 = run_ok(Command::new("qemu-aarch64-static").arg(work.path().join("hello")).arg("--flavor"));
        assert_eq!(arm64.trim(), format!("arch=arm64 runtime=arm64 extra={extra:?} go={go_version}"), "{tag}");
    }
}

fn index_digest(name: &str, tag: &str) -> String {
    skopeo_inspect(&format!("docker://{name}:{tag}"), false, false)["Digest"].as_str().unwrap_or_default().to_string()
}

#[test]
fn docker_schema2_base_gives_docker_media_types() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), &format!("        fromImage: {}/base/docker:v1\n", fx.registry.host), "");
    let out = build(&skaffold, &["-d", &format!("{}/dev", fx.registry.host), "-t", "dk"]);
    stdout_ref(&out);
    let manifest = skopeo_inspect(&format!("docker://{}/dev/hello:dk", fx.registry.host), true, false);
    assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.docker.container.image.v1+json");
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
    }
    let podman = Podman::new(Some(&fx.registry.host));
    let said = podman.run_image(&format!("{}/dev/hello:dk", fx.registry.host), &["--once"]);
    assert!(said.contains("Hello from kodev"), "{said}");
}

#[test]
fn same_app_in_two_directories_gives_the_same_digest() {
    if !require_tools(&["go"]) {
        return;
    }
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let a = hello_app(one.path(), "", "      platforms: [linux/amd64, linux/arm64]\n");
    let b = hello_app(&two.path().join("nested/elsewhere"), "", "      platforms: [linux/amd64, linux/arm64]\n");
    let ra = stdout_ref(&build(&a, &["-t", "same"]));
    let rb = stdout_ref(&build(&b, &["-t", "same"]));
    assert_eq!(ra, rb);
    assert!(ra.starts_with("hello:same@sha256:"), "{ra}");
}

#[test]
fn escaping_kodata_symlink_is_refused_and_nothing_is_tagged() {
    if !require_tools(&["docker-registry", "curl"]) {
        return;
    }
    let registry = Registry::start();
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(&app.path().join("app"), "", "");
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::write(secret_dir.path().join("secret"), "do not ship").unwrap();
    std::os::unix::fs::symlink(secret_dir.path().join("secret"), app.path().join("app/kodata/leak")).unwrap();
    let out = build(&skaffold, &["-d", &format!("{}/dev", registry.host), "-t", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kodata/leak") && stderr.contains("outside"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let tags = Command::new("curl")
        .args(["-s", &format!("http://{}/v2/dev/hello/tags/list", registry.host)])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tags.stdout).contains("\"bad\""), "no tag left behind");
}

#[test]
fn a_build_trims_cache_entries_unused_for_five_days() {
    if !require_tools(&["go"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "", "");
    let cache = tempfile::tempdir().unwrap();
    // Another image's binary, last used six days ago.
    let stale = cache.path().join("bin/0123456789abcdef01234567");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("hello"), b"an old binary").unwrap();
    let six_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(6 * 24 * 3600);
    std::fs::File::open(&stale).unwrap().set_modified(six_days_ago).unwrap();

    stdout_ref(&build_in_cache(cache.path(), &skaffold, &["-t", "trim"]));
    assert!(!stale.exists(), "a binary unused for six days is removed");
    let binaries: Vec<_> = std::fs::read_dir(cache.path().join("bin")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(binaries.len(), 1, "this build's binary stays: {binaries:?}");
    assert!(cache.path().join("trim.txt").is_file(), "the next process does not look again today");
}

#[test]
fn oci_layout_output_reads_with_skopeo_and_runs_with_podman() {
    if !require_tools(&["skopeo", "podman", "runc"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "", "");
    // No registry anywhere: the default .kodev/oci layout.
    let reference = stdout_ref(&build(&skaffold, &["-t", "local"]));
    assert!(reference.starts_with("hello:local@sha256:"), "{reference}");
    let layout = app.path().join(".kodev/oci");
    let inspected = skopeo_inspect(&format!("oci:{}:hello:local", layout.display()), false, false);
    assert_eq!(inspected["Digest"].as_str().unwrap(), reference.split('@').nth(1).unwrap());

    // An explicit layout directory; podman 4.3 names images after the layout path, which must not hold a dot-directory.
    let plain = PlainDir::new();
    let out_dir = plain.path.join("layout");
    let reference = stdout_ref(&build(&skaffold, &["-t", "run", "--oci-layout", out_dir.to_str().unwrap()]));
    let index: Value = serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "hello:run");
    let podman = Podman::new(None);
    let said = run_ok(
        podman.command().args(["run", "--rm"]).arg(format!("oci:{}:hello:run", out_dir.display())).arg("--once"),
    );
    assert!(said.contains("Hello from kodev (from linux/amd64)"), "{said} ({reference})");
}

/// hello, told `--caps`, prints its binary's `security.capability` attribute as hex.
const PRINT_OWN_CAPABILITIES: &str = r#"package main

import (
	"fmt"
	"os"
	"syscall"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "--caps" {
		buf := make([]byte, 64)
		n, err := syscall.Getxattr("/ko-app/hello", "security.capability", buf)
		if err != nil {
			fmt.Println("no capabilities:", err)
		} else {
			fmt.Printf("capabilities %x\n", buf[:n])
		}
		os.Exit(0)
	}
}
"#;

#[test]
fn linux_capabilities_of_the_ko_yaml_are_set_on_the_binary_in_the_container() {
    if !require_tools(&["go", "podman", "runc"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "", "");
    std::fs::write(app.path().join("caps.go"), PRINT_OWN_CAPABILITIES).unwrap();
    let ko_yaml = app.path().join(".ko.yaml");
    let podman = Podman::new(None);
    let plain = PlainDir::new();
    let layout = plain.path.join("layout");
    let caps_in_container = |tag: &str| {
        stdout_ref(&build(&skaffold, &["-t", tag, "--oci-layout", layout.to_str().unwrap()]));
        let image = format!("oci:{}:hello:{tag}", layout.display());
        run_ok(podman.command().args(["run", "--rm"]).arg(image).arg("--caps")).trim().to_string()
    };
    // net_bind_service is capability 10: permitted (bit 10 of the first set), not effective.
    std::fs::write(&ko_yaml, "builds:\n- id: hello\n  main: .\n  linux_capabilities: net_bind_service\n").unwrap();
    assert_eq!(caps_in_container("bind"), "capabilities 0000000200040000000000000000000000000000");
    // The same binary with other capabilities is another layer, not the one recorded for it.
    std::fs::write(&ko_yaml, "builds:\n- id: hello\n  main: .\n  linux_capabilities: [chown=ep]\n").unwrap();
    assert_eq!(caps_in_container("chown"), "capabilities 0100000201000000000000000000000000000000");
    std::fs::remove_file(&ko_yaml).unwrap();
    assert!(caps_in_container("none").starts_with("no capabilities:"));

    std::fs::write(&ko_yaml, "builds:\n- id: hello\n  main: .\n  linux_capabilities: [net_bind]\n").unwrap();
    let out = build(&skaffold, &["-t", "bad", "--oci-layout", layout.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(".ko.yaml:4") && stderr.contains("builds[0].linux_capabilities") && stderr.contains("net_bind"),
        "{stderr}"
    );
}

#[test]
fn compile_error_shows_go_output_and_exits_1() {
    if !require_tools(&["go"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "", "");
    std::fs::write(app.path().join("broken.go"), "package main\n\nfunc broken() { undefinedThing() }\n").unwrap();
    let out = build(&skaffold, &["-t", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("undefined: undefinedThing"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn unreachable_registry_and_missing_base_are_named() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "", "");
    let dead = format!("127.0.0.1:{}", free_port());
    let out = build(&skaffold, &["-d", &format!("{dead}/dev"), "-t", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("http://{dead}/v2/")), "{stderr}");

    let registry = Registry::start();
    let missing = format!("{}/base/nothere:v1", registry.host);
    let skaffold = hello_app(app.path(), &format!("        fromImage: {missing}\n"), "");
    let out = build(&skaffold, &["-d", &format!("{}/dev", registry.host), "-t", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing), "{stderr}");
}

#[test]
fn config_errors_exit_2_with_file_and_line() {
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "        mian: typo\n", "");
    let out = build(&skaffold, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skaffold.yaml:8 ") && stderr.contains("mian"), "{stderr}");
}

#[test]
fn basic_credentials_come_from_the_docker_config() {
    if !require_tools(&["docker-registry", "umoci", "skopeo"]) {
        return;
    }
    let registry = Registry::start_with_auth(Some(("kodev", "s3cret")));
    let bases = tempfile::tempdir().unwrap();
    let layout = bases.path().join("layout");
    umoci_image(&layout, "amd64", "amd64");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", "kodev:s3cret"])
            .arg(format!("oci:{}:amd64", layout.display()))
            .arg(format!("docker://{}/base/private:v1", registry.host)),
    );
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), &format!("        fromImage: {}/base/private:v1\n", registry.host), "");

    // Without credentials the registry refuses, and kodev says so.
    let target = format!("{}/dev", registry.host);
    let config = tempfile::tempdir().unwrap();
    let out = run(kodev_with_credentials(config.path(), &registry.host, None)
        .arg("build")
        .arg("-f")
        .arg(&skaffold)
        .args(["-d", &target, "-t", "a"]));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));

    let out = run(kodev_with_credentials(config.path(), &registry.host, Some(("kodev", "s3cret")))
        .env("KODEV_LOG", "kodev=debug")
        .arg("build")
        .arg("-f")
        .arg(&skaffold)
        .args(["-d", &target, "-t", "a"]));
    let reference = stdout_ref(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("layer streamed to the registry while compressing"), "{stderr}");
    let inspected = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "kodev:s3cret"])
            .arg(format!("docker://{}/dev/hello:a", registry.host)),
    );
    let inspected: Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["Digest"].as_str().unwrap(), reference.split('@').nth(1).unwrap());
}

#[test]
fn a_registry_that_lost_its_blobs_gets_them_again_in_the_same_dev_session() {
    if !require_tools(&["docker-registry", "go"]) {
        return;
    }
    // One dev session across a registry restart that wipes its storage: the remembered blobs
    // are gone, and the next push must notice and upload them again.
    use std::io::{BufRead, BufReader, Write};
    let storage = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = storage.path().join("config.yml");
    let data = storage.path().join("data");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", data.display()),
    )
    .unwrap();
    let mut registry = serve_registry(&config, port);
    let app = tempfile::tempdir().unwrap();
    hello_app(app.path(), "", "");
    let mut dev = kodev()
        .current_dir(app.path())
        .args(["dev", "--no-tui", "--output", "json", "-d", &format!("127.0.0.1:{port}/dev"), "-t", "re"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut wait_for = |event: &str| loop {
        let line = lines.next().expect("kodev dev is running").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == event {
            return v;
        }
        assert_ne!(v["event"], "build_failed", "{v}");
    };
    wait_for("watching");
    let _ = registry.kill();
    let _ = registry.wait();
    std::fs::remove_dir_all(&data).unwrap();
    registry = serve_registry(&config, port);
    dev.stdin.as_mut().unwrap().write_all(b"r\n").unwrap();
    let pushed = wait_for("pushed");
    assert!(pushed["bytes_uploaded"].as_u64().unwrap() > 100_000, "base and kodata uploaded again: {pushed}");
    let inspected = skopeo_inspect(&format!("docker://127.0.0.1:{port}/dev/hello:re"), false, false);
    assert_eq!(inspected["Digest"], pushed["digest"]);
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = registry.kill();
    let _ = registry.wait();
}

#[test]
fn a_cached_base_keeps_building_when_its_registry_is_gone() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let base = format!("{}/base/single:v1", fx.registry.host);
    let skaffold = hello_app(app.path(), &format!("        fromImage: {base}\n"), "");
    let layout = app.path().join("out");
    let first = stdout_ref(&build(&skaffold, &["--oci-layout", layout.to_str().unwrap(), "-t", "online"]));
    drop(fx);
    let out = build(&skaffold, &["--oci-layout", layout.to_str().unwrap(), "-t", "offline"]);
    let second = stdout_ref(&out);
    assert_eq!(first.split('@').nth(1), second.split('@').nth(1), "same base, same image");
    let inspected = skopeo_inspect(&format!("oci:{}:hello:offline", layout.display()), false, false);
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
}

#[test]
fn rebuilding_into_an_oci_layout_does_not_grow_it_without_bound() {
    if !require_tools(&["skopeo", "go"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), "", "");
    let blobs = app.path().join(".kodev/oci/blobs/sha256");
    let count = || std::fs::read_dir(&blobs).unwrap().count();
    stdout_ref(&build(&skaffold, &["-t", "keep"]));
    stdout_ref(&build(&skaffold, &["-t", "dev"]));
    let after_two_tags = count();
    for i in 0..3 {
        std::fs::write(app.path().join("extra.go"), format!("package main\n\nvar buildNumber = {i}\n")).unwrap();
        stdout_ref(&build(&skaffold, &["-t", "dev"]));
    }
    // Each rebuild of `dev` replaces its binary layer, config and manifest; `keep` stays whole.
    assert_eq!(count(), after_two_tags + 3, "only the replaced image's blobs were dropped");
    for tag in ["keep", "dev"] {
        let inspected =
            skopeo_inspect(&format!("oci:{}:hello:{tag}", app.path().join(".kodev/oci").display()), false, false);
        assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3, "{tag} is whole");
    }
}

#[test]
fn platform_all_takes_every_platform_of_the_base_and_a_missing_one_is_named() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), &format!("        fromImage: {}/base/multi:v1\n", fx.registry.host), "");
    let out = build(&skaffold, &["-d", &format!("{}/dev", fx.registry.host), "-t", "all", "--platform", "all"]);
    stdout_ref(&out);
    let index = skopeo_inspect(&format!("docker://{}/dev/hello:all", fx.registry.host), true, false);
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
        })
        .collect();
    assert_eq!(platforms, vec!["linux/amd64", "linux/arm64"]);

    // A platform the base lacks: exit 1 naming it and what the base has; nothing is tagged.
    let out =
        build(&skaffold, &["-d", &format!("{}/dev", fx.registry.host), "-t", "s390x", "--platform", "linux/s390x"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("linux/s390x") && stderr.contains("linux/amd64, linux/arm64"), "{stderr}");
    let tags = Command::new("curl")
        .args(["-s", &format!("http://{}/v2/dev/hello/tags/list", fx.registry.host)])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tags.stdout).contains("s390x"));

    // A single-platform base cannot serve another platform.
    let single = single_platform_hello(&fx, app.path());
    let out = build(&single, &["-d", &format!("{}/dev", fx.registry.host), "-t", "arm", "--platform", "linux/arm64"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no platform linux/arm64"));
}

/// A cache named with `..`, or relative to where kodev runs, is still one cache: go cleans the
/// work directory's path in the commands it prints, so its scratch space must be named the
/// same way for the recipe to be read, and the next build after an edit is relinked. A
/// relative `XDG_CACHE_HOME` is ignored (the XDG spec), and `~/.cache/kodev` used.
#[test]
fn a_cache_named_with_dot_dot_or_relative_still_relinks_the_next_build() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    // go refuses a relative XDG_CACHE_HOME for its own cache: it is given its usual one.
    let go = which("go").expect("go");
    let gocache = String::from_utf8(run(Command::new(go).args(["env", "GOCACHE"])).stdout).unwrap();
    for naming in ["dot-dot", "relative", "relative XDG_CACHE_HOME"] {
        let app = tempfile::tempdir().unwrap();
        let skaffold = single_platform_hello(&fx, app.path());
        make_hello_unique(app.path());
        let scratch = tempfile::tempdir().unwrap();
        std::fs::create_dir(scratch.path().join("sub")).unwrap();
        let build = |tag: &str| {
            let mut cmd = kodev();
            cmd.current_dir(scratch.path()).env("KODEV_LOG", "kodev=debug");
            match naming {
                "dot-dot" => cmd.env("KODEV_CACHE_DIR", scratch.path().join("sub/../cache")),
                "relative" => cmd.env("KODEV_CACHE_DIR", "sub/../cache"),
                _ => cmd
                    .env_remove("KODEV_CACHE_DIR")
                    .env("XDG_CACHE_HOME", "sub")
                    .env("GOCACHE", gocache.trim())
                    .env("HOME", scratch.path().join("home")),
            };
            run(cmd.arg("build").arg("-f").arg(&skaffold).args([
                "-d",
                &format!("{}/dotdot", fx.registry.host),
                "-t",
                tag,
            ]))
        };
        let first = build("a");
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        edit_hello(app.path());
        let second = build("b");
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(second.status.success(), "{stderr}");
        assert!(stderr.contains("relinked without the go command"), "{naming}: {stderr}");
        let cache = if naming.contains("XDG") {
            scratch.path().join("home/.cache/kodev")
        } else {
            scratch.path().join("cache")
        };
        assert!(cache.join("bin").is_dir(), "{naming}: the cache is where it was named");
        assert!(!scratch.path().join("sub/kodev").exists(), "a relative XDG_CACHE_HOME is not used");
    }
}

#[test]
fn a_users_gotmpdir_is_used_and_the_next_build_is_still_relinked() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    // One on the file system of kodev's cache, one on another (a tmpfs): the relinked binary
    // is then copied into place, not renamed.
    let same_fs = tempfile::tempdir().unwrap();
    let other_fs = tempfile::tempdir_in("/dev/shm").expect("/dev/shm, a tmpfs, for a GOTMPDIR on another file system");
    for gotmpdir in [same_fs.path(), other_fs.path()] {
        let app = tempfile::tempdir().unwrap();
        let skaffold = single_platform_hello(&fx, app.path());
        make_hello_unique(app.path());
        let build = |tag: &str| {
            let mut cmd = kodev();
            cmd.env("KODEV_LOG", "kodev=debug").env("GOTMPDIR", gotmpdir);
            run(cmd.arg("build").arg("-f").arg(&skaffold).args([
                "-d",
                &format!("{}/gotmpdir", fx.registry.host),
                "-t",
                tag,
            ]))
        };
        let first = build("a");
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        // An edit that shows in what the image prints.
        let main_go = app.path().join("main.go");
        let source = std::fs::read_to_string(&main_go).unwrap();
        assert!(source.contains("\"%s (from %s/%s)\""), "examples/hello changed: pick another edit");
        std::fs::write(&main_go, source.replace("\"%s (from %s/%s)\"", "\"%s (edited, from %s/%s)\"")).unwrap();
        let second = build("b");
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(second.status.success(), "{stderr}");
        assert!(stderr.contains("relinked without the go command"), "{}: {stderr}", gotmpdir.display());
        let left: Vec<_> = std::fs::read_dir(gotmpdir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "each build's scratch directory is removed after it: {left:?}");
        // The relinked binary is the one pushed, whole, and runs with the edit in it.
        let said = Podman::new(Some(&fx.registry.host)).run_image(&stdout_ref(&second), &["--once"]);
        assert!(said.contains("Hello from kodev (edited, from linux/amd64)"), "{said}");
    }
}

/// The digest of a `name:tag@digest` reference.
fn digest_of(reference: &str) -> &str {
    reference.rsplit_once('@').map(|(_, digest)| digest).expect("a digest in the reference")
}

/// Write `content` over the file at `path` in place, as some editors save: the same inode,
/// and the directory's time does not move.
fn rewrite_in_place(path: &std::path::Path, content: &[u8]) {
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, content).unwrap();
}

/// examples/hello in `root/app`, importing two modules of the developer's beside it: `member`,
/// the other module of `root/go.work`, and `lib`, a directory replacement (`replace
/// example.com/lib => ../lib`). `--once` prints `lib.Loop()`, `lib.Tag` and `member.Tag`.
struct LocalModules {
    root: tempfile::TempDir,
    skaffold: std::path::PathBuf,
    /// Set for kodev's builds.
    env: Vec<(String, String)>,
}

impl LocalModules {
    fn new(fx: &Fixture) -> LocalModules {
        let root = tempfile::tempdir().unwrap();
        let path = |rel: &str| root.path().join(rel);
        let skaffold = single_platform_hello(fx, &path("app"));
        make_hello_unique(&path("app"));
        // Sources no other build had, so that go compiles them and the recipe records it.
        let nonce = format!("{:?}", std::time::SystemTime::now());
        std::fs::create_dir_all(path("lib")).unwrap();
        std::fs::write(path("lib/go.mod"), "module example.com/lib\n\ngo 1.22\n").unwrap();
        std::fs::write(
            path("lib/lib.go"),
            format!("package lib\n\nimport \"fmt\"\n\nconst Tag = \"lib one\"\n\nvar nonce = \"{nonce}\"\n\n// Loop is \"loop 0\" with Go 1.22's loop variables, \"loop 3\" before.\nfunc Loop() string {{\n\tvar fs []func() int\n\tfor i := 0; i < 3; i++ {{\n\t\tfs = append(fs, func() int {{ return i }})\n\t}}\n\treturn fmt.Sprint(\"loop \", fs[0]())\n}}\n"),
        )
        .unwrap();
        std::fs::create_dir_all(path("member")).unwrap();
        std::fs::write(path("member/go.mod"), "module example.com/member\n\ngo 1.22\n").unwrap();
        std::fs::write(
            path("member/member.go"),
            format!("package member\n\nconst Tag = \"member one\"\n\nvar nonce = \"{nonce}\"\n"),
        )
        .unwrap();
        std::fs::write(path("go.work"), "go 1.22\n\nuse (\n\t./app\n\t./member\n)\n").unwrap();
        let go_mod = path("app/go.mod");
        let text = std::fs::read_to_string(&go_mod).unwrap();
        // The main module's go line may not be older than a dependency's.
        assert!(text.contains("go 1.19"), "examples/hello's go.mod changed");
        let text = text.replace("go 1.19", "go 1.22");
        std::fs::write(&go_mod, text + "\nrequire example.com/lib v0.0.0\n\nreplace example.com/lib => ../lib\n")
            .unwrap();
        let modules = LocalModules { root, skaffold, env: Vec::new() };
        modules.edit("app/main.go", "\"log\"", "\"log\"\n\n\t\"example.com/lib\"\n\t\"example.com/member\"");
        modules.edit("app/main.go", "fmt.Println(message)", "fmt.Println(message, lib.Loop(), lib.Tag, member.Tag)");
        modules
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let path = self.root.path().join(rel);
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(source.contains(from), "{rel} holds {from:?}");
        std::fs::write(&path, source.replacen(from, to, 1)).unwrap();
    }

    /// `kodev build` with its debug log, in kodev's usual cache or in `cache`.
    fn build(&self, fx: &Fixture, cache: Option<&std::path::Path>, tag: &str) -> std::process::Output {
        let mut cmd = kodev();
        if let Some(cache) = cache {
            cmd.env("KODEV_CACHE_DIR", cache);
        }
        let repo = format!("{}/local-modules", fx.registry.host);
        let out = run(cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("KODEV_LOG", "kodev=debug")
            .arg("build")
            .arg("-f")
            .arg(&self.skaffold)
            .args(["-d", &repo, "-t", tag]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Build (tag `tag`), check the image is the one go builds from these sources, and that it
    /// says `wanted` when run with `--once`.
    fn build_as_go_builds_it_saying(&self, fx: &Fixture, tag: &str, wanted: &str) {
        let built = stdout_ref(&self.build(fx, None, tag));
        self.assert_as_go_builds_it(fx, &built);
        let said = Podman::new(Some(&fx.registry.host)).run_image(&built, &["--once"]);
        assert!(said.contains(wanted), "want {wanted:?}: {said}");
    }

    /// The image's digest is the one a build from an empty kodev cache gives (go builds it all).
    fn assert_as_go_builds_it(&self, fx: &Fixture, reference: &str) {
        let fresh_cache = tempfile::tempdir().unwrap();
        let fresh = stdout_ref(&self.build(fx, Some(fresh_cache.path()), "fresh"));
        assert_eq!(digest_of(reference), digest_of(&fresh), "the image is the one go builds from these sources");
    }
}

#[test]
fn edits_of_a_workspace_member_and_of_a_replaced_module_are_relinked_as_go_builds_them() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let modules = LocalModules::new(&fx);
    modules.build(&fx, None, "a");
    for (rel, from, to, package) in [
        ("member/member.go", "member one", "member two", "example.com/member"),
        ("lib/lib.go", "lib one", "lib two", "example.com/lib"),
    ] {
        modules.edit(rel, from, to);
        let out = modules.build(&fx, None, "b");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("relinked without the go command"), "{rel}: {stderr}");
        assert!(stderr.contains(&format!("package compiled package=\"{package}\"")), "{rel}: {stderr}");
        modules.assert_as_go_builds_it(&fx, &stdout_ref(&out));
    }
    let said = Podman::new(Some(&fx.registry.host))
        .run_image(&format!("{}/local-modules/hello:b", fx.registry.host), &["--once"]);
    assert!(said.contains("loop 0 lib two member two"), "{said}");
}

/// A library file rewritten in place with the same length and its old modification time put
/// back (as `cp -p` or a sync tool may leave it): only its change time moved, and the next
/// build compiles what it holds now rather than relinking its old compile.
#[test]
fn a_same_length_rewrite_with_the_old_modification_time_is_built_as_go_builds_it() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let modules = LocalModules::new(&fx);
    modules.build(&fx, None, "a");
    let lib = modules.root.path().join("lib/lib.go");
    let modified = std::fs::metadata(&lib).unwrap().modified().unwrap();
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains("lib one"));
    // The change time moves with the clock's tick: let one pass.
    std::thread::sleep(std::time::Duration::from_millis(20));
    rewrite_in_place(&lib, source.replacen("lib one", "lib two", 1).as_bytes());
    std::fs::File::options().write(true).open(&lib).unwrap().set_modified(modified).unwrap();
    modules.build_as_go_builds_it_saying(&fx, "b", "lib two");
}

/// A module replaced by a sibling directory whose go.mod changes in place (its directory and
/// sources as they were): its `go` line decides how its code compiles (here the loop variable
/// semantics of Go 1.22), so the next build must not relink over its old compile.
#[test]
fn an_in_place_edit_of_a_replaced_modules_go_mod_is_built_as_go_builds_it() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let modules = LocalModules::new(&fx);
    modules.build(&fx, None, "a");
    modules.edit("app/main.go", "print the greeting and exit", "print the greeting, then exit");
    let relinked = modules.build(&fx, None, "b");
    assert!(String::from_utf8_lossy(&relinked.stderr).contains("relinked without the go command"));

    // Rewritten in place, as some editors save: the directory's time does not move.
    rewrite_in_place(&modules.root.path().join("lib/go.mod"), b"module example.com/lib\n\ngo 1.21\n");
    modules.edit("app/main.go", "print the greeting, then exit", "print the greeting and then exit");
    modules.build_as_go_builds_it_saying(&fx, "c", "loop 3");
}

/// A workspace file named by GOWORK (not `go.work`) rewritten in place to take the other
/// module from another directory: the binary changes, though no source did.
#[test]
fn an_edit_of_the_workspace_file_gowork_names_is_built_as_go_builds_it() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let mut modules = LocalModules::new(&fx);
    let root = modules.root.path().to_path_buf();
    let work_file = root.join("dev.work");
    std::fs::rename(root.join("go.work"), &work_file).unwrap();
    modules.env.push(("GOWORK".to_string(), work_file.display().to_string()));
    copy_tree(&root.join("member"), &root.join("member2"));
    modules.edit("member2/member.go", "member one", "member two");
    modules.build(&fx, None, "a");

    rewrite_in_place(&work_file, b"go 1.22\n\nuse (\n\t./app\n\t./member2\n)\n");
    modules.build_as_go_builds_it_saying(&fx, "b", "member two");
}

/// `-modfile`: go takes the module graph from another file than go.mod; that file rewritten
/// in place to replace the library by another directory changes the binary, though no source
/// did. `set_modfile` asks for `-modfile=dev.mod` (and GOWORK=off: go refuses -modfile in
/// workspace mode) its way, given the modules' root.
fn a_rewrite_of_the_modfile_is_built_as_go_builds_it(set_modfile: impl FnOnce(&mut LocalModules, &std::path::Path)) {
    let fx = fixture();
    let mut modules = LocalModules::new(&fx);
    let root = modules.root.path().to_path_buf();
    // Not in workspace mode: member by a replacement too.
    let go_mod = std::fs::read_to_string(root.join("app/go.mod")).unwrap()
        + "\nrequire example.com/member v0.0.0\n\nreplace example.com/member => ../member\n";
    std::fs::write(root.join("app/dev.mod"), &go_mod).unwrap();
    set_modfile(&mut modules, &root);
    copy_tree(&root.join("lib"), &root.join("lib2"));
    modules.edit("lib2/lib.go", "lib one", "lib two");
    modules.build(&fx, None, "a");

    rewrite_in_place(&root.join("app/dev.mod"), go_mod.replace("=> ../lib", "=> ../lib2").as_bytes());
    modules.build_as_go_builds_it_saying(&fx, "b", "lib two");
}

/// `-modfile` from GOFLAGS in kodev's environment.
#[test]
fn an_edit_of_the_file_modfile_names_is_built_as_go_builds_it() {
    if !require_tools(TOOLS) {
        return;
    }
    a_rewrite_of_the_modfile_is_built_as_go_builds_it(|modules, _| {
        modules.env.push(("GOFLAGS".to_string(), "-modfile=dev.mod".to_string()));
        modules.env.push(("GOWORK".to_string(), "off".to_string()));
    });
}

/// `-modfile` set by `go env -w` (go's settings file, here the one GOENV names) rather than in
/// the environment: go reads it there, and so must kodev.
#[test]
fn an_edit_of_the_file_a_go_env_w_modfile_names_is_built_as_go_builds_it() {
    if !require_tools(TOOLS) {
        return;
    }
    a_rewrite_of_the_modfile_is_built_as_go_builds_it(|modules, root| {
        let go_env = root.join("go-env");
        std::fs::write(&go_env, "GOFLAGS=-modfile=dev.mod\nGOWORK=off\n").unwrap();
        modules.env.push(("GOENV".to_string(), go_env.display().to_string()));
        // Set but empty: go reads the settings file's.
        modules.env.push(("GOFLAGS".to_string(), String::new()));
    });
}

/// A file go left out of the main package (`//go:build ignore`) rewritten in place without
/// its constraint: the directory's names and time stay as they were, and go now builds it in.
#[test]
fn a_file_that_joins_the_package_by_losing_its_build_constraint_is_built_in() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    make_hello_unique(app.path());
    let extra = app.path().join("extra.go");
    let source = "package main\n\nimport \"fmt\"\n\nfunc init() { fmt.Println(\"extra built in\") }\n";
    std::fs::write(&extra, format!("//go:build ignore\n\n{source}")).unwrap();
    let repo = format!("{}/constraint", fx.registry.host);
    stdout_ref(&build(&skaffold, &["-d", &repo, "-t", "a"]));

    rewrite_in_place(&extra, source.as_bytes());
    let after = stdout_ref(&build(&skaffold, &["-d", &repo, "-t", "b"]));
    assert_eq!(
        digest_of(&after),
        gos_digest(&skaffold, &repo, None),
        "the image is the one go builds from these sources"
    );
    let said = Podman::new(Some(&fx.registry.host)).run_image(&after, &["--once"]);
    assert!(said.contains("extra built in"), "{said}");
}

/// A file whose name names another system (`_windows.go` on linux) never joins the package,
/// whatever it holds: an edit of it does not stop the next edit of main being relinked.
#[test]
fn an_edit_of_another_systems_file_leaves_the_next_build_relinked() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    make_hello_unique(app.path());
    let windows_only = app.path().join("console_windows.go");
    std::fs::write(&windows_only, "package main\n\nconst console = \"CONOUT$\"\n").unwrap();
    let repo = format!("{}/othersystem", fx.registry.host);
    stdout_ref(&build(&skaffold, &["-d", &repo, "-t", "a"]));

    rewrite_in_place(&windows_only, b"package main\n\nconst console = \"CON\"\n");
    edit_hello(app.path());
    let out = build_logged(&skaffold, &["-d", &repo, "-t", "b"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("relinked without the go command"), "{stderr}");
    let relinked = stdout_ref(&out);
    assert_eq!(
        digest_of(&relinked),
        gos_digest(&skaffold, &repo, None),
        "the image is the one go builds from these sources"
    );
}

/// kodev's own OCI layout (`.kodev/` beside skaffold.yaml) does not make a clean tree dirty
/// for the default tagger: the second build is tagged with the commit like the first.
#[test]
fn the_oci_layout_kodev_writes_does_not_make_the_tree_dirty() {
    if !require_tools(&["docker-registry", "skopeo", "umoci", "git"]) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git").args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args).current_dir(app.path()),
        )
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "app"]);
    let commit = git(&["rev-parse", "--short", "HEAD"]).trim().to_string();
    for round in ["first", "second"] {
        let reference = stdout_ref(&build(&skaffold, &["--push=false"]));
        let tag = reference.split('@').next().unwrap().rsplit_once(':').unwrap().1.to_string();
        assert_eq!(tag, commit, "{round} build: {reference}");
    }
    assert!(app.path().join(".kodev/oci/index.json").is_file(), "the layout is where it is expected");
}

#[test]
fn a_one_shot_build_reuses_the_last_builds_chunks_and_gives_the_same_image() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    // Sources go has not compiled: the first build reads a recipe, so the next relinks.
    make_hello_unique(app.path());
    stdout_ref(&build(&skaffold, &["-d", &format!("{}/kept", fx.registry.host), "-t", "a"]));
    edit_hello(app.path());

    // The next process starts from the chunks the last one kept in the cache...
    let out = build_logged(&skaffold, &["-d", &format!("{}/kept", fx.registry.host), "-t", "b"]);
    let reused = stdout_ref(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chunks of this slot's last layer read from the cache"), "{stderr}");
    // Relinked without go: read while the linker ran, not after it.
    assert!(stderr.contains("relinked without the go command"), "{stderr}");
    let while_linking = stderr
        .split("chunks read while the linker runs chunks=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok());
    assert!(while_linking.is_some_and(|n| n > 0), "{stderr}");
    // What compressing ahead cut and keyed from kodev's own linker output, the layer takes as
    // it is: go's content ID goes into the head chunk, which is keyed again anyway.
    let count_after = |marker: &str| {
        stderr.split(marker).nth(1).and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
    };
    let keyed = count_after(" keyed=").unwrap_or(0);
    assert_eq!(count_after("keyed_ahead="), Some(keyed), "{stderr}");
    // ...and makes byte for byte the image a build with an empty cache makes.
    let empty_cache = tempfile::tempdir().unwrap();
    let out = build_in_cache(empty_cache.path(), &skaffold, &["-d", &format!("{}/fresh", fx.registry.host), "-t", "b"]);
    let fresh = stdout_ref(&out);
    assert_eq!(reused.split('@').nth(1), fresh.split('@').nth(1), "same source, same digest");
}

/// A `go` that writes down, for each `go build`, its GOARCH and GOMAXPROCS, then runs the real go.
fn recording_go(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let real_go = which("go").expect("go");
    let log = dir.join("go-builds.log");
    let script = dir.join("go");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = build ]; then echo \"$GOARCH ${{GOMAXPROCS:-unset}}\" >> '{}'; fi\nexec '{}' \"$@\"\n",
            log.display(),
            real_go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, log)
}

fn take_lines(log: &std::path::Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect();
    lines.sort();
    std::fs::remove_file(log).ok();
    lines
}

#[test]
fn platforms_relinking_together_share_the_cores_and_give_the_same_image() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = two_platform_hello(&fx, app.path(), "[linux/amd64, linux/arm64]");
    let tools = tempfile::tempdir().unwrap();
    let (go, log) = recording_go(tools.path());
    let cache = tempfile::tempdir().unwrap();
    let build_with = |cache: &std::path::Path, tag: &str, extra_env: Option<(&str, &str)>| {
        let mut cmd = kodev();
        // go's own builds are the subject here, not relinking without go.
        cmd.env("KODEV_CACHE_DIR", cache).env("KO_GO_PATH", &go).env_remove("GOMAXPROCS").env("KODEV_RELINK", "0");
        if let Some((k, v)) = extra_env {
            cmd.env(k, v);
        }
        stdout_ref(&run(cmd.arg("build").arg("-f").arg(&skaffold).args([
            "-d",
            &format!("{}/cores", fx.registry.host),
            "-t",
            tag,
        ])))
    };

    // First build: nothing built yet, so go keeps its default.
    build_with(cache.path(), "first", None);
    assert_eq!(take_lines(&log), ["amd64 unset", "arm64 unset"]);

    // After an edit both platforms relink: each go gets its share of the cores.
    edit_hello(app.path());
    let shared = build_with(cache.path(), "edit", None);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let share = (cores / 2).max(1);
    assert_eq!(take_lines(&log), [format!("amd64 {share}"), format!("arm64 {share}")]);

    // The same source built with go's defaults (an empty cache) is the same image.
    let fresh_cache = tempfile::tempdir().unwrap();
    let fresh = build_with(fresh_cache.path(), "edit", None);
    assert_eq!(take_lines(&log), ["amd64 unset", "arm64 unset"]);
    assert_eq!(shared.split('@').nth(1), fresh.split('@').nth(1), "the share does not change the image");

    // The user's GOMAXPROCS wins.
    let main_go = app.path().join("main.go");
    std::fs::write(&main_go, std::fs::read_to_string(&main_go).unwrap().replace("to listen on", "to serve on"))
        .unwrap();
    build_with(cache.path(), "user", Some(("GOMAXPROCS", "3")));
    assert_eq!(take_lines(&log), ["amd64 3", "arm64 3"]);
}

/// The digest of the image go makes of the sources as they are now: `kodev build` without
/// relinking, in a cache of its own (and through `go`, if given).
fn gos_digest(skaffold: &std::path::Path, repo: &str, go: Option<&std::path::Path>) -> String {
    let fresh = tempfile::tempdir().unwrap();
    let mut cmd = kodev();
    cmd.env("KODEV_CACHE_DIR", fresh.path()).env("KODEV_RELINK", "0").env_remove("GOFLAGS");
    // go as it runs by default: kodev turns its async preemption off otherwise, which must
    // not change a byte.
    cmd.env("GODEBUG", "asyncpreemptoff=0");
    if let Some(go) = go {
        cmd.env("KO_GO_PATH", go);
    }
    let reference = stdout_ref(&run(cmd.arg("build").arg("-f").arg(skaffold).args(["-d", repo])));
    reference.split('@').nth(1).expect("a digest").to_string()
}

#[test]
fn one_shot_builds_relink_main_package_edits_from_the_last_builds_recipe() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    let tools = tempfile::tempdir().unwrap();
    let (go, log) = recording_go(tools.path());
    let cache = tempfile::tempdir().unwrap();
    let build_with = |cache: &std::path::Path, go: &std::path::Path, env: &[(&str, &str)]| {
        let mut cmd = kodev();
        cmd.env("KODEV_CACHE_DIR", cache).env("KO_GO_PATH", go).env_remove("GOFLAGS").envs(env.iter().copied());
        let out = run(cmd.arg("build").arg("-f").arg(&skaffold).args(["-d", &format!("{}/relink", fx.registry.host)]));
        let reference = stdout_ref(&out);
        (reference.split('@').nth(1).expect("a digest").to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let gos_image = || {
        let digest = gos_digest(&skaffold, &format!("{}/relink", fx.registry.host), Some(&go));
        assert_eq!(take_lines(&log).len(), 1, "go built it");
        digest
    };

    // The first build runs go, which leaves its recipe beside the binary. (A recipe is read
    // from go compiling the main package: sources no other test built, so that go's cache
    // does not have it.)
    make_hello_unique(app.path());
    let main_go = app.path().join("main.go");
    build_with(cache.path(), &go, &[]);
    assert_eq!(take_lines(&log), ["amd64 unset"]);

    // The next process relinks an edit of main.go without go, into go's image.
    edit_hello(app.path());
    let (relinked, stderr) = build_with(cache.path(), &go, &[]);
    assert!(take_lines(&log).is_empty(), "no go build: {stderr}");
    assert!(stderr.contains("relinked without the go command"), "{stderr}");
    assert_eq!(relinked, gos_image(), "the relinked image is go's");

    // With nothing changed, the binary is seen to be up to date without go, and kept.
    let (unchanged, stderr) = build_with(cache.path(), &go, &[]);
    assert!(take_lines(&log).is_empty(), "no go build: {stderr}");
    assert!(!stderr.contains("relinked"), "{stderr}");
    assert_eq!(unchanged, relinked);

    // A recipe is for the environment that made it: another GOFLAGS (here a build tag that
    // brings in a file) runs go, and so does another go command.
    std::fs::write(
        app.path().join("tagged.go"),
        "//go:build extra\n\npackage main\n\nfunc init() { println(\"extra\") }\n",
    )
    .unwrap();
    let (tagged, _) = build_with(cache.path(), &go, &[("GOFLAGS", "-tags=extra")]);
    assert_eq!(take_lines(&log).len(), 1, "another GOFLAGS runs go");
    assert_ne!(tagged, relinked, "the tagged file is in");
    std::fs::write(&main_go, std::fs::read_to_string(&main_go).unwrap().replace("to listen on", "to serve on"))
        .unwrap();
    let other_tools = tempfile::tempdir().unwrap();
    let (other_go, other_log) = recording_go(other_tools.path());
    build_with(cache.path(), &other_go, &[]);
    assert_eq!(take_lines(&other_log).len(), 1, "another go command runs go");
    assert!(take_lines(&log).is_empty());

    // Relinking can be turned off.
    std::fs::write(&main_go, std::fs::read_to_string(&main_go).unwrap().replace("to serve on", "to bind")).unwrap();
    let (_, stderr) = build_with(cache.path(), &other_go, &[("KODEV_RELINK", "0")]);
    assert_eq!(take_lines(&other_log).len(), 1, "KODEV_RELINK=0 runs go: {stderr}");
}

#[test]
fn a_recipe_naming_a_package_gos_cache_lost_gives_way_to_go() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    // A package of this test's own (no other build shares its compiled form in go's cache).
    let nonce = format!("{:?}", std::time::SystemTime::now());
    std::fs::create_dir_all(app.path().join("lib")).unwrap();
    std::fs::write(
        app.path().join("lib/lib.go"),
        format!("package lib\n\nfunc Nonce() string {{ return {nonce:?} }}\n"),
    )
    .unwrap();
    let main_go = app.path().join("main.go");
    let source = std::fs::read_to_string(&main_go).unwrap();
    let source = source.replace("\"runtime\"\n", "\"runtime\"\n\n\t\"example.com/hello/lib\"\n");
    std::fs::write(&main_go, source.replace("flag.Parse()", "flag.Parse()\n\t_ = lib.Nonce()")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let build = || {
        let out = run(kodev()
            .env("KODEV_CACHE_DIR", cache.path())
            .env("KODEV_LOG", "kodev=debug")
            .arg("build")
            .arg("-f")
            .arg(&skaffold)
            .args(["-d", &format!("{}/lost", fx.registry.host)]));
        (stdout_ref(&out), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // The first build compiles lib and main in one go run, and names lib by its place in that
    // run's work directory (gone since); the recipe names it in go's cache, and the edit relinks.
    build();
    edit_hello(app.path());
    let (_, stderr) = build();
    assert!(stderr.contains("relinked without go"), "{stderr}");

    // go's cache loses lib's compiled form (trimmed, or `go clean -cache`), which the recipe names.
    let go = which("go").expect("go");
    let export = run(Command::new(&go)
        .args(["list", "-export", "-trimpath", "-f", "{{.Export}}", "./lib"])
        .env("CGO_ENABLED", "0")
        .current_dir(app.path()));
    let export = String::from_utf8_lossy(&export.stdout).trim().to_string();
    std::fs::remove_file(&export).unwrap_or_else(|e| panic!("{export}: {e}"));
    let main_source = std::fs::read_to_string(&main_go).unwrap();
    std::fs::write(&main_go, main_source.replace("to listen on", "to serve on")).unwrap();
    let (image, stderr) = build();
    assert!(stderr.contains("recipe dropped"), "go built it, the recipe is dropped: {stderr}");
    let gos = gos_digest(&skaffold, &format!("{}/lost", fx.registry.host), None);
    assert_eq!(image.split('@').nth(1), Some(gos.as_str()), "go's image");

    // The next build records a new recipe, and the edit after it is relinked again.
    std::fs::write(&main_go, main_source.replace("to listen on", "to bind")).unwrap();
    let (_, stderr) = build();
    assert!(stderr.contains("recipe for relinking captured"), "{stderr}");
    std::fs::write(&main_go, main_source.replace("to listen on", "to accept on")).unwrap();
    let (_, stderr) = build();
    assert!(stderr.contains("relinked without go"), "{stderr}");
}

#[test]
fn chunk_files_left_half_written_by_a_killed_process_are_removed() {
    if !require_tools(TOOLS) {
        return;
    }
    let fx = fixture();
    let app = tempfile::tempdir().unwrap();
    let skaffold = single_platform_hello(&fx, app.path());
    let cache = tempfile::tempdir().unwrap();
    let chunks = cache.path().join("chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    // What a process killed while keeping its layer's chunks leaves: a temporary file never renamed.
    let stale = chunks.join(".tmpKILLED");
    let in_progress = chunks.join(".tmpWRITING");
    std::fs::write(&stale, vec![7u8; 1 << 20]).unwrap();
    std::fs::write(&in_progress, b"another process is writing this").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(an_hour_ago).unwrap();

    let out = build_in_cache(cache.path(), &skaffold, &["-d", &format!("{}/swept", fx.registry.host), "-t", "a"]);
    stdout_ref(&out);
    assert!(!stale.exists(), "a leftover of a killed process is removed");
    assert!(in_progress.exists(), "a recent temporary file may be another process's write: kept");
    let kept: Vec<String> = std::fs::read_dir(&chunks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(".tmp"))
        .collect();
    assert_eq!(kept.len(), 1, "this build's chunks are kept as usual: {kept:?}");
}
