//! Base images: kodev's built-in static base, or one pulled from a registry.
//! Manifests and configs are cached by digest, layers fetched only when a publisher needs them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use oci_client::Reference;
use serde_json::{json, Value};
use sha2::Digest as _;

use super::layer::{sha256_digest, Layer, LayerKind};
use super::registry::{parse_reference, Registries};
use super::tarball::{EntryHeader, EntryKind, TarWriter};
use crate::config::BaseImageRef;
use crate::error::{KodevError, Result};
use crate::platform::{Platform, PlatformRequest};

/// OCI or Docker schema2: the image kodev builds follows the base's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFamily {
    Oci,
    Docker,
}

impl MediaFamily {
    pub fn of_manifest_type(media_type: &str) -> MediaFamily {
        if media_type.starts_with("application/vnd.docker.") {
            MediaFamily::Docker
        } else {
            MediaFamily::Oci
        }
    }
    pub fn manifest_type(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.manifest.v1+json",
            MediaFamily::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }
    pub fn index_type(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.index.v1+json",
            MediaFamily::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }
    pub fn config_type(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.config.v1+json",
            MediaFamily::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }
    pub fn layer_type(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
            MediaFamily::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }
}

/// Where a blob's bytes can be had.
#[derive(Debug, Clone)]
pub enum BlobData {
    Memory(Bytes),
    /// In the base image's repository (and, once fetched, in the cache).
    Remote(Reference),
    /// A layer, its bytes joined or made again only when needed (see `Layer::bytes`).
    Layer(Box<Layer>),
}

#[derive(Debug, Clone)]
pub struct Blob {
    /// The descriptor as it appears in a manifest (kept whole: urls, annotations…).
    pub descriptor: Value,
    pub digest: String,
    pub size: u64,
    pub data: BlobData,
}

impl Blob {
    pub fn in_memory(media_type: &str, data: Bytes) -> Blob {
        let digest = sha256_digest(&data);
        let size = data.len() as u64;
        Blob {
            descriptor: json!({"mediaType": media_type, "digest": digest, "size": size}),
            digest,
            size,
            data: BlobData::Memory(data),
        }
    }

    pub fn from_layer(media_type: &str, layer: &Layer) -> Blob {
        Blob {
            descriptor: json!({"mediaType": media_type, "digest": layer.digest, "size": layer.size}),
            digest: layer.digest.clone(),
            size: layer.size,
            data: BlobData::Layer(Box::new(layer.clone())),
        }
    }
}

/// One platform's image of a base.
#[derive(Debug, Clone)]
pub struct BasePlatformImage {
    pub platform: Platform,
    /// The index entry's `platform` object (or one made from the config).
    pub platform_json: Value,
    pub manifest_digest: String,
    pub manifest: Value,
    pub config: Value,
    pub layers: Vec<Blob>,
}

/// A resolved base: the platforms selected for one build, in the base's order.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// For the `org.opencontainers.image.base.name` annotation.
    pub name: String,
    /// Digest of what `name` resolved to (an index or a manifest).
    pub digest: String,
    pub family: MediaFamily,
    pub images: Vec<BasePlatformImage>,
}

/// The content-addressed cache directory: `KODEV_CACHE_DIR`, else `$XDG_CACHE_HOME/kodev`, else
/// `~/.cache/kodev`. Always absolute: go runs in the module's directory, and the `-o` kodev
/// gives it must name the same place. A relative `KODEV_CACHE_DIR` (or `HOME`) is taken from
/// the current directory; a relative `XDG_CACHE_HOME` is ignored, as the XDG spec says.
pub fn cache_dir() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|d| !d.is_empty()).map(PathBuf::from);
    let dir = set("KODEV_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").filter(|d| d.is_absolute()).map(|d| d.join("kodev")))
        .unwrap_or_else(|| set("HOME").unwrap_or_else(std::env::temp_dir).join(".cache/kodev"));
    match std::env::current_dir() {
        Ok(cwd) if dir.is_relative() => cwd.join(dir),
        _ => dir,
    }
}

fn cache_path(kind: &str, digest: &str) -> PathBuf {
    cache_dir().join(kind).join(digest.replace(':', "/"))
}

/// Write `data` at `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |out| out.write_all(data))
}

/// Like [`write_atomically`], with the content written by `write` through a buffer, for
/// content not gathered in one slice.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut out = std::io::BufWriter::new(tempfile::NamedTempFile::new_in(dir)?);
    write(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How old a half-written temporary file must be before it is taken for the leftover of a
/// process that died while writing: a live writer touches its file every few milliseconds.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Remove the temporary files that [`write_atomically_with`] left in `dir` when a process was
/// killed mid-write (they are never renamed, and a kept layer's chunks are megabytes). Files
/// younger than [`STALE_TEMP_AGE`] may be another process's write in progress and are left
/// alone. Returns how many were removed; a directory that cannot be read removes nothing.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let now = std::time::SystemTime::now();
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(".tmp"))
        .filter(|entry| {
            let modified = entry.metadata().and_then(|m| m.modified());
            modified.is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= STALE_TEMP_AGE))
        })
        .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
        .count()
}

async fn cached_or_fetch_manifest(registries: &Registries, reference: &Reference) -> Result<(Bytes, String, String)> {
    if let Some(digest) = reference.digest() {
        let path = cache_path("manifests", digest);
        if let Ok(bytes) = std::fs::read(&path) {
            if sha256_digest(&bytes) == digest {
                let media_type = super::registry::manifest_media_type(&bytes).unwrap_or_default();
                return Ok((Bytes::from(bytes), digest.to_string(), media_type));
            }
        }
    }
    // What a tag last resolved to, so the inner loop keeps working when the registry is unreachable.
    let tag_record = cache_dir().join("tags").join(hex::encode(sha2::Sha256::digest(reference.whole().as_bytes())));
    match registries.pull_manifest(reference).await {
        Ok((bytes, digest, media_type)) => {
            // The cache is an optimisation: failing to fill it must not fail the build.
            let _ = write_atomically(&cache_path("manifests", &digest), &bytes);
            if reference.digest().is_none() {
                let _ = write_atomically(&tag_record, digest.as_bytes());
            }
            Ok((bytes, digest, media_type))
        }
        Err(e) => {
            let remembered = std::fs::read_to_string(&tag_record).ok().map(|d| d.trim().to_string());
            let cached = remembered.and_then(|d| std::fs::read(cache_path("manifests", &d)).ok().map(|b| (b, d)));
            match cached {
                Some((bytes, digest)) if sha256_digest(&bytes) == digest => {
                    tracing::warn!(reference = %reference.whole(), %digest, "registry unreachable; using the cached base");
                    let media_type = super::registry::manifest_media_type(&bytes).unwrap_or_default();
                    Ok((Bytes::from(bytes), digest, media_type))
                }
                _ => Err(e),
            }
        }
    }
}

async fn cached_or_fetch_blob(
    registries: &Registries,
    reference: &Reference,
    digest: &str,
    size: u64,
) -> Result<Bytes> {
    let path = cache_path("blobs", digest);
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() as u64 == size && sha256_digest(&bytes) == digest {
            return Ok(Bytes::from(bytes));
        }
    }
    let bytes = registries.pull_blob(reference, digest, size).await?;
    let _ = write_atomically(&path, &bytes);
    Ok(Bytes::from(bytes))
}

/// The bytes of a blob, from memory, the cache or its source repository.
pub async fn blob_bytes(registries: &Registries, blob: &Blob) -> Result<Bytes> {
    match &blob.data {
        BlobData::Memory(b) => Ok(b.clone()),
        BlobData::Remote(source) => cached_or_fetch_blob(registries, source, &blob.digest, blob.size).await,
        BlobData::Layer(layer) => {
            let layer = layer.clone();
            tokio::task::spawn_blocking(move || layer.bytes())
                .await
                .map_err(|e| KodevError::build(format!("compressing a layer panicked: {e}")))?
        }
    }
}

/// The platform named by an index entry's `platform` or an image config (same field names).
fn platform_of_json(p: &Value) -> Platform {
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let variant = s("variant");
    Platform { os: s("os"), architecture: s("architecture"), variant: (!variant.is_empty()).then_some(variant) }
}

/// Pick the entries of an index that a request wants, in the index's order.
pub fn select_platforms(available: &[Platform], request: &PlatformRequest, base_name: &str) -> Result<Vec<usize>> {
    let chosen = select_any_os(available, request, base_name)?;
    // ko lays Windows images out differently (Hives/, Files/, .exe); building them the Linux way
    // would give an image that cannot start.
    if let Some(windows) = chosen.iter().map(|&i| &available[i]).find(|p| p.os == "windows") {
        return Err(KodevError::build(format!(
            "kodev does not build Windows images yet, and {base_name} selects {windows}: request Linux platforms (--platform linux/amd64,…)"
        )));
    }
    Ok(chosen)
}

fn select_any_os(available: &[Platform], request: &PlatformRequest, base_name: &str) -> Result<Vec<usize>> {
    match request {
        PlatformRequest::All => Ok((0..available.len()).filter(|&i| !available[i].is_unknown()).collect()),
        PlatformRequest::List(wanted) => {
            let mut chosen = Vec::new();
            for want in wanted {
                let found = available.iter().position(|p| !p.is_unknown() && want.matches(p)).ok_or_else(|| {
                    let have: Vec<String> =
                        available.iter().filter(|p| !p.is_unknown()).map(|p| p.to_string()).collect();
                    KodevError::build(format!(
                        "base image {base_name} has no platform {want} (it has: {})",
                        have.join(", ")
                    ))
                })?;
                if !chosen.contains(&found) {
                    chosen.push(found);
                }
            }
            chosen.sort_unstable();
            Ok(chosen)
        }
    }
}

/// Resolve a base for the requested platforms.
pub async fn resolve(registries: &Registries, base: &BaseImageRef, request: &PlatformRequest) -> Result<BaseImage> {
    match base {
        BaseImageRef::Builtin => builtin(request),
        BaseImageRef::Remote(name) => resolve_remote(registries, name, request).await,
    }
}

/// What a base named by tag stands for now, against `kept`, the base an earlier build of the
/// session resolved it to.
pub enum Recheck {
    /// The tag still names `kept` (or the base is named by digest, or built in).
    Same,
    /// The tag moved: the base resolved anew.
    Moved(BaseImage),
    /// The registry could not say (unreachable, refused, too slow): why.
    Unknown(String),
}

/// How long a build waits for the registry to say what a base's tag names now, beside the
/// compile, before it builds on the base it had.
pub const RECHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Look a base's tag up again, as Skaffold's ko builder does at every build of `skaffold dev`
/// (it makes a new ko builder, whose base cache is empty, per build): a base whose tag moved
/// during the session is built on from the next build on. One manifest request while go
/// builds; the platform manifests and configs of a base seen before come from the cache.
pub async fn recheck(
    registries: &Registries,
    base: &BaseImageRef,
    request: &PlatformRequest,
    kept: &BaseImage,
) -> Result<Recheck> {
    let BaseImageRef::Remote(name) = base else { return Ok(Recheck::Same) };
    let reference = parse_reference(name)?;
    if reference.digest().is_some() {
        return Ok(Recheck::Same);
    }
    let digest = match tokio::time::timeout(RECHECK_LIMIT, registries.pull_manifest(&reference)).await {
        Ok(Ok((_, digest, _))) => digest,
        Ok(Err(e)) => return Ok(Recheck::Unknown(e.to_string())),
        Err(_) => return Ok(Recheck::Unknown(format!("no answer in {} s", RECHECK_LIMIT.as_secs()))),
    };
    if digest == kept.digest {
        return Ok(Recheck::Same);
    }
    tracing::debug!(base = %name, was = %kept.digest, now = %digest, "the base's tag moved");
    resolve_remote(registries, name, request).await.map(Recheck::Moved)
}

async fn resolve_remote(registries: &Registries, name: &str, request: &PlatformRequest) -> Result<BaseImage> {
    let reference = parse_reference(name)?;
    let (bytes, digest, media_type) = cached_or_fetch_manifest(registries, &reference).await?;
    let family = MediaFamily::of_manifest_type(&media_type);
    let top: Value = serde_json::from_slice(&bytes)
        .map_err(|e| KodevError::build(format!("base image {name}: manifest is not JSON: {e}")))?;
    let repo_ref = |digest: &str| reference.clone_with_digest(digest.to_string());
    let mut images = Vec::new();
    if let Some(manifests) = top.get("manifests").and_then(Value::as_array) {
        let platforms: Vec<Platform> = manifests
            .iter()
            .map(|m| {
                m.get("platform").map(platform_of_json).unwrap_or_else(|| Platform::new("unknown", "unknown", None))
            })
            .collect();
        for i in select_platforms(&platforms, request, name)? {
            let entry = &manifests[i];
            let child_digest = entry.get("digest").and_then(Value::as_str).unwrap_or_default().to_string();
            let (child_bytes, child_digest, _) = cached_or_fetch_manifest(registries, &repo_ref(&child_digest)).await?;
            let manifest: Value = serde_json::from_slice(&child_bytes).map_err(|e| {
                KodevError::build(format!("base image {name}: manifest {child_digest} is not JSON: {e}"))
            })?;
            let config = fetch_config(registries, &reference, &manifest, name).await?;
            images.push(platform_image(
                &reference,
                manifest,
                config,
                child_digest,
                entry.get("platform").cloned().unwrap_or(Value::Null),
                platforms[i].clone(),
            ));
        }
    } else {
        let config = fetch_config(registries, &reference, &top, name).await?;
        let platform = platform_of_json(&config);
        select_platforms(std::slice::from_ref(&platform), request, name)?;
        let platform_json = platform_json(&platform);
        images.push(platform_image(&reference, top, config, digest.clone(), platform_json, platform));
    }
    Ok(BaseImage { name: reference.whole(), digest, family, images })
}

fn platform_json(p: &Platform) -> Value {
    let mut v = json!({"architecture": p.architecture, "os": p.os});
    if let Some(variant) = &p.variant {
        v["variant"] = json!(variant);
    }
    v
}

fn platform_image(
    reference: &Reference,
    manifest: Value,
    config: Value,
    digest: String,
    platform_json: Value,
    platform: Platform,
) -> BasePlatformImage {
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|d| Blob {
                    descriptor: d.clone(),
                    digest: d.get("digest").and_then(Value::as_str).unwrap_or_default().to_string(),
                    size: d.get("size").and_then(Value::as_u64).unwrap_or(0),
                    data: BlobData::Remote(reference.clone()),
                })
                .collect()
        })
        .unwrap_or_default();
    let platform_json = if platform_json.is_null() { self::platform_json(&platform) } else { platform_json };
    BasePlatformImage { platform, platform_json, manifest_digest: digest, manifest, config, layers }
}

async fn fetch_config(registries: &Registries, reference: &Reference, manifest: &Value, name: &str) -> Result<Value> {
    let descriptor = manifest
        .get("config")
        .ok_or_else(|| KodevError::build(format!("base image {name}: manifest has no config")))?;
    let digest = descriptor.get("digest").and_then(Value::as_str).unwrap_or_default();
    let size = descriptor.get("size").and_then(Value::as_u64).unwrap_or(0);
    let bytes = cached_or_fetch_blob(registries, reference, digest, size).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| KodevError::build(format!("base image {name}: config {digest} is not JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The built-in static base.

/// The name recorded in the base-name annotation for the built-in base.
pub const BUILTIN_BASE_NAME: &str = "kodev.dev/builtin/static:latest";

const PASSWD: &[u8] = include_bytes!("../../assets/passwd");
const GROUP: &[u8] = include_bytes!("../../assets/group");
const CA_BUNDLE: &[u8] = include_bytes!("../../assets/ca-certificates.crt");

/// Platforms the built-in base offers for `all`; it holds no binaries, so any Linux platform works.
pub const BUILTIN_PLATFORMS: &[(&str, Option<&str>)] =
    &[("amd64", None), ("arm64", None), ("arm", Some("v7")), ("ppc64le", None), ("s390x", None), ("riscv64", None)];

fn builtin_layer() -> &'static Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| {
        let mut tar = TarWriter::new(Vec::new());
        let dir = |name: &'static str, mode: u32, owner: u64| EntryHeader {
            name,
            kind: EntryKind::Directory,
            mode,
            uid: owner,
            gid: owner,
            size: 0,
            mtime: 0,
        };
        let file = |name: &'static str, data: &[u8]| EntryHeader {
            name,
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime: 0,
        };
        let write = |tar: &mut TarWriter<Vec<u8>>| -> std::io::Result<()> {
            tar.append_header(&dir("etc", 0o755, 0))?;
            tar.append_file(&file("etc/group", GROUP), GROUP)?;
            tar.append_file(&file("etc/passwd", PASSWD), PASSWD)?;
            tar.append_header(&dir("etc/ssl", 0o755, 0))?;
            tar.append_header(&dir("etc/ssl/certs", 0o755, 0))?;
            tar.append_file(&file("etc/ssl/certs/ca-certificates.crt", CA_BUNDLE), CA_BUNDLE)?;
            tar.append_header(&dir("home", 0o755, 0))?;
            tar.append_header(&dir("home/nonroot", 0o700, 65532))?;
            tar.append_header(&dir("root", 0o700, 0))?;
            tar.append_header(&dir("tmp", 0o1777, 0))?;
            Ok(())
        };
        write(&mut tar).expect("writing to memory cannot fail");
        let tar_bytes = tar.finish().expect("writing to memory cannot fail");
        let mut layer =
            super::layer::compress_layer(LayerKind::Base, tar_bytes).expect("compressing in memory cannot fail");
        layer.kind = LayerKind::Base;
        layer
    })
}

fn builtin_image(platform: &Platform) -> BasePlatformImage {
    let layer = builtin_layer();
    let family = MediaFamily::Oci;
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": "65532",
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
            ],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kodev built-in static base"}]
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = json!(variant);
    }
    let config_bytes = serde_json::to_vec(&config).expect("JSON values serialize");
    let layer_blob = Blob::from_layer(family.layer_type(), layer);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": family.manifest_type(),
        "config": {"mediaType": family.config_type(), "digest": sha256_digest(&config_bytes), "size": config_bytes.len()},
        "layers": [layer_blob.descriptor],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON values serialize");
    BasePlatformImage {
        platform: platform.clone(),
        platform_json: platform_json(platform),
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest,
        config,
        layers: vec![layer_blob],
    }
}

fn builtin(request: &PlatformRequest) -> Result<BaseImage> {
    let platforms: Vec<Platform> = match request {
        PlatformRequest::All => BUILTIN_PLATFORMS.iter().map(|(arch, v)| Platform::new("linux", arch, *v)).collect(),
        PlatformRequest::List(list) => {
            let mut out = Vec::new();
            for p in list {
                if p.os != "linux" && !p.os.is_empty() {
                    return Err(KodevError::build(format!(
                        "the built-in base is Linux-only and cannot serve {p}: set ko.fromImage to a base image for that platform"
                    )));
                }
                let concrete = Platform {
                    os: "linux".to_string(),
                    architecture: if p.architecture.is_empty() { "amd64".to_string() } else { p.architecture.clone() },
                    variant: p.variant.clone(),
                };
                if !out.contains(&concrete) {
                    out.push(concrete);
                }
            }
            out
        }
    };
    let images: Vec<BasePlatformImage> = platforms.iter().map(builtin_image).collect();
    let digest = if images.len() == 1 {
        images[0].manifest_digest.clone()
    } else {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MediaFamily::Oci.index_type(),
            "manifests": images.iter().map(|i| json!({"mediaType": MediaFamily::Oci.manifest_type(), "digest": i.manifest_digest, "platform": i.platform_json})).collect::<Vec<_>>(),
        });
        sha256_digest(&serde_json::to_vec(&index).expect("JSON values serialize"))
    };
    Ok(BaseImage { name: BUILTIN_BASE_NAME.to_string(), digest, family: MediaFamily::Oci, images })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_base_order_and_skips_attestations() {
        let available = vec![
            Platform::new("linux", "amd64", None),
            Platform::new("linux", "arm64", Some("v8")),
            Platform::new("unknown", "unknown", None),
        ];
        let all = select_platforms(&available, &PlatformRequest::All, "b").unwrap();
        assert_eq!(all, vec![0, 1]);
        let req =
            PlatformRequest::List(vec![Platform::new("linux", "arm64", None), Platform::new("linux", "amd64", None)]);
        assert_eq!(select_platforms(&available, &req, "b").unwrap(), vec![0, 1]);
        let with_windows = vec![Platform::new("linux", "amd64", None), Platform::new("windows", "amd64", None)];
        let err = select_platforms(&with_windows, &PlatformRequest::All, "b").unwrap_err().to_string();
        assert!(err.contains("Windows") && err.contains("windows/amd64"), "{err}");
        let linux_only = PlatformRequest::List(vec![Platform::new("linux", "amd64", None)]);
        assert_eq!(select_platforms(&with_windows, &linux_only, "b").unwrap(), vec![0]);
        let missing = PlatformRequest::List(vec![Platform::new("linux", "s390x", None)]);
        let err = select_platforms(&available, &missing, "b").unwrap_err().to_string();
        assert!(err.contains("linux/s390x") && err.contains("linux/amd64"), "{err}");
    }

    #[test]
    fn builtin_base_is_deterministic() {
        let req = PlatformRequest::List(vec![Platform::new("linux", "arm64", None)]);
        let a = builtin(&req).unwrap();
        let b = builtin(&req).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.images[0].config["architecture"], "arm64");
        assert!(builtin(&PlatformRequest::List(vec![Platform::new("windows", "amd64", None)])).is_err());
    }
}
