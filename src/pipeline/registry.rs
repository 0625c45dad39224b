//! Talking to registries through oci-client: one client per registry host (plain HTTP for
//! loopback and `--insecure-registry`), credentials from the Docker/podman config, and our
//! own retry with backoff (oci-client has none).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::Mutex;

use super::upload::{Credentials, OpenUpload, Streamer};
use crate::error::{KodevError, Result};

pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const ATTEMPTS: u32 = 5;

/// How long a registry has to answer a request, besides the time the request's bytes take at
/// [`LEAST_RATE`]: `KODEV_REGISTRY_TIMEOUT` seconds, 30 unless set (checked at start, see
/// `cli`). A request past it has failed and is not tried again, so a registry that holds
/// connections without answering (a stalled proxy, a route that drops packets) ends the build
/// with an error rather than hanging it; a slow link still gets the time its bytes need.
pub fn answer_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(REGISTRY_TIMEOUT_VARIABLE)
            .ok()
            .and_then(|v| parse_registry_timeout(&v).ok())
            .unwrap_or(Duration::from_secs(30))
    })
}

pub const REGISTRY_TIMEOUT_VARIABLE: &str = "KODEV_REGISTRY_TIMEOUT";

/// `KODEV_REGISTRY_TIMEOUT`'s value: a whole number of seconds, at least 1.
pub fn parse_registry_timeout(value: &str) -> std::result::Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
        _ => {
            Err(format!("{REGISTRY_TIMEOUT_VARIABLE}: expected a whole number of seconds (at least 1), got {value:?}"))
        }
    }
}

/// The slowest transfer waited for: 128 KiB/s, about a megabit a second.
const LEAST_RATE: u64 = 128 << 10;

/// How long a request moving `bytes` (up or down) may take in all.
pub fn allowance(bytes: u64) -> Duration {
    answer_limit() + Duration::from_millis(bytes.saturating_mul(1000) / LEAST_RATE)
}

/// "30 s", "41.3 s": a limit as the error messages say it.
pub fn describe_limit(limit: Duration) -> String {
    if limit.subsec_millis() == 0 {
        format!("{} s", limit.as_secs())
    } else {
        format!("{:.1} s", limit.as_secs_f64())
    }
}

pub struct Registries {
    insecure: Vec<String>,
    clients: Mutex<HashMap<String, Client>>,
    /// Blobs known to be in a repository (`registry/repo@digest`): checked or pushed this session.
    known_blobs: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One upload at a time per blob: a second upload of the same blob (a config sent early
    /// and again by the publish step) waits for the first and then finds the blob known.
    uploading: std::sync::Mutex<HashMap<String, std::sync::Arc<Mutex<()>>>>,
    streamer: Streamer,
}

fn blob_key(target: &Reference, digest: &str) -> String {
    format!("{}/{}@{digest}", target.resolve_registry(), target.repository())
}

/// Docker's rule: loopback registries speak plain HTTP.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry)
    };
    host == "localhost" || host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

pub fn parse_reference(reference: &str) -> Result<Reference> {
    if let Some(parsed) = parse_plain_reference(reference) {
        return Ok(parsed);
    }
    reference.parse::<Reference>().map_err(|e| KodevError::Usage(format!("invalid image reference {reference:?}: {e}")))
}

/// The usual references (`host[:port]/path[:tag][@sha256:hex]`, ASCII) read by hand, as
/// oci-client reads them. oci-client's parser compiles a large regular expression on first use:
/// 32 ms of CPU, which a one-shot build spends while go needs the cores. Anything this does not
/// recognise goes to oci-client's parser, which also words the errors.
fn parse_plain_reference(reference: &str) -> Option<Reference> {
    fn alnum(c: u8) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit()
    }
    // [a-z0-9]+ joined by ".", "_", "__" or any run of "-".
    fn path_component(part: &str) -> bool {
        let bytes = part.as_bytes();
        let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else { return false };
        if !alnum(first) || !alnum(last) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let run = bytes[i..].iter().take_while(|c| !alnum(**c)).count();
            let separator = &part[i..i + run];
            if !(separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|c| c == b'-')) {
                return false;
            }
            i += run;
        }
        true
    }
    // Dot-separated labels of letters, digits and inner hyphens, then an optional port.
    fn domain(part: &str) -> bool {
        let (host, port) = match part.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (part, None),
        };
        let label = |l: &str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        };
        host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            let hex = digest.strip_prefix("sha256:")?;
            (hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit())).then_some(())?;
            (rest, Some(digest))
        }
        None => (reference, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if rest.rfind('/').is_none_or(|slash| colon > slash) => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let b = tag.as_bytes();
        let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
        if b.is_empty() || b.len() > 128 || !word(&b[0]) || !b.iter().all(|c| word(c) || *c == b'.' || *c == b'-') {
            return None;
        }
    }
    let mut parts = name.split('/');
    let first = parts.next()?;
    let others: Vec<&str> = parts.collect();
    let valid =
        others.iter().all(|p| path_component(p)) && (path_component(first) || (!others.is_empty() && domain(first)));
    if !valid {
        return None;
    }
    // Docker's normalisation, as oci-client applies it.
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".to_string();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > 255 {
        return None;
    }
    Some(match (tag, digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into()),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// Render an error with its causes, so "connection refused" is not hidden behind "request failed".
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Server errors, rate limits and dropped connections pass; a client error is final. oci-client
/// reports some statuses as its own error and others (a `HEAD`'s, say) as reqwest's.
fn is_retryable(err: &OciDistributionError) -> bool {
    let passing_status = |code: u16| code >= 500 || code == 429;
    match err {
        OciDistributionError::ServerError { code, .. } => passing_status(*code),
        OciDistributionError::RequestError(e) => match e.status() {
            Some(status) => passing_status(status.as_u16()),
            // A timeout is final (see `answer_limit`): trying again would only wait as long again.
            None => !e.is_timeout() && (e.is_connect() || e.is_request() || e.is_body()),
        },
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

fn credentials_for(registry: &str) -> RegistryAuth {
    let server =
        if registry == "docker.io" || registry == "index.docker.io" { "https://index.docker.io/v1/" } else { registry };
    let found = docker_credential::get_credential(server).or_else(|_| docker_credential::get_podman_credential(server));
    match found {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => RegistryAuth::Bearer(token),
        Err(_) => RegistryAuth::Anonymous,
    }
}

/// Credentials for the requests kodev makes itself (see `upload.rs`).
fn streaming_credentials(target: &Reference) -> std::result::Result<Credentials, String> {
    match credentials_for(target.registry()) {
        RegistryAuth::Anonymous => Ok(Credentials::Anonymous),
        RegistryAuth::Basic(user, password) => Ok(Credentials::Basic(user, password)),
        // Identity tokens are exchanged through oci-client's OAuth flow: upload those the usual way.
        RegistryAuth::Bearer(_) => Err("identity-token credentials are not streamed".to_string()),
    }
}

impl Registries {
    pub fn new(insecure: Vec<String>) -> Self {
        // TLS needs a process-wide crypto provider; the first caller installs it (library users too).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries {
            insecure,
            clients: Mutex::new(HashMap::new()),
            known_blobs: Default::default(),
            uploading: Default::default(),
            streamer: Streamer::default(),
        }
    }

    pub fn scheme_for(&self, registry: &str) -> &'static str {
        if is_loopback_registry(registry) || self.insecure.iter().any(|i| i == registry) {
            "http"
        } else {
            "https"
        }
    }

    async fn client(&self, reference: &Reference, op: RegistryOperation) -> Result<Client> {
        let registry = reference.resolve_registry().to_string();
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&registry) {
            return Ok(client.clone());
        }
        let protocol = if self.scheme_for(&registry) == "http" { ClientProtocol::Http } else { ClientProtocol::Https };
        let config = ClientConfig {
            protocol,
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            // Each request's time is limited by `retry`, by the bytes it moves: a read timeout
            // would also end an upload that takes longer to send than it allows.
            read_timeout: None,
            ..Default::default()
        };
        // Building a client loads the system's CA certificates (tens of milliseconds the first
        // time): off the async threads, so a go build started alongside is not held up.
        let client = tokio::task::spawn_blocking(move || Client::new(config))
            .await
            .map_err(|e| KodevError::publish(format!("cannot set up an HTTP client: {e}")))?;
        let auth = credentials_for(reference.registry());
        // Negotiates a bearer token when the registry asks for one; anonymous registries answer 200.
        let probe = format!("{}://{registry}/v2/", self.scheme_for(&registry));
        let auth_result =
            retry(&probe, answer_limit(), || async { client.auth(reference, &auth, op).await.map(|_| ()) }).await;
        if let Err(e) = auth_result {
            return Err(KodevError::publish(format!("cannot reach registry {registry}: {e}")));
        }
        clients.insert(registry, client.clone());
        Ok(client)
    }

    /// Connect and authenticate for pushing, so the push itself starts warm.
    pub async fn ping(&self, target: &Reference) -> Result<()> {
        self.client(target, RegistryOperation::Push).await?;
        self.streamer.warm_up().await;
        Ok(())
    }

    fn url(&self, reference: &Reference, what: &str) -> String {
        let registry = reference.resolve_registry();
        format!("{}://{registry}/v2/{}/{what}", self.scheme_for(registry), reference.repository())
    }

    /// The raw manifest (or index) bytes, their digest and media type.
    pub async fn pull_manifest(&self, reference: &Reference) -> Result<(Bytes, String, String)> {
        let client = self.client(reference, RegistryOperation::Pull).await?;
        let what = reference.digest().or(reference.tag()).unwrap_or("latest").to_string();
        let url = self.url(reference, &format!("manifests/{what}"));
        let (bytes, digest) = retry(&url, answer_limit(), || {
            client.pull_manifest_raw(reference, &RegistryAuth::Anonymous, MANIFEST_MEDIA_TYPES)
        })
        .await
        .map_err(|e| KodevError::build(format!("cannot fetch base image {}: {e}", reference.whole())))?;
        let media_type = manifest_media_type(&bytes).ok_or_else(|| {
            KodevError::build(format!("base image {} has a manifest kodev cannot read", reference.whole()))
        })?;
        Ok((bytes, digest, media_type))
    }

    pub async fn pull_blob(&self, reference: &Reference, digest: &str, size: u64) -> Result<Vec<u8>> {
        let client = self.client(reference, RegistryOperation::Pull).await?;
        let descriptor = OciDescriptor { digest: digest.to_string(), size: size as i64, ..Default::default() };
        let url = self.url(reference, &format!("blobs/{digest}"));
        retry(&url, allowance(size), || async {
            let mut out = Vec::with_capacity(size as usize);
            client.pull_blob(reference, &descriptor, &mut out).await?;
            Ok(out)
        })
        .await
        .map_err(|e| KodevError::build(format!("cannot fetch blob {digest} of {}: {e}", reference.whole())))
    }

    /// Forget every blob remembered for the target's repository.
    pub fn forget(&self, target: &Reference) {
        let prefix = blob_key(target, "");
        self.known_blobs.lock().unwrap_or_else(|e| e.into_inner()).retain(|k| !k.starts_with(&prefix));
    }

    fn remember(&self, target: &Reference, digest: &str) {
        self.known_blobs.lock().unwrap_or_else(|e| e.into_inner()).insert(blob_key(target, digest));
    }

    /// Whether the repository has the blob; what this session saw there is not asked again.
    pub async fn blob_exists(&self, target: &Reference, digest: &str) -> Result<bool> {
        if self.is_known(&blob_key(target, digest)) {
            return Ok(true);
        }
        let client = self.client(target, RegistryOperation::Push).await?;
        let url = self.url(target, &format!("blobs/{digest}"));
        let exists = retry(&url, answer_limit(), || client.blob_exists(target, digest))
            .await
            .map_err(|e| KodevError::publish(format!("cannot check blob {digest} at {url}: {e}")))?;
        if exists {
            self.remember(target, digest);
        }
        Ok(exists)
    }

    /// Cross-repository mount; false when the registry started an upload instead (202).
    pub async fn mount_blob(&self, target: &Reference, source: &Reference, digest: &str) -> Result<bool> {
        let client = self.client(target, RegistryOperation::Push).await?;
        let mounted =
            matches!(tokio::time::timeout(answer_limit(), client.mount_blob(target, source, digest)).await, Ok(Ok(_)));
        if mounted {
            self.remember(target, digest);
        }
        Ok(mounted)
    }

    fn is_known(&self, key: &str) -> bool {
        self.known_blobs.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
    }

    /// Run `upload` unless the blob is known, one upload of a blob at a time: another upload
    /// of it waits for this one and then finds it known.
    async fn upload_once<E>(
        &self,
        target: &Reference,
        digest: &str,
        upload: impl Future<Output = std::result::Result<(), E>>,
    ) -> std::result::Result<bool, E> {
        let key = blob_key(target, digest);
        let turn = self.uploading.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let outcome = {
            let _turn = turn.lock().await;
            if self.is_known(&key) {
                Ok(false)
            } else {
                upload.await.map(|()| {
                    self.remember(target, digest);
                    true
                })
            }
        };
        let mut uploading = self.uploading.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on this blob.
        if std::sync::Arc::strong_count(&turn) <= 2 {
            uploading.remove(&key);
        }
        outcome
    }

    /// Upload a blob; false when another upload of it got there first.
    pub async fn upload_blob(&self, target: &Reference, data: Bytes, digest: &str) -> Result<bool> {
        self.upload_once(target, digest, self.upload_blob_now(target, data, digest)).await
    }

    /// Open an upload session now, for a blob not made yet (see [`Registries::finish_upload`]).
    pub async fn open_upload(&self, target: &Reference) -> std::result::Result<OpenUpload, String> {
        let credentials = streaming_credentials(target)?;
        self.streamer.open_session(target, self.scheme_for(target.resolve_registry()), &credentials).await
    }

    /// Put a whole blob on a session opened with [`Registries::open_upload`]: one request.
    /// Returns whether it was uploaded (false: the blob was known, the session is dropped).
    pub async fn finish_upload(
        &self,
        target: &Reference,
        upload: OpenUpload,
        data: Bytes,
        digest: &str,
    ) -> std::result::Result<bool, String> {
        let mut session = Some(upload);
        let sent = self
            .upload_once(target, digest, async {
                let upload = session.take().expect("the session is used once");
                self.streamer.commit(upload, digest, Some(data)).await
            })
            .await?;
        if let Some(unused) = session {
            unused.cancel().await;
        }
        Ok(sent)
    }

    async fn upload_blob_now(&self, target: &Reference, data: Bytes, digest: &str) -> Result<()> {
        let client = self.client(target, RegistryOperation::Push).await?;
        let url = self.url(target, "blobs/uploads/");
        retry(&url, allowance(data.len() as u64), || client.push_blob(target, data.clone(), digest))
            .await
            .map(|_| ())
            .map_err(|e| KodevError::publish(format!("cannot upload blob {digest} to {url}: {e}")))
    }

    /// Send a blob to the target while it is being produced (see `upload.rs`); commit it with
    /// [`Registries::commit_streamed`] once its digest is known.
    pub async fn send_streamed(
        &self,
        target: &Reference,
        opened: Option<OpenUpload>,
        pieces: tokio::sync::mpsc::Receiver<Bytes>,
        most_bytes: u64,
    ) -> std::result::Result<OpenUpload, String> {
        let credentials = streaming_credentials(target)?;
        let scheme = self.scheme_for(target.resolve_registry());
        self.streamer.send(target, scheme, &credentials, opened, pieces, most_bytes).await
    }

    /// Close a streamed upload under its digest; the blob is then known to be in the repository.
    pub async fn commit_streamed(
        &self,
        target: &Reference,
        upload: OpenUpload,
        digest: &str,
    ) -> std::result::Result<(), String> {
        self.streamer.commit(upload, digest, None).await?;
        self.remember(target, digest);
        Ok(())
    }

    pub async fn put_manifest(&self, target: &Reference, body: Bytes, media_type: &str) -> Result<()> {
        let client = self.client(target, RegistryOperation::Push).await?;
        let what = target.digest().or(target.tag()).unwrap_or("latest").to_string();
        let url = self.url(target, &format!("manifests/{what}"));
        let content_type: reqwest::header::HeaderValue =
            media_type.parse().map_err(|_| KodevError::publish(format!("invalid media type {media_type}")))?;
        retry(&url, allowance(body.len() as u64), || {
            client.push_manifest_raw(target, body.clone(), content_type.clone())
        })
        .await
        .map(|_| ())
        .map_err(|e| KodevError::publish(format!("cannot push manifest to {url}: {e}")))
    }
}

/// The media type of a manifest, from its `mediaType` or, for OCI files without one, its shape.
pub fn manifest_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = value.get("mediaType").and_then(|m| m.as_str()) {
        return Some(mt.to_string());
    }
    if value.get("manifests").is_some() {
        Some(MANIFEST_MEDIA_TYPES[0].to_string())
    } else if value.get("config").is_some() {
        Some(MANIFEST_MEDIA_TYPES[2].to_string())
    } else {
        None
    }
}

/// Run `op` with exponential backoff on server errors and connection failures, each attempt
/// given `limit` (see [`answer_limit`]); an attempt past it is not tried again.
async fn retry<T, F, Fut>(url: &str, limit: Duration, mut op: F) -> std::result::Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let Ok(outcome) = tokio::time::timeout(limit, op()).await else {
            return Err(format!("{url}: no answer in {}", describe_limit(limit)));
        };
        match outcome {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && is_retryable(&e) => {
                tracing::debug!(url, attempt, error = %e, "retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => {
                let described = describe_error(&e);
                return Err(if described.contains(url) { described } else { format!("{url}: {described}") });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_references_read_by_hand_as_oci_client_reads_them() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let upper = format!("sha256:{}", "0123456789ABCDEF".repeat(4));
        let read_by_hand = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "docker.io/busybox".into(),
            "index.docker.io/library/busybox:latest".into(),
            "localhost/app".into(),
            "localhost:5000/app:dev".into(),
            "127.0.0.1:5000/base/static:v1".into(),
            "ghcr.io/org/sub/repo:Tag_1.2-rc".into(),
            format!("gcr.io/distroless/static:nonroot@{digest}"),
            format!("app@{digest}"),
            format!("ko.local/hello@{upper}"),
            "registry.example.com/a.b_c__d-e---f/g:t".into(),
            "test.com:5000".into(),
            "test.com:tag".into(),
            "UPPER/repo".into(),
            "my-registry.io:443/x/y/z".into(),
        ];
        for reference in &read_by_hand {
            let expected: Reference = reference.parse().unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(parse_plain_reference(reference).as_ref(), Some(&expected), "{reference}");
            assert_eq!(parse_plain_reference(reference).unwrap().whole(), expected.whole(), "{reference}");
        }
        // Left to oci-client: what it refuses, and what this does not try to read (Unicode tags,
        // other digest algorithms, IPv6 hosts).
        let left = [
            "",
            "Busybox",
            "a//b",
            "a/",
            "/a",
            "-a/b",
            "a_/b",
            "a:b:c",
            "a@sha256:abc",
            "a:-tag",
            "a:tæg",
            "a@sha512:00",
            "[::1]:5000/app",
            "host:port/app",
            "a..b/c",
        ];
        for reference in left {
            assert_eq!(parse_plain_reference(reference), None, "{reference}");
        }
        assert!(parse_reference("Busybox").is_err());
        assert!(parse_reference("a:tæg").is_ok(), "oci-client reads what this leaves");
    }

    /// Whatever the hand reader accepts, oci-client accepts and reads the same way: it never
    /// lets through a reference oci-client would refuse.
    #[test]
    fn the_hand_reader_never_accepts_what_oci_client_refuses() {
        let alphabet = b"ab0Z9.-_:/@";
        let mut state = 0x243f_6a88_85a3_08d3_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..60_000 {
            let len = 1 + (next() % 24) as usize;
            let mut reference: String =
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect();
            if next() % 4 == 0 {
                reference = format!("{}@sha256:{}", reference.trim_end_matches('@'), "ab12".repeat(16));
            }
            if let Some(read) = parse_plain_reference(&reference) {
                accepted += 1;
                let expected: Reference = reference
                    .parse()
                    .unwrap_or_else(|e| panic!("{reference:?} read by hand, refused by oci-client: {e}"));
                assert_eq!(read, expected, "{reference:?}");
            }
        }
        assert!(accepted > 1_000, "the generator makes enough valid references ({accepted})");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_server_errors_but_not_client_errors() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let result = retry("http://r/v2/", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 2 {
                Err(OciDistributionError::ServerError { code: 503, url: "u".into(), message: "busy".into() })
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);

        let calls = std::sync::atomic::AtomicU32::new(0);
        let result: std::result::Result<(), String> = retry("http://r/v2/x", Duration::from_secs(5), || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(OciDistributionError::ServerError { code: 404, url: "http://r/v2/x".into(), message: "unknown".into() })
        })
        .await;
        assert!(result.unwrap_err().contains("404"));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        let calls = std::sync::atomic::AtomicU32::new(0);
        let result: std::result::Result<(), String> = retry("http://r/v2/y", Duration::from_secs(5), || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(OciDistributionError::ServerError { code: 500, url: "http://r/v2/y".into(), message: "down".into() })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), ATTEMPTS);
    }

    fn reqwest_status_error(code: u16) -> OciDistributionError {
        let response: reqwest::Response = http::Response::builder().status(code).body("").unwrap().into();
        OciDistributionError::RequestError(response.error_for_status().unwrap_err())
    }

    /// A blob `HEAD` that meets a 500 (docker-registry gives one when another repository is
    /// committing the same blob) is asked again; a 404 or 401 answers at once.
    #[tokio::test(start_paused = true)]
    async fn retries_server_statuses_reqwest_reports() {
        assert!(is_retryable(&reqwest_status_error(500)));
        assert!(is_retryable(&reqwest_status_error(503)));
        assert!(is_retryable(&reqwest_status_error(429)));
        assert!(!is_retryable(&reqwest_status_error(404)));
        assert!(!is_retryable(&reqwest_status_error(401)));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let result = retry("http://r/v2/a/blobs/sha256:0", Duration::from_secs(5), || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err(reqwest_status_error(500)),
                _ => Ok(true),
            }
        })
        .await;
        assert_eq!(result, Ok(true));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("gcr.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
    }
}
