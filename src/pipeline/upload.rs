//! Streamed blob uploads: the layer goes to the registry while it is still being compressed.
//!
//! A monolithic PUT needs the digest in its URL, so it can only start once the whole layer is
//! compressed and hashed. Here the upload session opens at once, one PATCH carries the pieces
//! as they come out of the compressor (chunked transfer encoding, so the length need not be
//! known), and the closing PUT names the digest. oci-client sends one request per chunk and
//! keeps its tokens to itself, so these few requests are made here, with their own auth: none,
//! basic, or a bearer token fetched from the realm the registry names.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use oci_client::Reference;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::{mpsc, Mutex};

use super::registry::{allowance, answer_limit, describe_limit};

/// What plain requests to one repository send as credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic(String, String),
}

#[derive(Clone, Debug)]
enum Authorization {
    None,
    Basic(String, String),
    Bearer(String),
}

/// An upload session with its bytes sent; committed once the digest is known. One dropped
/// before it was committed or cancelled (a cancelled build) is deleted in the background, so
/// the registry does not keep its partial data until it purges stale uploads (a week, by
/// default, for docker-registry). One whose PATCH was cut mid-way cannot be deleted there:
/// docker-registry refuses a request whose upload state names fewer bytes than it received,
/// so that one waits for the purge.
#[derive(Debug)]
pub struct OpenUpload {
    location: Url,
    registry: Url,
    authorization: Authorization,
    http: reqwest::Client,
    /// Committed or deleted: nothing left to clean up.
    settled: bool,
    pub bytes: u64,
}

impl OpenUpload {
    fn delete_request(&self) -> reqwest::RequestBuilder {
        let request = self.http.delete(self.location.clone()).timeout(answer_limit());
        authorize(request, &self.location, &self.registry, &self.authorization)
    }

    /// Delete the session now, waiting for the registry's answer.
    pub async fn cancel(mut self) {
        self.settled = true;
        let _ = self.delete_request().send().await;
    }
}

impl Drop for OpenUpload {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let request = self.delete_request();
            runtime.spawn(async move {
                let _ = request.send().await;
            });
        }
    }
}

/// Streamed uploads, with one HTTP client and the authorization each repository needed.
#[derive(Default)]
pub struct Streamer {
    http: OnceLock<Option<reqwest::Client>>,
    authorizations: Mutex<HashMap<String, Authorization>>,
    /// Registries that refused a streamed upload once: not asked again this session.
    refused: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn http_error(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

/// A request's failure; one that ran out of its time (`limit`) says so plainly.
fn request_error(context: &str, e: reqwest::Error, limit: Duration) -> String {
    if e.is_timeout() {
        format!("{context}: no answer in {}", describe_limit(limit))
    } else {
        http_error(context, e)
    }
}

/// Each request is given its time (see `registry::answer_limit`): no read timeout, which
/// would also end a streamed upload that takes longer to send than it allows.
fn build_http_client() -> Option<reqwest::Client> {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().ok()
}

/// `key="value"` pairs of a `WWW-Authenticate: Bearer …` challenge.
pub fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    params.contains_key("realm").then_some(params)
}

impl Streamer {
    /// Build the HTTP client now, off the async threads, rather than when the first layer is ready.
    pub async fn warm_up(&self) {
        if self.http.get().is_none() {
            let built = tokio::task::spawn_blocking(build_http_client).await.ok().flatten();
            let _ = self.http.set(built);
        }
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http
            .get_or_init(build_http_client)
            .as_ref()
            .ok_or_else(|| "no HTTP client for streamed uploads".to_string())
    }

    /// A bearer token for pushing to `repository`, from the realm the registry's challenge names.
    async fn fetch_token(
        &self,
        challenge: &str,
        repository: &str,
        credentials: &Credentials,
    ) -> Result<String, String> {
        let params = parse_bearer_challenge(challenge).ok_or_else(|| format!("unreadable challenge {challenge:?}"))?;
        let mut realm = Url::parse(&params["realm"]).map_err(|e| http_error("token realm", e))?;
        {
            let mut query = realm.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{repository}:pull,push"));
        }
        let mut request = self.http()?.get(realm.clone()).timeout(answer_limit());
        if let Credentials::Basic(user, password) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| request_error(realm.as_str(), e, answer_limit()))?;
        if !response.status().is_success() {
            return Err(format!("{realm}: token request answered {}", response.status()));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| http_error(realm.as_str(), e))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{realm}: no token in the answer"))
    }

    /// Open an upload session, authorizing as the registry asks (once per repository).
    async fn open(&self, base: &str, repository: &str, credentials: &Credentials) -> Result<OpenUpload, String> {
        let key = format!("{base}/{repository}");
        let known = self.authorizations.lock().await.get(&key).cloned();
        let mut authorization = known.unwrap_or(match credentials {
            Credentials::Anonymous => Authorization::None,
            Credentials::Basic(user, password) => Authorization::Basic(user.clone(), password.clone()),
        });
        let url = format!("{base}/v2/{repository}/blobs/uploads/");
        let registry = Url::parse(&url).map_err(|e| http_error(&url, e))?;
        for attempt in 0..2 {
            let request = self.http()?.post(&url).header(CONTENT_LENGTH, 0).timeout(answer_limit());
            let response = authorize(request, &registry, &registry, &authorization)
                .send()
                .await
                .map_err(|e| request_error(&url, e, answer_limit()))?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("{url}: 401 without a challenge"))?
                    .to_string();
                authorization = if challenge.to_ascii_lowercase().starts_with("basic") {
                    match credentials {
                        Credentials::Basic(user, password) => Authorization::Basic(user.clone(), password.clone()),
                        Credentials::Anonymous => return Err(format!("{url}: credentials required")),
                    }
                } else {
                    Authorization::Bearer(self.fetch_token(&challenge, repository, credentials).await?)
                };
                continue;
            }
            if response.status() != StatusCode::ACCEPTED {
                return Err(format!("{url}: opening an upload answered {}", response.status()));
            }
            let location = location(&url, response.headers())?;
            self.authorizations.lock().await.insert(key, authorization.clone());
            let http = self.http()?.clone();
            return Ok(OpenUpload { location, registry, authorization, http, settled: false, bytes: 0 });
        }
        Err(format!("{url}: not authorized"))
    }

    /// Open an upload session on the target's repository, to be finished with
    /// [`Streamer::commit`] (with the blob as the body) once the blob is known.
    pub async fn open_session(
        &self,
        target: &Reference,
        scheme: &str,
        credentials: &Credentials,
    ) -> Result<OpenUpload, String> {
        let base = format!("{scheme}://{}", target.resolve_registry());
        self.open(&base, target.repository(), credentials).await
    }

    /// Send every piece `pieces` yields in one PATCH, on `opened` (a session opened ahead, see
    /// [`Streamer::open_session`]) or on a session opened now; the session is committed with
    /// [`Streamer::commit`] once the digest is known. `most_bytes` bounds what the pieces add
    /// up to: the PATCH is given the time that many bytes take (see `registry::allowance`).
    pub async fn send(
        &self,
        target: &Reference,
        scheme: &str,
        credentials: &Credentials,
        opened: Option<OpenUpload>,
        mut pieces: mpsc::Receiver<Bytes>,
        most_bytes: u64,
    ) -> Result<OpenUpload, String> {
        let base = format!("{scheme}://{}", target.resolve_registry());
        let key = Url::parse(&base).map(|u| origin(&u)).map_err(|e| http_error(&base, e))?;
        if self.refused.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
            return Err(format!("{base} refused a streamed upload before"));
        }
        let mut upload = match opened {
            Some(upload) => upload,
            None => self.open(&base, target.repository(), credentials).await?,
        };
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let body = futures::stream::poll_fn(move |cx| {
            pieces.poll_recv(cx).map(|piece| {
                piece.map(|bytes| {
                    counter.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Ok::<_, std::io::Error>(bytes)
                })
            })
        });
        let limit = allowance(most_bytes);
        let request = self
            .http()?
            .request(Method::PATCH, upload.location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .timeout(limit)
            .body(reqwest::Body::wrap_stream(body));
        let response = authorize(request, &upload.location, &upload.registry, &upload.authorization)
            .send()
            .await
            .map_err(|e| request_error(upload.location.as_str(), e, limit))?;
        if response.status() != StatusCode::ACCEPTED {
            let status = response.status();
            self.refuse(&upload);
            upload.cancel().await;
            return Err(format!("streamed upload answered {status}"));
        }
        upload.location = location(upload.location.as_str(), response.headers())?;
        upload.bytes = sent.load(std::sync::atomic::Ordering::Relaxed);
        Ok(upload)
    }

    /// Close the session under the blob's digest, sending `last` (the whole blob, for a
    /// session nothing was sent on yet) with the closing request; the registry checks the
    /// digest against everything it received.
    pub async fn commit(&self, mut upload: OpenUpload, digest: &str, last: Option<Bytes>) -> Result<(), String> {
        let mut url = upload.location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let sends_body = last.is_some();
        let limit = allowance(last.as_ref().map_or(0, |bytes| bytes.len() as u64));
        let request = match last {
            Some(bytes) => self
                .http()?
                .put(url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, bytes.len())
                .body(bytes),
            None => self.http()?.put(url.clone()).header(CONTENT_LENGTH, 0),
        };
        let response = authorize(request.timeout(limit), &url, &upload.registry, &upload.authorization)
            .send()
            .await
            .map_err(|e| request_error(url.as_str(), e, limit))?;
        if response.status() != StatusCode::CREATED {
            let status = response.status();
            // Only a streamed upload's failure says the registry does not take streaming.
            if !sends_body {
                self.refuse(&upload);
            }
            upload.cancel().await;
            return Err(format!("committing the upload answered {status}"));
        }
        upload.settled = true;
        Ok(())
    }

    fn refuse(&self, upload: &OpenUpload) {
        let base = origin(&upload.registry);
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).insert(base);
    }
}

/// `scheme://host:port` of a URL.
fn origin(url: &Url) -> String {
    format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0))
}

/// Add credentials to a request for `url`, but only when it goes to the registry itself: a
/// Location elsewhere (storage behind the registry) must not see them (CVE-2020-15157).
fn authorize(
    request: reqwest::RequestBuilder,
    url: &Url,
    registry: &Url,
    authorization: &Authorization,
) -> reqwest::RequestBuilder {
    if origin(url) != origin(registry) {
        return request;
    }
    match authorization {
        Authorization::None => request,
        Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
        Authorization::Bearer(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
    }
}

/// The `Location` of an answer, resolved against the request's URL (registries send both forms).
fn location(request_url: &str, headers: &HeaderMap) -> Result<Url, String> {
    let value = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("{request_url}: no Location in the answer"))?;
    let base = Url::parse(request_url).map_err(|e| http_error(request_url, e))?;
    base.join(value).map_err(|e| http_error(value, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_challenges() {
        let params = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let unquoted = parse_bearer_challenge("Bearer realm=http://127.0.0.1:9/t, service=local").unwrap();
        assert_eq!(unquoted["realm"], "http://127.0.0.1:9/t");
        assert_eq!(unquoted["service"], "local");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge("Bearer service=\"no realm\"").is_none());
    }

    /// A registry that opens uploads but refuses streamed data, as some do.
    fn registry_refusing_patch() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
                        let mut head = Vec::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push(line.to_ascii_lowercase());
                        }
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if head.iter().any(|h| h.starts_with("transfer-encoding: chunked")) {
                            // Read the chunked body to its end before answering.
                            loop {
                                let mut size = String::new();
                                reader.read_line(&mut size).unwrap();
                                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                                let mut chunk = vec![0u8; n + 2];
                                reader.read_exact(&mut chunk).unwrap();
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        let answer = if head[0].starts_with("post") {
                            "HTTP/1.1 202 Accepted\r\nLocation: /v2/app/blobs/uploads/1\r\nContent-Length: 0\r\n\r\n"
                        } else if head[0].starts_with("patch") {
                            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
                        } else {
                            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
                        };
                        writer.write_all(answer.as_bytes()).unwrap();
                    }
                });
            }
        });
        (addr, requests)
    }

    #[tokio::test]
    async fn a_registry_that_refuses_streaming_is_not_asked_again() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (addr, requests) = registry_refusing_patch();
        let target: Reference = format!("{addr}/app:t").parse().unwrap();
        let streamer = Streamer::default();
        let (pieces, received) = mpsc::channel(4);
        pieces.send(Bytes::from_static(b"some layer bytes")).await.unwrap();
        drop(pieces);
        let err = streamer.send(&target, "http", &Credentials::Anonymous, None, received, 1 << 20).await.unwrap_err();
        assert!(err.contains("405"), "{err}");
        let asked = requests.load(std::sync::atomic::Ordering::SeqCst);
        assert!(asked >= 2, "POST then PATCH (then the DELETE of the session): {asked}");

        let (_pieces, received) = mpsc::channel(4);
        let err = streamer.send(&target, "http", &Credentials::Anonymous, None, received, 1 << 20).await.unwrap_err();
        assert!(err.contains("refused a streamed upload before"), "{err}");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), asked, "the registry was not asked again");
    }

    #[test]
    fn resolves_relative_locations() {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, "/v2/a/blobs/uploads/123?_state=x".parse().unwrap());
        let url = location("http://127.0.0.1:5000/v2/a/blobs/uploads/", &headers).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:5000/v2/a/blobs/uploads/123?_state=x");
        headers.insert(LOCATION, "https://other.example/upload/9".parse().unwrap());
        let url = location("http://127.0.0.1:5000/v2/a/blobs/uploads/", &headers).unwrap();
        assert_eq!(url.as_str(), "https://other.example/upload/9");
    }
}
