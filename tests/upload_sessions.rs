//! Upload sessions a cancelled build opened do not stay on the registry.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kodev::pipeline::registry::{parse_reference, Registries};

/// The live upload sessions of a repository (docker-registry keeps a `startedat` file in each
/// until the session is committed or deleted), with how many bytes each holds. A deleted
/// session may leave an empty directory with a hash state behind; its data is gone.
fn live_sessions(storage: &Path, repository: &str) -> Vec<u64> {
    let dir = storage.join("repositories").join(repository).join("_uploads");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.path().join("startedat").exists() || e.path().join("data").exists())
        .map(|e| std::fs::metadata(e.path().join("data")).map(|m| m.len()).unwrap_or(0))
        .collect()
}

/// Wait (without blocking the runtime that deletes in the background) until the repository
/// has no live upload session left.
async fn wait_until_no_sessions(storage: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !live_sessions(storage, "t/app").is_empty() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_cancelled_build_are_deleted() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let registry = Registry::start();
    let storage = registry.storage();
    let registries = Registries::new(vec![registry.host.clone()]);
    let target = parse_reference(&format!("{}/t/app", registry.host)).unwrap();

    // A layer streamed whole on a session opened ahead (as while go finishes the binary), its
    // build cancelled before the publish step committed it.
    let opened = registries.open_upload(&target).await.expect("a session");
    let (pieces, received) = tokio::sync::mpsc::channel(4);
    pieces.send(Bytes::from(vec![7u8; 1 << 20])).await.unwrap();
    drop(pieces);
    let streamed = registries.send_streamed(&target, Some(opened), received, 1 << 20).await.expect("streamed");
    assert_eq!(streamed.bytes, 1 << 20);
    assert_eq!(live_sessions(&storage, "t/app"), vec![1 << 20], "the registry holds the data");
    drop(streamed);
    wait_until_no_sessions(&storage, "the streamed session is gone").await;

    // A session opened early for a config the build never made.
    let opened = registries.open_upload(&target).await.expect("a session");
    assert_eq!(live_sessions(&storage, "t/app").len(), 1, "the registry has the session");
    drop(opened);
    wait_until_no_sessions(&storage, "the unused session is gone").await;
}

/// A reverted edit gives a binary whose layer the registry already has: the upload session
/// opened for it while go finished the binary is closed, not left behind.
#[test]
fn a_reverted_edit_reuses_its_layer_and_leaves_no_session() {
    if !require_tools(&["docker-registry", "skopeo", "umoci"]) {
        return;
    }
    let registry = Registry::start();
    let storage = registry.storage();
    let bases = tempfile::tempdir().unwrap();
    let layout = bases.path().join("layout");
    umoci_image(&layout, "amd64", "amd64");
    skopeo_push(&layout, "amd64", &format!("{}/base/single:v1", registry.host), false, false);
    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), &format!("        fromImage: {}/base/single:v1\n", registry.host), "");
    let main_go = app.path().join("main.go");
    let original = std::fs::read_to_string(&main_go).unwrap();
    let build = || {
        let out = run(kodev().env("KODEV_LOG", "kodev=debug").arg("build").arg("-f").arg(&skaffold).args([
            "-d",
            &format!("{}/t", registry.host),
            "-t",
            "a",
        ]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    build();
    std::fs::write(&main_go, original.replace("\"listen address\"", "\"the address to listen on\"")).unwrap();
    build();
    std::fs::write(&main_go, &original).unwrap();
    let log = build();
    assert!(log.contains("binary unchanged since an earlier build"), "the first build's layer is reused:\n{log}");
    assert!(live_sessions(&storage, "t/hello").is_empty(), "no upload session is left open");
}
