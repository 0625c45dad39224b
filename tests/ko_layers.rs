//! kodev's kodata and binary layers hold, byte for byte, the tars ko writes: the same diff IDs
//! as ko's images, so the same files with the same headers in every container. ko's writing is
//! done again here by a small Go program with Go's own archive/tar (tests/fixtures/ko_tar).

mod common;

use std::path::Path;
use std::process::Command;

use common::{repo_root, require_tools, which};
use kodev::pipeline::caps::file_capabilities;
use kodev::pipeline::layer::{binary_layer, kodata_layer, AppFile, KodataSource};

/// What Go's archive/tar, written to as ko writes, gives for this kodata tree and binary.
fn kos_diff_ids(kodata: &Path, binary: &Path, app: &AppFile, mtime: u64) -> (String, String) {
    let out = Command::new(which("go").unwrap())
        .args(["run", "."])
        .arg(kodata)
        .arg(binary)
        .arg(&app.name)
        .arg(mtime.to_string())
        .args(app.capabilities.iter().map(|xattr| xattr.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .current_dir(repo_root().join("tests/fixtures/ko_tar"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("run go");
    assert!(out.status.success(), "go run: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {text}")).to_string()
    };
    (field("kodata "), field("binary "))
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn kodata_and_binary_layers_are_the_tars_ko_writes() {
    if !require_tools(&["go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kodata = dir.path().join("kodata");
    write(&kodata.join("greeting.txt"), "hello\n");
    // A subdirectory: ko gives it no entry of its own, only its files.
    write(&kodata.join("static/css/site.css"), "body {}\n");
    std::fs::create_dir_all(kodata.join("empty")).unwrap();
    // Names past ustar's 100 bytes: split into prefix and name at the last '/' that fits…
    let split = format!("{}/{}/page.html", "a".repeat(60), "b".repeat(40));
    write(&kodata.join(&split), "<p>split</p>\n");
    // …or, when no split fits, a PAX record, the entry keeping the name's first 100 bytes;
    // here the 100th byte is a '/', which Go's writer cuts off.
    let unsplittable = format!("{}/{}", "d".repeat(87), "e".repeat(120));
    write(&kodata.join(&unsplittable), "pax\n");
    // Not ASCII: a PAX record too, however short.
    write(&kodata.join("café.txt"), "crème\n");
    // A symlink to a directory in the tree is followed where it stands.
    std::os::unix::fs::symlink(kodata.join("static"), kodata.join("assets")).unwrap();
    let binary = dir.path().join("app-binary");
    std::fs::write(&binary, (0..800_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();

    // With linux_capabilities, the binary's entry carries the xattr in a PAX record.
    let capable = AppFile {
        name: "app".to_string(),
        capabilities: file_capabilities(&["net_bind_service".to_string(), "bpf,perfmon=ep".to_string()]).unwrap(),
    };
    assert!(capable.capabilities.is_some());
    for (mtime, app) in [(0, AppFile::named("app")), (1_700_000_000, capable)] {
        let source = KodataSource { dir: kodata.clone(), allowed_root: dir.path().to_path_buf(), mtime };
        let kodata_layer = kodata_layer(&source).unwrap();
        let binary_layer = binary_layer(&binary, &app).unwrap();
        let (kodata_id, binary_id) = kos_diff_ids(&kodata, &binary, &app, mtime);
        assert_eq!(kodata_layer.diff_id, kodata_id, "kodata layer, mtime {mtime}");
        assert_eq!(binary_layer.diff_id, binary_id, "binary layer of {app:?}");
    }
}
