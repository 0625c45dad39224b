//! The corpus of broken configs: every one must exit 2 with the file, the line (where one
//! exists) and what is wrong — never a panic. Each file says what it expects in its header:
//! `# expect: TEXT` and `# line: N` (or `none`).

mod common;

use std::path::Path;

use common::*;

fn expectation(text: &str) -> (String, Option<usize>) {
    let mut expect = None;
    let mut line = None;
    for l in text.lines().take(2) {
        if let Some(e) = l.strip_prefix("# expect: ") {
            expect = Some(e.to_string());
        }
        if let Some(n) = l.strip_prefix("# line: ") {
            line = n.trim().parse().ok();
        }
    }
    (expect.expect("# expect: header"), line)
}

#[test]
fn every_broken_config_exits_2_naming_file_line_and_problem() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = repo_root().join("tests/configs/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus holds at least 30 configs, found {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let (expect, line) = expectation(&std::fs::read_to_string(file).unwrap());
        let out = run(kodev().arg("plan").arg("-f").arg(file));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut problems = Vec::new();
        if out.status.code() != Some(2) {
            problems.push(format!("exit {:?}, want 2", out.status.code()));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if !stderr.contains(&expect) {
            problems.push(format!("message lacks {expect:?}"));
        }
        let names_a_file = stderr.contains(".yaml") || stderr.contains(".ko.yaml");
        if !names_a_file {
            problems.push("names no file".to_string());
        }
        if let Some(line) = line {
            // The line exactly: ".yaml:1" must not pass for ".yaml:11".
            let at = format!(".yaml:{line}");
            let named = stderr
                .match_indices(&at)
                .any(|(i, _)| !stderr[i + at.len()..].starts_with(|c: char| c.is_ascii_digit()));
            if !named {
                problems.push(format!("lacks line {line}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}\n    {}", problems.join("; "), stderr.trim()));
        }
    }
    assert!(failures.is_empty(), "{} broken configs misbehave:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn init_refuses_to_overwrite_and_its_config_builds() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/monorepo"), dir.path());
    std::fs::remove_file(dir.path().join("skaffold.yaml")).unwrap();
    let out = run(kodev().current_dir(dir.path()).arg("init"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(dir.path().join("skaffold.yaml")).unwrap();
    assert!(written.contains("main: ./cmd/alpha") && written.contains("image: beta"), "{written}");
    let again = run(kodev().current_dir(dir.path()).arg("init"));
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(dir.path().join("skaffold.yaml")).unwrap(), written, "not overwritten");
    let built = run(kodev().current_dir(dir.path()).args(["build", "-t", "init"]));
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(stdout.contains("alpha:init@sha256:") && stdout.contains("beta:init@sha256:"), "{stdout}");

    // The bundled example too: init writes a config that builds.
    let hello = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("examples/hello"), hello.path());
    std::fs::remove_file(hello.path().join("skaffold.yaml")).unwrap();
    let out = run(kodev().current_dir(hello.path()).arg("init"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let built = run(kodev().current_dir(hello.path()).args(["build", "-t", "init"]));
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert!(String::from_utf8_lossy(&built.stdout).starts_with("hello:init@sha256:"));
    assert!(Path::new(&hello.path().join(".kodev/oci/index.json")).is_file());
}
