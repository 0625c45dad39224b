//! `kodev plan --json` on real-world style configs: a Knative-style repo with ko:// images,
//! a monorepo with profiles and requires, an old apiVersion file.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn plan(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = kodev();
    cmd.current_dir(repo_root()).arg("plan").arg("--json").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "kodev plan {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("plan prints JSON")
}

fn artifact<'a>(plan: &'a Value, image: &str) -> &'a Value {
    plan["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["image"] == image)
        .unwrap_or_else(|| panic!("{image} in {plan:#}"))
}

#[test]
fn knative_style_ko_images_use_gcp_multi_level_naming() {
    if !require_tools(&["go"]) {
        return;
    }
    let p = plan(
        &["-f", "tests/fixtures/knative/skaffold.yaml", "-d", "gcr.io/knative-releases"],
        &[("SERVING_VERSION", "1.16.0")],
    );
    let activator = artifact(&p, "ko://knative.dev/serving/cmd/activator");
    assert_eq!(activator["imageName"], "gcr.io/knative-releases/knative.dev/serving/cmd/activator");
    assert_eq!(activator["tag"], "v1.16.0", "envTemplate tagger");
    assert_eq!(activator["importPath"], "knative.dev/serving/cmd/activator");
    assert_eq!(activator["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
    let args: Vec<String> =
        activator["goBuild"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert!(args.contains(&"-v".to_string()), "flags from the anchor: {args:?}");
    assert!(
        args.iter().any(|a| a == "-ldflags=-s -w -X knative.dev/serving/pkg/reconciler.version=v1.16.0"),
        "{args:?}"
    );
    let webhook = artifact(&p, "ko://knative.dev/serving/cmd/webhook");
    assert_eq!(webhook["platforms"], serde_json::json!(["linux/arm64"]), "build.platforms ∩ artifact platforms");
    assert_eq!(artifact(&p, "ko://knative.dev/serving/cmd/controller")["goBuild"]["args"][1], "-v", "merge key");

    // Flattened under a non-GCP repo.
    let p =
        plan(&["-f", "tests/fixtures/knative/skaffold.yaml", "-d", "127.0.0.1:5000/dev"], &[("SERVING_VERSION", "1")]);
    assert_eq!(
        artifact(&p, "ko://knative.dev/serving/cmd/webhook")["imageName"],
        "127.0.0.1:5000/dev/knative_dev_serving_cmd_webhook"
    );

    // Without a default repo, ko:// images cannot be named: a clear error, exit 2.
    let out = run(kodev().current_dir(repo_root()).env("SERVING_VERSION", "1").args([
        "build",
        "-f",
        "tests/fixtures/knative/skaffold.yaml",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a repository"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn monorepo_profiles_patches_activation_and_requires() {
    if !require_tools(&["go"]) {
        return;
    }
    let base = plan(
        &["-f", "tests/fixtures/monorepo/skaffold-profiles.yaml", "-d", "127.0.0.1:5000/dev"],
        &[("SERVING_VERSION", "2")],
    );
    assert_eq!(base["artifacts"].as_array().unwrap().len(), 4, "alpha + the three required knative images");
    assert_eq!(artifact(&base, "alpha")["platforms"], serde_json::json!(["linux/amd64"]));

    let arm = plan(
        &["-f", "tests/fixtures/monorepo/skaffold-profiles.yaml", "-d", "127.0.0.1:5000/dev", "-p", "arm"],
        &[("SERVING_VERSION", "2"), ("KODEV_TEST_CI_PROFILE", "on")],
    );
    assert_eq!(artifact(&arm, "alpha")["platforms"], serde_json::json!(["linux/arm64"]), "patch add");
    assert_eq!(artifact(&arm, "beta")["importPath"], "example.com/mono/cmd/beta", "patch append");
    assert_eq!(artifact(&arm, "alpha")["tag"], "latest", "env-activated profile's sha256 tagger");

    let out = run(kodev().current_dir(repo_root()).args([
        "plan",
        "-f",
        "tests/fixtures/monorepo/skaffold-profiles.yaml",
        "-p",
        "nope",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("profile \"nope\" is not defined"));
}

#[test]
fn old_api_version_moves_ko_platforms_to_the_artifact() {
    if !require_tools(&["go"]) {
        return;
    }
    let p = plan(&["-f", "tests/fixtures/monorepo/skaffold-v2beta26.yaml", "-t", "old"], &[]);
    let a = artifact(&p, "Alpha-Old");
    assert_eq!(a["imageName"], "alpha-old", "sanitized");
    assert_eq!(a["platforms"], serde_json::json!(["linux/arm64"]));
    assert_eq!(a["baseImage"], "gcr.io/distroless/static:nonroot");
    assert_eq!(a["tag"], "old");
    assert_eq!(
        a["goBuild"]["platformEnv"]["linux/arm64"],
        serde_json::json!(["CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"])
    );
}

#[test]
fn ko_yaml_defaults_per_build_settings_and_base_precedence() {
    if !require_tools(&["go"]) {
        return;
    }
    let p = plan(&["-f", "tests/fixtures/koyaml/skaffold.yaml"], &[]);
    let api = artifact(&p, "api");
    assert_eq!(api["baseImage"], "registry.example.com/base/default:v1", "defaultBaseImage");
    assert_eq!(api["platforms"], serde_json::json!(["linux/arm64", "linux/amd64"]), "defaultPlatforms");
    assert_eq!(api["goBuild"]["env"], serde_json::json!(["FROM_BUILD=1"]), "per-build env replaces defaultEnv");
    let args = api["goBuild"]["args"].to_string();
    assert!(args.contains("-tags=defaults") && args.contains("-ldflags=-X main.source=build"), "{args}");
    let tool = artifact(&p, "tool");
    assert_eq!(tool["baseImage"], "registry.example.com/base/tool:v2", "baseImageOverrides beats fromImage");
    assert_eq!(tool["goBuild"]["env"], serde_json::json!(["FROM_DEFAULT=1"]));
    let pinned = artifact(&p, "pinned");
    assert_eq!(pinned["baseImage"], "registry.example.com/base/from-skaffold:v3", "fromImage beats defaultBaseImage");
    assert!(pinned["goBuild"]["args"].to_string().contains("\"-v\""), "skaffold flags beat .ko.yaml");

    // KO_CONFIG_PATH points elsewhere: that file wins over the one beside the module.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(".ko.yaml"), "defaultBaseImage: registry.example.com/elsewhere:v9\n").unwrap();
    let p = plan(&["-f", "tests/fixtures/koyaml/skaffold.yaml"], &[("KO_CONFIG_PATH", other.path().to_str().unwrap())]);
    assert_eq!(artifact(&p, "api")["baseImage"], "registry.example.com/elsewhere:v9");
    assert_eq!(artifact(&p, "api")["platforms"], serde_json::json!(["linux/amd64"]));
}

/// As in Skaffold, each of its flags can be given as `SKAFFOLD_` + the flag's name (a flag on
/// the command line wins), and `skaffold.env` in the directory kodev runs in sets the
/// variables that are not set already, before the flags are read.
#[test]
fn skaffold_flags_come_from_the_environment_and_from_skaffold_env() {
    if !require_tools(&["go"]) {
        return;
    }
    let monorepo = repo_root().join("tests/fixtures/monorepo/skaffold-profiles.yaml");
    let from_env = [
        ("SKAFFOLD_FILENAME", monorepo.to_str().unwrap()),
        ("SKAFFOLD_PROFILE", "arm,nothing-else"),
        ("SKAFFOLD_TAG", "from-env"),
        ("SERVING_VERSION", "2"),
    ];
    // `nothing-else` is no profile of that file: the comma-separated list is split, and each
    // name is looked for.
    let out = run(kodev().current_dir(repo_root()).envs(from_env).args(["plan", "--json", "-d", "127.0.0.1:5000/dev"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("profile \"nothing-else\" is not defined"), "{stderr}");

    let mut env = from_env;
    env[1] = ("SKAFFOLD_PROFILE", "arm");
    let p = plan(&["-d", "127.0.0.1:5000/dev"], &env);
    assert_eq!(artifact(&p, "alpha")["platforms"], serde_json::json!(["linux/arm64"]), "SKAFFOLD_PROFILE=arm");
    assert_eq!(artifact(&p, "alpha")["tag"], "from-env", "SKAFFOLD_TAG");
    let p = plan(&["-d", "127.0.0.1:5000/dev", "-t", "from-flag"], &env);
    assert_eq!(artifact(&p, "alpha")["tag"], "from-flag", "the flag beats SKAFFOLD_TAG");
    // Set but empty (a CI job's unset input): as if unset, the tag policy's tag.
    env[2] = ("SKAFFOLD_TAG", "");
    let p = plan(&["-d", "127.0.0.1:5000/dev"], &env);
    let tag = artifact(&p, "alpha")["tag"].as_str().unwrap().to_string();
    assert!(!tag.is_empty() && tag != "from-env", "the tag policy's (gitCommit) tag: {tag}");

    // skaffold.env in the directory kodev runs in: below the process's own variables.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("skaffold.env"),
        format!("# for kodev\nSKAFFOLD_FILENAME={}\nSKAFFOLD_TAG=from-file\nSERVING_VERSION=2\n", monorepo.display()),
    )
    .unwrap();
    let planned = |env: &[(&str, &str)]| {
        let out = run(kodev().current_dir(dir.path()).envs(env.iter().copied()).args([
            "plan",
            "--json",
            "-d",
            "127.0.0.1:5000/dev",
        ]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(artifact(&planned(&[]), "alpha")["tag"], "from-file");
    assert_eq!(
        artifact(&planned(&[("SKAFFOLD_TAG", "from-env")]), "alpha")["tag"],
        "from-env",
        "the process's own wins"
    );

    // A line it cannot read stops kodev, naming the file and line.
    std::fs::write(dir.path().join("skaffold.env"), "SKAFFOLD_TAG=ok\nnot a setting\n").unwrap();
    let out = run(kodev().current_dir(dir.path()).args(["plan"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("skaffold.env:2: expected KEY=value"), "{stderr}");
}

/// ko's settings in the environment (`KO_DEFAULTBASEIMAGE` and the other `KO_` + key
/// variables ko's viper reads) beat `.ko.yaml`'s defaults; a build's own lists, skaffold.yaml's
/// own values and `baseImageOverrides` still win, as in ko under Skaffold.
#[test]
fn ko_settings_in_the_environment_beat_the_ko_yaml_defaults() {
    if !require_tools(&["go"]) {
        return;
    }
    let env = [
        ("KO_DEFAULTBASEIMAGE", "registry.example.com/base/from-env:v7"),
        ("KO_DEFAULTPLATFORMS", "linux/s390x,linux/amd64"),
        ("KO_DEFAULTENV", "FROM_ENV=1 ALSO=2"),
        ("KO_DEFAULTLDFLAGS", "-s -w"),
    ];
    let p = plan(&["-f", "tests/fixtures/koyaml/skaffold.yaml"], &env);
    let api = artifact(&p, "api");
    assert_eq!(api["baseImage"], "registry.example.com/base/from-env:v7", "KO_DEFAULTBASEIMAGE beats defaultBaseImage");
    assert_eq!(api["platforms"], serde_json::json!(["linux/s390x", "linux/amd64"]), "KO_DEFAULTPLATFORMS");
    assert_eq!(api["goBuild"]["env"], serde_json::json!(["FROM_BUILD=1"]), "the build's own env beats KO_DEFAULTENV");
    let args = api["goBuild"]["args"].to_string();
    assert!(args.contains("-tags=defaults") && args.contains("-ldflags=-X main.source=build"), "{args}");
    let tool = artifact(&p, "tool");
    assert_eq!(tool["baseImage"], "registry.example.com/base/tool:v2", "baseImageOverrides beats both");
    assert_eq!(tool["goBuild"]["env"], serde_json::json!(["FROM_ENV=1", "ALSO=2"]), "KO_DEFAULTENV beats defaultEnv");
    assert!(tool["goBuild"]["args"].to_string().contains("\"-ldflags=-s -w\""), "{}", tool["goBuild"]["args"]);
    let pinned = artifact(&p, "pinned");
    assert_eq!(
        pinned["baseImage"], "registry.example.com/base/from-skaffold:v3",
        "fromImage beats KO_DEFAULTBASEIMAGE"
    );

    // Without any .ko.yaml the variables still count.
    assert!(!repo_root().join("examples/hello/.ko.yaml").exists());
    let p = plan(&["-f", "examples/hello/skaffold.yaml"], &env);
    assert_eq!(artifact(&p, "hello")["baseImage"], "registry.example.com/base/from-env:v7");
    assert_eq!(artifact(&p, "hello")["goBuild"]["env"], serde_json::json!(["FROM_ENV=1", "ALSO=2"]));

    // A value ko would refuse is a usage error naming the variable.
    for (name, value, problem) in [
        ("KO_DEFAULTPLATFORMS", "linux/amd64/v9/x", "invalid platform"),
        ("KO_DEFAULTENV", "NOEQ", "must be KEY=value"),
        ("KO_DEFAULTBASEIMAGE", "UPPER/Case::x", "invalid image reference"),
    ] {
        let out = run(kodev().current_dir(repo_root()).env(name, value).args([
            "plan",
            "-f",
            "tests/fixtures/koyaml/skaffold.yaml",
        ]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(&format!("kodev: {name}: ")) && stderr.contains(problem), "{name}={value}: {stderr}");
    }
}

/// ko's template values: `.Date` and `.Timestamp` are the creation time (`SOURCE_DATE_EPOCH`
/// when set, so a reproducible build stays reproducible), and `.Git` has ko's full set.
#[test]
fn templates_see_kos_creation_time_and_git_values() {
    if !require_tools(&["go", "git"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/monorepo"), dir.path());
    let ldflags = "-X main.d={{.Date}} -X main.t={{.Timestamp}} -X main.g={{.Git.TreeState}},{{.Git.IsClean}},\
                   {{.Git.IsDirty}},{{.Git.Tag}},{{.Git.CommitDate}},{{.Git.CommitTimestamp}}";
    std::fs::write(dir.path().join(".ko.yaml"), format!("builds:\n- main: ./cmd/alpha\n  ldflags: \"{ldflags}\"\n"))
        .unwrap();
    let skaffold = dir.path().join("skaffold.yaml");
    let alpha_ldflags = |env: &[(&str, &str)]| {
        let p = plan(&["-f", skaffold.to_str().unwrap(), "-t", "x"], env);
        let args = artifact(&p, "alpha")["goBuild"]["args"].clone();
        args.as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix("-ldflags=").map(str::to_string))
            .collect::<String>()
    };
    // Not a git work tree: ko's empty and zero values.
    assert_eq!(
        alpha_ldflags(&[("SOURCE_DATE_EPOCH", "1700000000")]),
        "-X main.d=2023-11-14T22:13:20Z -X main.t=1700000000 -X main.g=clean,true,false,,0001-01-01T00:00:00Z,-62135596800"
    );
    let git = |args: &[&str]| {
        run_ok(Command::new("git").args(args).current_dir(dir.path()).envs([
            ("GIT_AUTHOR_DATE", "2024-02-03T04:05:06Z"),
            ("GIT_COMMITTER_DATE", "2024-02-03T04:05:06Z"),
            ("GIT_AUTHOR_NAME", "t"),
            ("GIT_AUTHOR_EMAIL", "t@example.com"),
            ("GIT_COMMITTER_NAME", "t"),
            ("GIT_COMMITTER_EMAIL", "t@example.com"),
        ]))
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    // No tag yet: ko's v0.0.0; the commit's own date.
    assert_eq!(
        alpha_ldflags(&[("SOURCE_DATE_EPOCH", "1700000000")]),
        "-X main.d=2023-11-14T22:13:20Z -X main.t=1700000000 -X main.g=clean,true,false,v0.0.0,2024-02-03T04:05:06Z,1706933106"
    );
    // ko's .Env is the build's environment: the build's own env entries, cgo off.
    std::fs::write(
        dir.path().join(".ko.yaml"),
        "builds:\n- main: ./cmd/alpha\n  env: [VERSION=1.2.3]\n  ldflags: \"-X main.v={{.Env.VERSION}} -X main.c={{.Env.CGO_ENABLED}}\"\n",
    )
    .unwrap();
    assert_eq!(alpha_ldflags(&[]), "-X main.v=1.2.3 -X main.c=0");
    // …and each platform's GOOS/GOARCH (ko expands flags for each platform it builds): the
    // plan shows each platform's arguments, the first platform's as the artifact's.
    std::fs::write(
        dir.path().join(".ko.yaml"),
        "builds:\n- main: ./cmd/alpha\n  ldflags: \"-X main.p={{.Env.GOOS}}/{{.Env.GOARCH}}{{with .Env.GOARM}}/v{{.}}{{end}}\"\n",
    )
    .unwrap();
    let p = plan(&["-f", skaffold.to_str().unwrap(), "-t", "x", "--platform", "linux/arm/v6,linux/amd64"], &[]);
    let go_build = &artifact(&p, "alpha")["goBuild"];
    let ldflags_of = |args: &serde_json::Value| {
        args.as_array().unwrap().iter().find_map(|a| a.as_str()?.strip_prefix("-ldflags=").map(str::to_string)).unwrap()
    };
    assert_eq!(ldflags_of(&go_build["args"]), "-X main.p=linux/arm/v6");
    assert_eq!(ldflags_of(&go_build["platformArgs"]["linux/arm/v6"]), "-X main.p=linux/arm/v6");
    assert_eq!(ldflags_of(&go_build["platformArgs"]["linux/amd64"]), "-X main.p=linux/amd64");
    assert!(artifact(&p, "beta")["goBuild"].get("platformArgs").is_none(), "beta's flags are the same everywhere");
    std::fs::write(dir.path().join(".ko.yaml"), format!("builds:\n- main: ./cmd/alpha\n  ldflags: \"{ldflags}\"\n"))
        .unwrap();
    git(&["tag", "v1.2.3"]);
    std::fs::write(dir.path().join("untracked.txt"), "x").unwrap();
    assert!(alpha_ldflags(&[("SOURCE_DATE_EPOCH", "1700000000")])
        .ends_with("main.g=dirty,false,true,v1.2.3,2024-02-03T04:05:06Z,1706933106"));
}

/// `.ko.yaml` builds apply to the package their `dir` and `main` name, as ko matches them: a
/// `main` naming a source file stands for its package, and a package whose import path merely
/// ends the same way is another package.
#[test]
fn ko_yaml_builds_apply_to_the_package_their_dir_and_main_name() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/monorepo"), dir.path());
    // A second package called beta, at the top: `./beta` is not cmd/beta.
    std::fs::create_dir_all(dir.path().join("beta")).unwrap();
    std::fs::write(dir.path().join("beta/main.go"), "package main\n\nfunc main() {}\n").unwrap();
    std::fs::write(
        dir.path().join(".ko.yaml"),
        "builds:\n- id: alpha\n  main: ./cmd/alpha/main.go\n  ldflags: -X main.v=alpha\n\
         - id: top-beta\n  main: ./beta\n  ldflags: -X main.v=top-beta\n",
    )
    .unwrap();
    let args = |p: &Value, image: &str| artifact(p, image)["goBuild"]["args"].to_string();
    let p = plan(&["-f", dir.path().join("skaffold.yaml").to_str().unwrap()], &[]);
    assert!(args(&p, "alpha").contains("-ldflags=-X main.v=alpha"), "{}", args(&p, "alpha"));
    assert!(!args(&p, "beta").contains("top-beta"), "cmd/beta is not ./beta: {}", args(&p, "beta"));

    // Via `dir`; and a build's empty list is none, so the default applies (ko's `len == 0`).
    std::fs::write(
        dir.path().join(".ko.yaml"),
        "defaultFlags: [-v]\nbuilds:\n- id: beta\n  dir: ./cmd/beta\n  ldflags: -X main.v=b\n  flags: []\n",
    )
    .unwrap();
    let p = plan(&["-f", dir.path().join("skaffold.yaml").to_str().unwrap()], &[]);
    assert!(args(&p, "beta").contains("-ldflags=-X main.v=b"), "{}", args(&p, "beta"));
    assert!(args(&p, "beta").contains("\"-v\""), "{}", args(&p, "beta"));
    // A build naming nothing that exists is refused, as ko refuses it.
    std::fs::write(dir.path().join(".ko.yaml"), "builds:\n- id: gone\n  main: ./cmd/gone\n").unwrap();
    let out = run(kodev().arg("plan").arg("-f").arg(dir.path().join("skaffold.yaml")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(".ko.yaml:3 (field builds[0].main)") && stderr.contains("cmd/gone"), "{stderr}");
}

/// What is wrong in a `.ko.yaml` is said with that file, its line and its field (not the
/// skaffold.yaml artifact the setting reached), before any build, with exit code 2.
#[test]
fn ko_yaml_errors_name_the_ko_yaml_line_and_field() {
    if !require_tools(&["go"]) {
        return;
    }
    let cases = [
        ("defaultEnv: [NOEQ]\n", ":1 (field defaultEnv)", "must be KEY=value"),
        (
            "builds:\n  - id: other\n    main: ./cmd/tool\n  - id: api\n    main: ./cmd/api\n    env: [OK=1, NOEQ]\n",
            ":6 (field builds[1].env)",
            "must be KEY=value",
        ),
        ("defaultLdflags: [\"-X main.v={{.Foo\"]\n", ":1 (field defaultLdflags)", "unclosed template action"),
        ("defaultFlags: [-toolexec=/bin/x]\n", ":1 (field defaultFlags)", "-toolexec is refused"),
        ("\ndefaultBaseImage: \"UPPER/Case::x\"\n", ":2 (field defaultBaseImage)", "invalid image reference"),
        (
            "baseImageOverrides:\n  example.com/kocfg/cmd/tool: \"a b\"\n",
            ":2 (field baseImageOverrides.example.com/kocfg/cmd/tool)",
            "invalid image reference",
        ),
        ("defaultPlatforms:\n  - linux/amd64/v9/x\n", ":1 (field defaultPlatforms)", "invalid platform"),
    ];
    for (text, place, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        let ko_yaml = dir.path().join(".ko.yaml");
        std::fs::write(&ko_yaml, text).unwrap();
        let out = run(kodev().current_dir(repo_root()).env("KO_CONFIG_PATH", &ko_yaml).args([
            "plan",
            "-f",
            "tests/fixtures/koyaml/skaffold.yaml",
        ]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(&format!("{}{place}", ko_yaml.display())), "{text}: {stderr}");
        assert!(stderr.contains(problem), "{text}: {stderr}");
    }

    // A skaffold.yaml fromImage that is no reference is said there, on its own line.
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/koyaml"), dir.path());
    let skaffold = dir.path().join("skaffold.yaml");
    let text = std::fs::read_to_string(&skaffold)
        .unwrap()
        .replace("registry.example.com/base/from-skaffold:v3", "\"bad ref::\"");
    std::fs::write(&skaffold, text).unwrap();
    let out = run(kodev().arg("plan").arg("-f").arg(&skaffold));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("skaffold.yaml:15 (field build.artifacts[2].ko.fromImage)"), "{stderr}");
}

/// Only settings that read what changes during a session (git, the clock, the tag) are
/// expanded again by `kodev dev`: the others keep their load-time values, and their builds do
/// not wait for the tag.
#[test]
fn only_settings_that_read_what_changes_are_expanded_again() {
    if !require_tools(&["go"]) {
        return;
    }
    for (ko_block, expanded_again) in [
        ("        ldflags: [\"-X main.v={{.IMAGE_REPO}}\"]\n", false),
        ("        env: [\"A={{.HOME}}\"]\n        labels:\n          a: \"{{.IMAGE_NAME}}\"\n", false),
        ("        ldflags: [\"-X main.v={{.IMAGE_TAG}}\"]\n", true),
        ("        labels:\n          built: \"{{.Date}}\"\n", true),
        ("        flags: [\"-tags={{.Git.Branch}}\"]\n", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let skaffold = hello_app(dir.path(), ko_block, "");
        let options = kodev::config::LoadOptions { file: skaffold, push: Some(false), ..Default::default() };
        let plan = kodev::config::load(&options).unwrap();
        assert_eq!(plan.artifacts[0].retemplate.is_some(), expanded_again, "{ko_block}");
    }
}

/// A default repo that makes image names invalid is said to be the problem, not the image's
/// line in skaffold.yaml (which is fine), with exit code 2.
#[test]
fn an_invalid_default_repo_is_named_as_the_problem() {
    if !require_tools(&["go"]) {
        return;
    }
    for (args, env) in [(&["-d", "Bad Repo"][..], None), (&[][..], Some(("KO_DOCKER_REPO", "127.0.0.1:5000/Upper")))] {
        let mut cmd = kodev();
        cmd.current_dir(repo_root()).args(["plan", "-f", "examples/hello/skaffold.yaml"]).args(args);
        cmd.env_remove("SKAFFOLD_DEFAULT_REPO").env_remove("KO_DOCKER_REPO");
        if let Some((name, value)) = env {
            cmd.env(name, value);
        }
        let out = run(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("default repo"), "{stderr}");
        assert!(!stderr.contains("skaffold.yaml:"), "{stderr}");
    }
}

/// Profiles turn on as in Skaffold: `activation.kubeContext` against kubeconfig's current
/// context (or `--kube-context`), env and command values as regular expressions (`!` negates,
/// an empty value means unset), and `-p -NAME` turns off what activation turned on.
#[test]
fn profiles_activate_by_kube_context_and_regular_expressions_as_in_skaffold() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    let profiles = "profiles:\n  - name: on-kind\n    activation: [{kubeContext: \"kind-.*\"}]\n    build: {tagPolicy: {envTemplate: {template: kind}}}\n  - name: not-prod\n    activation: [{env: \"STAGE=!prod\", command: \"^bu\"}]\n    build: {platforms: [linux/arm64]}\n";
    std::fs::write(&skaffold, std::fs::read_to_string(&skaffold).unwrap() + profiles).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\ncurrent-context: kind-dev\n").unwrap();
    let planned = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = kodev();
        cmd.env("KUBECONFIG", &kubeconfig).env_remove("STAGE").envs(env.iter().copied());
        let out = run(cmd.args(["plan", "--json", "-d", "127.0.0.1:5000/x", "-f"]).arg(&skaffold).args(args));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let p: Value = serde_json::from_slice(&out.stdout).unwrap();
        let hello = artifact(&p, "hello");
        (hello["tag"].as_str().unwrap().to_string(), hello["platforms"][0].as_str().unwrap().to_string())
    };
    let (tag, platform) = planned(&[], &[]);
    assert_eq!(tag, "kind", "kubeconfig's current context kind-dev matches kind-.*");
    assert_eq!(platform, "linux/arm64", "STAGE unset is !prod, and the build command matches ^bu");
    assert_eq!(planned(&["--kube-context", "gke-prod"], &[]).0, "latest", "--kube-context wins; kind-.* does not hold");
    assert_eq!(planned(&["-p", "-on-kind"], &[]).0, "latest", "-p -NAME turns the profile off");
    assert_eq!(planned(&[], &[("KUBECONFIG", "/nonexistent")]).0, "latest", "no kubeconfig: no context");
    assert_eq!(planned(&[], &[("STAGE", "prod")]).1, "linux/amd64", "!prod does not hold for prod");
    assert_eq!(planned(&[], &[("STAGE", "production")]).1, "linux/amd64", "matched anywhere, as Go's MatchString");
    assert_eq!(planned(&[], &[("STAGE", "dev")]).1, "linux/arm64");

    // An env condition that is not KEY=VALUE is an error naming it.
    let text = std::fs::read_to_string(&skaffold).unwrap().replace("STAGE=!prod", "STAGE");
    std::fs::write(&skaffold, text).unwrap();
    let out = run(kodev().args(["plan", "-f"]).arg(&skaffold));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(field profiles[1].activation[0].env)") && stderr.contains("KEY=VALUE"), "{stderr}");
}

/// Skaffold's global config (`skaffold config set default-repo …`) gives the default repo for
/// the context in use, below `-d` and `SKAFFOLD_DEFAULT_REPO`, above kodev's `KO_DOCKER_REPO`.
#[test]
fn the_default_repo_comes_from_skaffolds_global_config_for_the_context() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    let config = dir.path().join("skaffold-global");
    std::fs::write(
        &config,
        "global:\n  default-repo: 127.0.0.1:5000/everyone\n  update-check: false\nkubeContexts:\n  - kube-context: kind-dev\n    default-repo: 127.0.0.1:5000/kind\n",
    )
    .unwrap();
    let image = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = kodev();
        cmd.env("SKAFFOLD_CONFIG", &config).envs(env.iter().copied());
        let out = run(cmd.args(["plan", "--json", "-f"]).arg(&skaffold).args(args));
        assert!(out.status.success(), "{args:?} {env:?}: {}", String::from_utf8_lossy(&out.stderr));
        let p: Value = serde_json::from_slice(&out.stdout).unwrap();
        artifact(&p, "hello")["imageName"].as_str().unwrap().to_string()
    };
    assert_eq!(image(&[], &[]), "127.0.0.1:5000/everyone/hello", "no context: the global entry");
    assert_eq!(image(&["--kube-context", "kind-dev"], &[]), "127.0.0.1:5000/kind/hello");
    assert_eq!(image(&["--kube-context", "other"], &[]), "127.0.0.1:5000/everyone/hello");
    assert_eq!(image(&[], &[("KO_DOCKER_REPO", "127.0.0.1:5000/ko")]), "127.0.0.1:5000/everyone/hello");
    assert_eq!(image(&[], &[("SKAFFOLD_DEFAULT_REPO", "127.0.0.1:5000/env")]), "127.0.0.1:5000/env/hello");
    assert_eq!(image(&["-d", "127.0.0.1:5000/flag"], &[]), "127.0.0.1:5000/flag/hello");
    let other = dir.path().join("other-config");
    std::fs::write(&other, "global:\n  default-repo: 127.0.0.1:5000/other\n").unwrap();
    assert_eq!(image(&["-c", other.to_str().unwrap()], &[]), "127.0.0.1:5000/other/hello", "-c beats SKAFFOLD_CONFIG");
}

/// `kodev build --dry-run`, as `skaffold build --dry-run`: the references the build would
/// make, on stdout and in `--file-output`, with nothing built or pushed.
#[test]
fn a_dry_run_names_the_images_and_builds_nothing() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    let output = dir.path().join("builds.json");
    // Port 9 refuses connections: a push would fail.
    let out = run(kodev()
        .args(["build", "--dry-run", "-d", "127.0.0.1:9/dry", "-t", "v1", "-f"])
        .arg(&skaffold)
        .arg("--file-output")
        .arg(&output));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "127.0.0.1:9/dry/hello:v1\n");
    assert!(!stderr.contains("go build"), "nothing was built: {stderr}");
    let written: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(written, serde_json::json!({"builds": [{"imageName": "hello", "tag": "127.0.0.1:9/dry/hello:v1"}]}));
    assert!(!dir.path().join(".kodev/oci").exists(), "no layout was written");
}

/// `kodev build -q` and `-o TEMPLATE`, as `skaffold build`'s: quiet prints nothing but errors
/// on stderr and Skaffold's `{{json .}}` of the builds on stdout (what `skaffold deploy
/// --build-artifacts -` reads); `-o` (or `SKAFFOLD_OUTPUT`) formats stdout with a Go template
/// over `{Builds: [{ImageName, Tag}]}`; a template that cannot work is a usage error before
/// anything is built.
#[test]
fn quiet_builds_print_skaffolds_build_output_and_templates_format_it() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    let layout = dir.path().join("layout");
    let build = |args: &[&str], env: &[(&str, &str)]| {
        run(kodev()
            .arg("build")
            .arg("-f")
            .arg(&skaffold)
            .arg("--oci-layout")
            .arg(&layout)
            .args(args)
            .envs(env.to_vec()))
    };
    let out = build(&["-q", "-t", "quiet"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "", "quiet: no progress");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference = printed["builds"][0]["tag"].as_str().unwrap().to_string();
    assert!(reference.starts_with("hello:quiet@sha256:"), "{printed}");
    assert_eq!(printed, serde_json::json!({"builds": [{"imageName": "hello", "tag": reference}]}));
    // Not quiet: the same image (reproducible), its reference alone on stdout, progress on stderr.
    let out = build(&["-t", "quiet"], &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), reference);
    assert!(String::from_utf8_lossy(&out.stderr).contains("go build"));

    let template = "{{range $i, $b := .Builds}}{{if $i}},{{end}}{{$b.ImageName | upper}}={{$b.Tag}}{{end}}";
    let out = build(&["--dry-run", "-t", "t", "-o", template], &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO=hello:t\n");
    let out = build(&["--dry-run", "-t", "t"], &[("SKAFFOLD_OUTPUT", "{{len .Builds}} {{json (index .Builds 0)}}")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 {\"imageName\":\"hello\",\"tag\":\"hello:t\"}\n");

    for (bad, problem) in [
        ("{{range .Builds}}", "has no {{end}}"),
        ("{{range .Builds}}{{.Digest}}{{end}}", "no field Digest here: there are ImageName, Tag"),
        ("{{.Builds.Tag}}", "can't evaluate field Tag"),
    ] {
        let out = build(&["-t", "bad", "-o", bad], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("-o/--output: ") && stderr.contains(problem), "{bad}: {stderr}");
        assert!(!stderr.contains("go build"), "nothing was built: {stderr}");
    }
}

/// Skaffold's customTemplate tagger: its components by name, and its own `SHA`.
#[test]
fn a_custom_template_tag_is_made_from_its_components() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    let text = std::fs::read_to_string(&skaffold).unwrap().replace(
        "build:\n",
        "build:\n  tagPolicy:\n    customTemplate:\n      template: \"{{.REL}}_{{.SHA}}\"\n      components:\n        - name: REL\n          envTemplate:\n            template: \"r{{.RELEASE}}\"\n",
    );
    std::fs::write(&skaffold, text).unwrap();
    let out = run(kodev().env("RELEASE", "7").args(["plan", "--json", "-d", "127.0.0.1:5000/x", "-f"]).arg(&skaffold));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(artifact(&p, "hello")["tag"], "r7_latest");
}

/// ko's `KO_DOCKER_REPO=ko.local` (the Docker daemon) and `kind.local` are no registries: kodev
/// says so before building, and how to get the image there; with `--push=false` the layout
/// holds the image under that name.
#[test]
fn ko_local_and_kind_local_are_refused_with_the_way_round() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    for (repo, what) in [("ko.local", "the local Docker daemon"), ("kind.local", "the nodes of a kind cluster")] {
        let out = run(kodev().env("KO_DOCKER_REPO", repo).arg("build").arg("-f").arg(&skaffold));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(what) && stderr.contains("--push=false"), "{stderr}");
        assert!(!stderr.contains("go build"), "nothing was built: {stderr}");
    }
    let out =
        run(kodev().env("KO_DOCKER_REPO", "ko.local").args(["build", "--push=false", "-t", "v1", "-f"]).arg(&skaffold));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".kodev/oci/index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(names, ["ko.local/hello:v1"]);
}

/// A bad flag is a usage error naming the flag, not a line of skaffold.yaml (which is fine),
/// with exit code 2, before anything is built.
#[test]
fn bad_flags_are_named_as_the_problem() {
    if !require_tools(&["go"]) {
        return;
    }
    let file = repo_root().join("examples/hello/main.go");
    let file = file.to_str().unwrap();
    for (command, args, said) in [
        ("plan", &["-t", "v1 beta"][..], "-t/--tag: invalid tag \"v1 beta\""),
        ("plan", &["--platform", "linux/aarch64"][..], "--platform: invalid platform \"linux/aarch64\""),
        ("build", &["--oci-layout", file][..], "not a directory"),
    ] {
        let out =
            run(kodev().current_dir(repo_root()).args([command, "-f", "examples/hello/skaffold.yaml"]).args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!stderr.contains("skaffold.yaml") && !stderr.contains("build failed"), "{args:?}: {stderr}");
    }
}

#[test]
fn dev_watches_each_config_and_context_directory_not_their_common_parent() {
    if !require_tools(&["go"]) {
        return;
    }
    std::env::set_var("SERVING_VERSION", "3");
    let options = kodev::config::LoadOptions {
        file: repo_root().join("tests/fixtures/monorepo/skaffold-profiles.yaml"),
        default_repo: Some("127.0.0.1:5000/dev".into()),
        command: "dev".into(),
        ..Default::default()
    };
    let plan = kodev::config::load(&options).expect("plan");
    let fixtures = repo_root().join("tests/fixtures").canonicalize().unwrap();
    assert_eq!(plan.watch_roots(), vec![fixtures.join("knative"), fixtures.join("monorepo")]);
}

/// The inputDigest tag follows what the artifact is built from: its settings, even from a
/// skaffold.yaml outside the context, and with `ko.dependencies` only the files they name.
/// `kodev dev` works out the same tag at each build as the load did.
#[test]
fn the_input_digest_tag_follows_the_settings_and_the_named_dependencies() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    copy_tree(&repo_root().join("examples/hello"), &app);
    let skaffold = dir.path().join("skaffold.yaml");
    let tag_of = |ko_block: &str| -> String {
        let yaml = format!(
            "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  tagPolicy:\n    inputDigest: {{}}\n  artifacts:\n    - image: hello\n      context: app\n      ko:\n        main: .\n{ko_block}"
        );
        std::fs::write(&skaffold, yaml).unwrap();
        let options = kodev::config::LoadOptions { file: skaffold.clone(), push: Some(false), ..Default::default() };
        let plan = kodev::config::load(&options).unwrap();
        let artifact = &plan.artifacts[0];
        let again = artifact.retag.as_ref().expect("inputDigest follows the tree").current().unwrap();
        assert_eq!(again, artifact.tag, "dev's tag for an unchanged tree");
        artifact.tag.clone()
    };
    let v1 = "        ldflags: [\"-X main.version=1\"]\n";
    let first = tag_of(v1);
    assert_eq!(first.len(), 64, "a sha256 in hex: {first}");
    assert_eq!(tag_of(v1), first, "the same inputs, the same tag");
    assert_ne!(tag_of("        ldflags: [\"-X main.version=2\"]\n"), first, "ldflags");
    assert_ne!(tag_of(&format!("{v1}        fromImage: registry.example.com/base:v2\n")), first, "the base");
    let with_tag = "        ldflags: [\"-X main.version={{.IMAGE_TAG}}\"]\n";
    assert_eq!(tag_of(with_tag), tag_of(with_tag), "a setting that reads the tag does not make it move");

    // Without ko.dependencies every file under the context counts; with them, only theirs.
    let go_only = format!("{v1}        dependencies:\n          paths: [\"**/*.go\", go.mod]\n");
    let (every, named) = (tag_of(v1), tag_of(&go_only));
    std::fs::write(app.join("NOTES.md"), "not built into the image\n").unwrap();
    assert_ne!(tag_of(v1), every, "every file counts by default");
    assert_eq!(tag_of(&go_only), named, "NOTES.md is not among the named dependencies");
    edit_hello(&app);
    assert_ne!(tag_of(&go_only), named, "main.go is");
}

/// The inputDigest tag follows the local modules a build takes from beside its context (a
/// go.mod directory replacement, a workspace's modules): an edit there changes the image, so
/// it changes the tag; `ko.dependencies` globs read each module from its own directory.
#[test]
fn the_input_digest_tag_follows_local_modules_outside_the_context() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = |rel: &str| dir.path().join(rel);
    copy_tree(&repo_root().join("examples/hello"), &at("app"));
    let go_mod = std::fs::read_to_string(at("app/go.mod")).unwrap();
    std::fs::write(at("app/go.mod"), go_mod + "\nreplace example.com/lib => ../lib\n").unwrap();
    for (module, file) in [("lib", "lib/lib.go"), ("member", "member/member.go")] {
        std::fs::create_dir(at(module)).unwrap();
        std::fs::write(at(&format!("{module}/go.mod")), format!("module example.com/{module}\n\ngo 1.19\n")).unwrap();
        std::fs::write(at(file), format!("package {module}\n")).unwrap();
    }
    std::fs::write(at("go.work"), "go 1.19\n\nuse (\n\t./app\n\t./member\n)\n").unwrap();
    let skaffold = at("app/skaffold.yaml");
    let tag_of = |ko_block: &str| -> String {
        let yaml = format!(
            "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  tagPolicy:\n    inputDigest: {{}}\n  artifacts:\n    - image: hello\n      ko:\n        main: .\n{ko_block}"
        );
        std::fs::write(&skaffold, yaml).unwrap();
        let options = kodev::config::LoadOptions { file: skaffold.clone(), push: Some(false), ..Default::default() };
        kodev::config::load(&options).unwrap().artifacts[0].tag.clone()
    };
    let append = |rel: &str, text: &str| {
        let before = std::fs::read_to_string(at(rel)).unwrap();
        std::fs::write(at(rel), before + text).unwrap();
    };
    let no_workspace = "        env: [GOWORK=off]\n";
    let go_files = "        dependencies:\n          paths: [\"**/*.go\"]\n";
    let mut tags = [tag_of(""), tag_of(no_workspace), tag_of(go_files)];
    let mut next = |what: &str| {
        let now = [tag_of(""), tag_of(no_workspace), tag_of(go_files)];
        let moved = [0, 1, 2].map(|i| now[i] != tags[i]);
        tags = now;
        println!("{what}: {moved:?}");
        moved
    };
    append("lib/lib.go", "// edited\n");
    assert_eq!(next("lib.go"), [true, true, true], "a replaced module's file");
    append("member/member.go", "// edited\n");
    assert_eq!(next("member.go"), [true, false, true], "a workspace module's file, unless GOWORK=off");
    std::fs::write(at("lib/NOTES.md"), "notes\n").unwrap();
    assert_eq!(next("NOTES.md"), [true, true, false], "not a Go file");
    std::fs::write(at("elsewhere.go"), "package elsewhere\n").unwrap();
    assert_eq!(next("elsewhere.go"), [false, false, false], "not in any module the build takes");
    append("go.work", "\nuse ./lib\n");
    assert_eq!(next("go.work"), [true, false, true], "the workspace file, unless GOWORK=off");
}
