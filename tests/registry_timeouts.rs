//! A registry that does not answer ends the build with an error; a slow one still gets the
//! time its bytes need (`KODEV_REGISTRY_TIMEOUT`, see `registry::answer_limit`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Run `command` to its end, or kill it after `patience` and fail: kodev must not hang.
fn run_to_end(command: &mut Command, patience: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kodev");
    let deadline = Instant::now() + patience;
    while child.try_wait().expect("wait for kodev").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("kodev's output");
            panic!("kodev still running after {patience:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("kodev's output")
}

/// Forward connections to `upstream`, passing what the client sends at `rate` bytes a second
/// (a slow uplink) and the answers at full speed. Returns the address to connect to.
fn throttling_proxy(upstream: String, rate: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut passed = 0u64;
                let mut buf = [0u8; 8 << 10];
                while let Ok(n) = from_client.read(&mut buf) {
                    if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    passed += n as u64;
                    let due = Duration::from_secs_f64(passed as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            });
            let (mut from_server, mut to_client) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_server, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    address
}

#[test]
fn a_registry_that_takes_connections_and_never_answers_fails_the_build() {
    if !require_tools(&["go"]) {
        return;
    }
    // The kernel completes connections to a listening socket by itself; nobody reads them.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = silent.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    let output = run_to_end(
        kodev()
            .env("KODEV_REGISTRY_TIMEOUT", "2")
            .args(["build", "-f"])
            .arg(&skaffold)
            .args(["-d", &format!("{host}/silent")]),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach registry {host}")) && stderr.contains("no answer in 2 s"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no image was named: {}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn a_bad_registry_timeout_is_a_usage_error() {
    let output = kodev().env("KODEV_REGISTRY_TIMEOUT", "soon").args(["build", "-d", "127.0.0.1:9/x"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KODEV_REGISTRY_TIMEOUT") && stderr.contains("\"soon\""), "{stderr}");
}

/// The answer limit is for the registry's answer: an upload that takes longer to send over a
/// slow link is given the time its bytes need, and lands.
#[test]
fn an_upload_slower_than_the_answer_limit_still_lands() {
    if !require_tools(&["docker-registry", "go", "skopeo"]) {
        return;
    }
    let registry = Registry::start();
    // hello's binary layer is about 4.8 MB compressed: some ten seconds at 512 KiB/s.
    let proxy = throttling_proxy(registry.host.clone(), 512 << 10);
    let dir = tempfile::tempdir().unwrap();
    let skaffold = hello_app(dir.path(), "", "");
    make_hello_unique(dir.path());
    let started = Instant::now();
    let output = run_to_end(
        kodev().env("KODEV_REGISTRY_TIMEOUT", "2").args(["build", "-f"]).arg(&skaffold).args([
            "-d",
            &format!("{proxy}/slow"),
            "-t",
            "v1",
        ]),
        Duration::from_secs(300),
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(took > Duration::from_secs(4), "the proxy held the upload back ({took:?}): the test tests nothing");
    let pushed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let digest = pushed.rsplit('@').next().unwrap().to_string();
    let inspected = skopeo_inspect(&format!("docker://{}/slow/hello:v1", registry.host), false, false);
    assert_eq!(inspected["Digest"].as_str(), Some(digest.as_str()), "the tag names the image kodev printed");
}
