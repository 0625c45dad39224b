//! When inotify cannot be had (no instances left for the user), `kodev dev` says so and falls
//! back to polling, and edits still rebuild. Its own test binary: it lowers a system-wide limit
//! for a moment, and cargo runs test binaries one at a time.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::*;
use serde_json::Value;

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_instances";

/// Sets the limit and puts the old value back when dropped, even if the test fails.
struct InotifyLimit {
    previous: String,
}

impl InotifyLimit {
    fn set(value: &str) -> Option<InotifyLimit> {
        let previous = std::fs::read_to_string(LIMIT).ok()?;
        std::fs::write(LIMIT, value).ok()?;
        Some(InotifyLimit { previous })
    }
}

impl Drop for InotifyLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(LIMIT, self.previous.trim());
    }
}

#[test]
fn no_inotify_instances_left_falls_back_to_polling() {
    if !require_tools(&["go"]) {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    hello_app(app.path(), "", "");
    let Some(limit) = InotifyLimit::set("0") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("cannot lower {LIMIT} under CI (this test needs root)");
        }
        eprintln!("SKIPPING: cannot write {LIMIT}; run as root");
        return;
    };
    let mut dev = kodev()
        .current_dir(app.path())
        .args(["dev", "--no-tui", "--output", "json", "--watch-poll-interval", "200", "-t", "poll"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut next_event =
        || -> Value { serde_json::from_str(&lines.next().expect("kodev dev is running").unwrap()).unwrap() };
    let mut fallback_said = None;
    loop {
        let event = next_event();
        if event["event"] == "error" {
            fallback_said = event["message"].as_str().map(str::to_string);
        }
        if event["event"] == "watching" {
            break;
        }
    }
    drop(limit);
    let said = fallback_said.expect("an error event about the watcher");
    assert!(said.contains("falling back to polling") && said.contains("inotify"), "{said}");

    std::thread::sleep(std::time::Duration::from_millis(500));
    let main = app.path().join("main.go");
    std::fs::write(&main, std::fs::read_to_string(&main).unwrap() + "\n// polled edit\n").unwrap();
    loop {
        let event = next_event();
        assert_ne!(event["event"], "build_failed", "{event}");
        if event["event"] == "pushed" {
            break;
        }
    }
    dev.stdin.as_mut().unwrap().write_all(b"q\n").unwrap();
    assert_eq!(dev.wait().unwrap().code(), Some(0));
}
