//! The dashboard without a terminal: `update` as a state machine, and snapshots of whole
//! screens rendered into ratatui's TestBackend.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kodev::dev::command::Command;
use kodev::event::{Event, EventKind};
use kodev::pipeline::layer::LayerKind;
use kodev::ui::state::{update, Focus, Input, PlatformState, State, LOG_CAPACITY};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn event(artifact: &str, kind: EventKind) -> Input {
    Input::Event(Event { artifact: artifact.to_string(), time: "2026-11-24T10:11:12.000Z".to_string(), kind })
}

fn key(code: KeyCode) -> Input {
    Input::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn two_artifacts() -> State {
    State::new(
        "registry 127.0.0.1:5000",
        vec![
            ("api".to_string(), vec!["linux/amd64".to_string(), "linux/arm64".to_string()]),
            ("worker".to_string(), vec!["linux/amd64".to_string()]),
        ],
        false,
        false,
    )
}

fn started(state: &mut State, artifact: &str, platforms: &[&str], debug: bool) {
    update(
        state,
        event(
            artifact,
            EventKind::BuildStarted { platforms: platforms.iter().map(|p| p.to_string()).collect(), debug },
        ),
    );
}

fn pushed(state: &mut State, artifact: &str, platforms: &[&str], debug: bool) {
    for p in platforms {
        update(
            state,
            event(artifact, EventKind::Compiled { platform: p.to_string(), duration_ms: 812, relinked: false }),
        );
        for (kind, digest, size, uploaded) in [
            (LayerKind::Base, "sha256:1111111111111111aaaa", 2_345_678, false),
            (LayerKind::Kodata, "sha256:2222222222222222bbbb", 1_024, false),
            (LayerKind::Binary, "sha256:3333333333333333cccc", 7_654_321, true),
        ] {
            update(
                state,
                event(
                    artifact,
                    EventKind::Layer { platform: p.to_string(), kind, digest: digest.into(), size, uploaded },
                ),
            );
        }
    }
    update(
        state,
        event(
            artifact,
            EventKind::Pushed {
                tag: format!("127.0.0.1:5000/dev/{artifact}:v1@sha256:abcdef0123456789"),
                digest: "sha256:abcdef0123456789".into(),
                debug,
                bytes_uploaded: 7_654_321 * platforms.len() as u64,
                bytes_skipped: 2_346_702,
                push_ms: 210,
                duration_ms: 1234,
            },
        ),
    );
}

fn screen(state: &State, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| kodev::ui::view::view(state, f)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let mut line = String::new();
        for x in 0..buffer.area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn events_drive_platform_states() {
    let mut state = two_artifacts();
    assert_eq!(state.artifacts[0].platforms[0].1, PlatformState::Queued);
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    assert!(state.artifacts[0].platforms.iter().all(|(_, s)| *s == PlatformState::Building));
    update(
        &mut state,
        event("api", EventKind::Compiled { platform: "linux/arm64".into(), duration_ms: 5, relinked: false }),
    );
    assert_eq!(state.artifacts[0].platforms[1].1, PlatformState::Pushing);
    assert_eq!(state.artifacts[0].platforms[0].1, PlatformState::Building);
    update(&mut state, event("api", EventKind::BuildCancelled));
    assert!(state.artifacts[0].platforms.iter().all(|(_, s)| *s == PlatformState::Cancelled));
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    pushed(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    assert!(state.artifacts[0].platforms.iter().all(|(_, s)| *s == PlatformState::Pushed));
    assert_eq!(state.artifacts[0].layers.len(), 6);
    assert_eq!(state.artifacts[0].push.as_ref().unwrap().time, "10:11:12");
    update(&mut state, event("worker", EventKind::BuildFailed { error: "go build failed:\nmain.go:3:1: x".into() }));
    assert_eq!(state.artifacts[1].platforms[0].1, PlatformState::Failed);
    assert!(state.artifacts[1].last_error.as_ref().unwrap().contains("main.go:3:1"));
    update(&mut state, event("", EventKind::DebugChanged { debug: true }));
    assert!(state.debug);
    update(&mut state, event("", EventKind::Watching));
    assert!(state.watching);
}

#[test]
fn keys_select_scroll_and_send_commands() {
    let mut state = two_artifacts();
    assert!(update(&mut state, key(KeyCode::Down)).is_empty());
    assert_eq!(state.selected, 1);
    update(&mut state, key(KeyCode::Char('j')));
    assert_eq!(state.selected, 1, "stays on the last artifact");
    update(&mut state, key(KeyCode::Char('k')));
    assert_eq!(state.selected, 0);
    assert_eq!(update(&mut state, key(KeyCode::Char('r'))), vec![Command::Rebuild(Some("api".into()))]);
    assert_eq!(update(&mut state, key(KeyCode::Char('R'))), vec![Command::Rebuild(None)]);
    assert_eq!(update(&mut state, key(KeyCode::Char('d'))), vec![Command::ToggleDebug]);
    assert_eq!(update(&mut state, key(KeyCode::Char('a'))), vec![Command::ToggleAuto]);
    assert!(!state.auto);
    update(&mut state, key(KeyCode::Tab));
    assert_eq!(state.focus, Focus::Log);
    for i in 0..30 {
        update(
            &mut state,
            event("api", EventKind::BuildLog { platform: "linux/amd64".into(), line: format!("line {i}") }),
        );
    }
    update(&mut state, key(KeyCode::PageUp));
    assert_eq!(state.log_scroll, 10);
    update(&mut state, key(KeyCode::Up));
    assert_eq!(state.log_scroll, 11);
    update(&mut state, key(KeyCode::End));
    assert_eq!(state.log_scroll, 0);
    update(&mut state, key(KeyCode::Home));
    assert_eq!(state.log_scroll, 30);
    update(&mut state, key(KeyCode::Char('c')));
    assert!(state.artifacts[0].log.is_empty());
    update(&mut state, key(KeyCode::Char('?')));
    assert!(state.help);
    assert!(update(&mut state, key(KeyCode::Char('r'))).is_empty(), "a key closes help and does nothing else");
    assert!(!state.help);
    assert_eq!(update(&mut state, key(KeyCode::Char('q'))), vec![Command::Quit]);
    let mut other = two_artifacts();
    let ctrl_c = Input::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(update(&mut other, ctrl_c), vec![Command::Quit]);
}

#[test]
fn the_log_is_bounded() {
    let mut state = two_artifacts();
    for i in 0..LOG_CAPACITY + 100 {
        update(&mut state, event("api", EventKind::BuildLog { platform: "linux/amd64".into(), line: format!("{i}") }));
    }
    let log = &state.artifacts[0].log;
    assert_eq!(log.len(), LOG_CAPACITY);
    assert_eq!(log.front().unwrap().text, "100");
}

#[test]
fn snapshot_first_build() {
    let mut state = two_artifacts();
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    update(
        &mut state,
        event("api", EventKind::Compiled { platform: "linux/amd64".into(), duration_ms: 640, relinked: false }),
    );
    insta::assert_snapshot!("first_build", screen(&state, 80, 24));
}

#[test]
fn snapshot_all_pushed() {
    let mut state = two_artifacts();
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    pushed(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    started(&mut state, "worker", &["linux/amd64"], false);
    pushed(&mut state, "worker", &["linux/amd64"], false);
    update(&mut state, event("", EventKind::Watching));
    insta::assert_snapshot!("all_pushed", screen(&state, 80, 24));
    insta::assert_snapshot!("all_pushed_wide", screen(&state, 120, 30));
}

#[test]
fn snapshot_compile_error() {
    let mut state = two_artifacts();
    update(&mut state, key(KeyCode::Down));
    started(&mut state, "worker", &["linux/amd64"], false);
    update(
        &mut state,
        event("worker", EventKind::BuildLog { platform: "linux/amd64".into(), line: "# example.com/worker".into() }),
    );
    update(
        &mut state,
        event(
            "worker",
            EventKind::BuildLog { platform: "linux/amd64".into(), line: "./main.go:12:2: undefined: doWork".into() },
        ),
    );
    update(
        &mut state,
        event(
            "worker",
            EventKind::BuildFailed { error: "go build of example.com/worker for linux/amd64 failed".into() },
        ),
    );
    insta::assert_snapshot!("compile_error", screen(&state, 80, 24));
}

#[test]
fn snapshot_debug_on_and_help() {
    let mut state = two_artifacts();
    update(&mut state, event("", EventKind::DebugChanged { debug: true }));
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], true);
    pushed(&mut state, "api", &["linux/amd64", "linux/arm64"], true);
    insta::assert_snapshot!("debug_on", screen(&state, 80, 24));
    update(&mut state, key(KeyCode::Char('?')));
    insta::assert_snapshot!("help_overlay", screen(&state, 80, 24));
}

#[test]
fn snapshot_pushing() {
    let mut state = two_artifacts();
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], false);
    for p in ["linux/amd64", "linux/arm64"] {
        update(&mut state, event("api", EventKind::Compiled { platform: p.into(), duration_ms: 700, relinked: false }));
    }
    let screen = screen(&state, 80, 24);
    assert!(screen.contains("compiled · archiving and pushing"), "{screen}");
    insta::assert_snapshot!("pushing", screen);
}

#[test]
fn tiny_and_odd_terminal_sizes_never_panic() {
    let mut state = two_artifacts();
    started(&mut state, "api", &["linux/amd64", "linux/arm64"], true);
    pushed(&mut state, "api", &["linux/amd64", "linux/arm64"], true);
    update(&mut state, event("worker", EventKind::BuildFailed { error: "x".repeat(500) }));
    for (w, h) in [(1, 1), (10, 3), (20, 5), (79, 23), (200, 60), (300, 8)] {
        let _ = screen(&state, w, h);
        update(&mut state, key(KeyCode::Char('?')));
        let _ = screen(&state, w, h);
        update(&mut state, key(KeyCode::Esc));
    }
}
