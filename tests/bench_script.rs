//! The benchmark script is how BENCHMARKS.md's numbers are reproduced: it must keep running
//! end to end and print its tables. A short run of it (hello only, one build and two dev-loop
//! edits per row, no ko) against its own real registry; the numbers are not judged, only that
//! every row is measured.

mod common;

use std::process::Command;

use common::*;

/// The cells of the markdown table row that starts with `| {app} | {platforms} |` under the
/// header line containing `header`.
fn app_row<'a>(stdout: &'a str, header: &str, app: &str, platforms: usize) -> Vec<&'a str> {
    let table = stdout.split(header).nth(1).unwrap_or_else(|| panic!("no table with {header:?} in:\n{stdout}"));
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {app} | {platforms} |")))
        .unwrap_or_else(|| panic!("no {app} row for {platforms} platform(s) under {header:?} in:\n{stdout}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

fn row<'a>(stdout: &'a str, header: &str, platforms: usize) -> Vec<&'a str> {
    app_row(stdout, header, "hello", platforms)
}

/// bench.py with `args`, without ko and the idle measure, against this build of kodev: its
/// output, once it has succeeded.
fn run_bench(args: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("benches/bench.py")).args(args).args([
        "--skip-idle",
        "--ko",
        "/nonexistent/ko",
        "--kodev",
        env!("CARGO_BIN_EXE_kodev"),
    ]);
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "bench.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn ratio(cell: &str) -> f64 {
    cell.strip_suffix('×').and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("not a ratio: {cell:?}"))
}

fn seconds(cell: &str) -> f64 {
    cell.strip_suffix('s').and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("not seconds: {cell:?}"))
}

#[test]
fn bench_script_measures_every_row_of_its_tables() {
    if !require_tools(&["python3", "docker-registry", "skopeo", "umoci", "go"]) {
        return;
    }
    let stdout = run_bench(&["--only", "hello", "--runs", "1", "--dev-runs", "2"]);
    assert!(stdout.contains("machine: "), "{stdout}");

    for platforms in [1, 2] {
        // One-shot: floor, cold, warm and unchanged measured; ko columns empty without ko.
        let one_shot = row(&stdout, "| app | platforms | binary |", platforms);
        assert!(one_shot[2].ends_with(" MB"), "binary size: {one_shot:?}");
        for cell in [one_shot[3], one_shot[5], one_shot[6], one_shot[9]] {
            assert!(seconds(cell) > 0.0, "{one_shot:?}");
        }
        assert_eq!(one_shot[7], "-", "no ko, no ko column: {one_shot:?}");
        // The warm build follows a cold one that ran go and saved its recipe: it is relinked.
        assert_eq!(one_shot[12], "1/1", "the warm build is relinked without go: {one_shot:?}");

        // Dev loop: paired floor, edit→pushed and their ratio, bytes and RSS.
        let dev = row(&stdout, "| app | platforms | go build (floor) | kodev dev", platforms);
        let (floor, dev_time, dev_ratio) = (seconds(dev[2]), seconds(dev[3]), ratio(dev[4]));
        assert!(floor > 0.0 && dev_time > 0.0, "{dev:?}");
        // The printed ratio is of the unrounded medians; the cells are rounded to 10 ms.
        assert!((dev_ratio - dev_time / floor).abs() < 0.2, "ratio matches its cells: {dev:?}");
        if platforms == 2 {
            assert!(seconds(dev[5]) > 0.0 && ratio(dev[6]) > 0.0, "the shared-cores floor is measured: {dev:?}");
        } else {
            assert_eq!((dev[5], dev[6]), ("-", "-"), "{dev:?}");
        }
        // Every edit is relinked without go, the first too: the session has a recipe before it
        // (go's own, or one recorded in the background when go had the sources cached).
        assert_eq!(dev[7], "2/2", "{dev:?}");
        let uploaded: f64 = dev[8].strip_suffix(" MB").and_then(|v| v.parse().ok()).expect("uploaded MB");
        assert!(uploaded > 1.0, "an edit uploads at least the new binary layer: {dev:?}");
        assert!(dev[9].ends_with(" MB"), "{dev:?}");

        // The targets table repeats the dev ratio to three places; without ko the one-shot
        // ratio is not measured, and the verdict is on the dev loop alone.
        let target = row(&stdout, "| app | platforms | edit | one-shot kodev/ko |", platforms);
        assert_eq!((target[2], target[3]), ("main", "-"), "{target:?}");
        assert!((ratio(target[4]) - dev_ratio).abs() < 0.006, "the dev ratio, unrounded: {target:?} {dev:?}");
        let expected = if ratio(target[4]) <= 1.15 { "yes" } else { "no" };
        assert_eq!(target[5], expected, "{target:?}");
    }
}

/// The dev loop and one-shot builds after edits of a package main imports (not main): a small
/// "large" app, whose package p007 is edited, each edit paired with a floor build. In one-shot
/// builds the first goes through go and the next is rebuilt without it; `kodev dev` rebuilds
/// both without go.
#[test]
fn bench_script_measures_edits_outside_main() {
    if !require_tools(&["python3", "docker-registry", "skopeo", "umoci", "go"]) {
        return;
    }
    let stdout =
        run_bench(&["--only", "large", "--large-packages", "12", "--runs", "2", "--dev-runs", "1", "--lib-runs", "2"]);
    assert!(stdout.contains("2 of a library package"), "{stdout}");
    for platforms in [1, 2] {
        let lib = app_row(&stdout, "| app | platforms | package edited |", "large", platforms);
        assert_eq!(lib[2], "internal/p007", "{lib:?}");
        let (floor, dev_time, dev_ratio) = (seconds(lib[3]), seconds(lib[4]), ratio(lib[5]));
        assert!(floor > 0.0 && dev_time > 0.0, "{lib:?}");
        assert!((dev_ratio - dev_time / floor).abs() < 0.2, "ratio matches its cells: {lib:?}");
        if platforms == 2 {
            assert!(seconds(lib[6]) > 0.0 && ratio(lib[7]) > 0.0, "the shared-cores floor is measured: {lib:?}");
        }
        // No build had compiled the package when the session started (go had it in its
        // cache), and both edits are rebuilt without go: the session recorded its compile
        // from a `go build -a -n` after the first push.
        assert_eq!(lib[8], "2/2", "{lib:?}");
        let uploaded: f64 = lib[9].strip_suffix(" MB").and_then(|v| v.parse().ok()).expect("uploaded MB");
        assert!(uploaded > 0.5, "an edit uploads the new binary layer: {lib:?}");

        // One-shot: the floor and kodev measured, no ko; the first build runs go and records the
        // package's compile, the second is rebuilt without go.
        let shot =
            app_row(&stdout, "| app | platforms | package edited | go build (floor) | floor/ko |", "large", platforms);
        assert_eq!(shot[2], "internal/p007", "{shot:?}");
        assert!(seconds(shot[3]) > 0.0 && seconds(shot[5]) > 0.0, "{shot:?}");
        assert_eq!((shot[4], shot[6], shot[7]), ("-", "-", "-"), "no ko, no ko columns: {shot:?}");
        assert_eq!(shot[8], "1/2", "{shot:?}");

        // The targets table has a row for each kind of edit.
        let edits: Vec<String> = stdout
            .split("| app | platforms | edit | one-shot kodev/ko |")
            .nth(1)
            .expect("a targets table")
            .lines()
            .filter(|l| l.starts_with(&format!("| large | {platforms} |")))
            .map(|l| l.split('|').nth(3).unwrap().trim().to_string())
            .collect();
        assert_eq!(edits, ["main", "internal/p007"], "{stdout}");
    }
}

/// `benches/ab.py --one-shot` (alternated one-shot builds of two kodev binaries, each paired
/// with a floor build) runs end to end and reports both, here the same binary twice.
#[test]
fn ab_script_compares_one_shot_builds() {
    if !require_tools(&["python3", "docker-registry", "skopeo", "umoci", "go"]) {
        return;
    }
    let kodev = env!("CARGO_BIN_EXE_kodev");
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("benches/ab.py")).args([
        "--a",
        kodev,
        "--b",
        kodev,
        "--app",
        "hello",
        "--rounds",
        "2",
        "--one-shot",
    ]);
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "ab.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for name in ["a", "b"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}: one-shot median ")))
            .unwrap_or_else(|| panic!("no summary for {name}:\n{stdout}"));
        let median = seconds(line.split_whitespace().nth(3).unwrap());
        assert!(median > 0.0 && line.ends_with("(2 builds)"), "{line}");
    }
}
