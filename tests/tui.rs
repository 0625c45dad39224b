//! The dashboard in a real terminal: `kodev dev` under tmux against a real registry.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn capture(&self) -> String {
        let out =
            Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "kodev"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn keys(&self, keys: &str) {
        run_ok(Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "kodev", keys]));
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

#[test]
fn dashboard_in_tmux_shows_layers_toggles_debug_and_quits_cleanly() {
    if !require_tools(&["tmux", "docker-registry", "go"]) {
        return;
    }
    let registry = Registry::start();
    let app = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("tests/fixtures/monorepo"), app.path());
    let exit_file = app.path().join("exit-code");
    // tmux runs a shell: give it the environment kodev() would set.
    let cache = tempfile::tempdir().unwrap();
    let script = format!(
        "cd {dir} && KODEV_CACHE_DIR={cache} PATH=$PATH:/usr/local/go/bin {bin} dev -d {host}/dev -b alpha -t tui; echo $? > {exit}; sleep 60",
        dir = app.path().display(),
        cache = cache.path().display(),
        bin = env!("CARGO_BIN_EXE_kodev"),
        host = registry.host,
        exit = exit_file.display(),
    );
    let tmux = Tmux { socket: format!("kodevtest{}", std::process::id()) };
    run_ok(Command::new("tmux").args([
        "-L",
        &tmux.socket,
        "new-session",
        "-d",
        "-s",
        "kodev",
        "-x",
        "80",
        "-y",
        "24",
        &script,
    ]));

    let screen =
        tmux.wait_for("a layer digest", |s| s.contains("binary") && s.contains("uploaded") && s.contains("pushed"));
    assert!(screen.contains("kodev dev"), "{screen}");
    assert!(screen.contains("debug: off"), "{screen}");
    assert!(screen.contains(&format!("registry {}", registry.host)), "{screen}");

    tmux.keys("d");
    let screen = tmux.wait_for("debug on", |s| s.contains("debug: on"));
    assert!(screen.contains("debug: on"));
    tmux.wait_for("the debug image pushed", |s| s.contains("DEBUG") && s.contains("pushed"));

    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exit_file.exists() {
        assert!(Instant::now() < deadline, "kodev dev did not exit on q; screen:\n{}", tmux.capture());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap().trim(), "0");
    let screen = tmux.capture();
    assert!(!screen.contains("┌ Artifacts"), "the terminal is restored after quit:\n{screen}");
}
