//! The bearer-token flow real registries use (Docker Hub, GHCR, GCR): a registry with
//! `auth: token`, a token service that checks basic credentials and signs ES256 JWTs, and
//! kodev pulling a base from it and pushing to it with credentials from a Docker config.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

const USER: &str = "kodev";
const PASSWORD: &str = "t0ken-s3cret";

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An ES256 JWT carrying the certificate chain (x5c), as distribution's token auth verifies it.
fn sign_token(key: &EcdsaKeyPair, cert_der: &[u8], access: Value) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let header =
        json!({"alg": "ES256", "typ": "JWT", "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)]});
    let claims = json!({
        "iss": "kodev-test-issuer", "sub": USER, "aud": "kodev-registry",
        "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let rng = ring::rand::SystemRandom::new();
    let signature = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64url(signature.as_ref()))
}

fn rand_suffix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

/// `scope=repository:dev/hello:pull,push` (possibly several) → distribution's access claims.
fn access_for(query: &str) -> Value {
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(scope) = pair.strip_prefix("scope=") else { continue };
        let scope = scope.replace("%3A", ":").replace("%2F", "/").replace("%2C", ",");
        let parts: Vec<&str> = scope.split(':').collect();
        if parts.len() == 3 {
            access
                .push(json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
        }
    }
    Value::Array(access)
}

/// A token service on a free port: 401 without the right basic credentials, else a token.
fn start_token_service(dir: &Path) -> u16 {
    let key_pem = dir.join("key.pem");
    run_ok(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]).arg(&key_pem));
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-days", "1", "-subj", "/CN=kodev-token-test", "-key"])
            .arg(&key_pem)
            .arg("-out")
            .arg(dir.join("cert.pem")),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(&key_pem)
            .arg("-out")
            .arg(dir.join("key.p8")),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(dir.join("cert.pem"))
            .arg("-out")
            .arg(dir.join("cert.der")),
    );
    let pkcs8 = std::fs::read(dir.join("key.p8")).unwrap();
    let cert_der = std::fs::read(dir.join("cert.der")).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &ring::rand::SystemRandom::new()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("authorization") && value.trim() == expected {
                        authorized = true;
                    }
                }
            }
            let query =
                request_line.split_whitespace().nth(1).and_then(|t| t.split_once('?')).map(|(_, q)| q).unwrap_or("");
            let response = if authorized {
                let token = sign_token(&key, &cert_der, access_for(query));
                let body = json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn bearer_tokens_from_a_token_service_with_docker_config_credentials() {
    if !require_tools(&["docker-registry", "umoci", "skopeo", "openssl", "go"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_port = start_token_service(dir.path());
    let port = free_port();
    let config = dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: kodev-registry\n    issuer: kodev-test-issuer\n    rootcertbundle: {}\n",
            dir.path().join("data").display(),
            dir.path().join("cert.pem").display()
        ),
    )
    .unwrap();
    let mut registry = serve_registry(&config, port);
    let host = format!("127.0.0.1:{port}");
    let layout = dir.path().join("layout");
    umoci_image(&layout, "amd64", "amd64");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &format!("{USER}:{PASSWORD}")])
            .arg(format!("oci:{}:amd64", layout.display()))
            .arg(format!("docker://{host}/base/private:v1")),
    );

    let app = tempfile::tempdir().unwrap();
    let skaffold = hello_app(app.path(), &format!("        fromImage: {host}/base/private:v1\n"), "");
    let docker_config = tempfile::tempdir().unwrap();
    let out = run(kodev_with_credentials(docker_config.path(), &host, Some((USER, PASSWORD)))
        .env("KODEV_LOG", "kodev=debug")
        .arg("build")
        .arg("-f")
        .arg(&skaffold)
        .args(["-d", &format!("{host}/dev"), "-t", "tok"]));
    let _ = registry.kill();
    let _ = registry.wait();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "kodev build with bearer tokens failed:\n{stderr}");
    let reference = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(reference.starts_with(&format!("{host}/dev/hello:tok@sha256:")), "{reference}");
    // The streamed upload fetched its own push token from the realm the registry named.
    assert!(stderr.contains("layer streamed to the registry while compressing"), "{stderr}");

    // Without credentials the token service refuses, and kodev exits 1 naming the registry.
    let mut registry = serve_registry(&config, port);
    let empty = tempfile::tempdir().unwrap();
    let out = run(kodev_with_credentials(empty.path(), &host, None).arg("build").arg("-f").arg(&skaffold).args([
        "-d",
        &format!("{host}/dev"),
        "-t",
        "anon",
    ]));
    let _ = registry.kill();
    let _ = registry.wait();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&host), "{}", String::from_utf8_lossy(&out.stderr));
}
