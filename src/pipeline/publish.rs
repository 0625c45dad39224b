//! Putting a built image somewhere: a registry or an OCI image layout.
//! A publisher never knows how the image was made; blobs first, manifests next, the tag last,
//! so a failure never leaves a tag pointing at a partial image.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::base::{blob_bytes, write_atomically, Blob, BlobData};
use super::image::BuiltImage;
use super::registry::{parse_reference, Registries};
use super::{AbortOnDrop, PendingUpload};
use crate::error::{KodevError, Result};

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What happened to each blob and the whole push.
#[derive(Debug, Clone, Default)]
pub struct PushOutcome {
    /// `name:tag@sha256:…`
    pub reference: String,
    pub digest: String,
    /// Digests that were uploaded (or written) rather than already present.
    pub uploaded: HashSet<String>,
    pub bytes_uploaded: u64,
    /// Bytes of blobs the target already had.
    pub bytes_skipped: u64,
}

/// A blob whose bytes went (or are going) to the registry while it was being made, not yet committed.
pub struct StreamedBlob {
    pub digest: String,
    pub upload: PendingUpload,
}

/// A blob (a config) uploaded while the build was still running: what it uploaded, or None
/// when the registry already had it.
pub struct EarlyUpload(pub AbortOnDrop<Result<Option<(String, u64)>>>);

#[derive(Clone)]
pub enum Publisher {
    Registry(Arc<Registries>),
    OciLayout { dir: PathBuf, registries: Arc<Registries>, index_lock: Arc<Mutex<()>> },
}

/// Every distinct blob of an image (configs and layers), in push order.
fn distinct_blobs(image: &BuiltImage) -> Vec<Blob> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for manifest in image.manifests() {
        for (_, layer) in &manifest.layers {
            if seen.insert(layer.digest.clone()) {
                out.push(layer.clone());
            }
        }
        if seen.insert(manifest.config.digest.clone()) {
            out.push(manifest.config.clone());
        }
    }
    out
}

const PARALLEL_UPLOADS: usize = 4;

/// One blob's upload, awaited by every platform manifest that names it: what it uploaded, or
/// None when the target had it.
type SharedUpload<'a> = Shared<BoxFuture<'a, Result<Option<(String, u64)>>>>;

impl Publisher {
    /// Get ready to publish `name` (connect and authenticate) while the build runs.
    pub async fn prepare(&self, name: &str) -> Result<()> {
        match self {
            Publisher::Registry(registries) => registries.ping(&parse_reference(name)?).await,
            Publisher::OciLayout { .. } => Ok(()),
        }
    }

    /// Publish an image; `streamed` are uploads of its blobs already sent and waiting for their
    /// commit, which goes along with the other blobs; `early` are uploads of its blobs that
    /// started before the image was complete.
    pub async fn publish(
        &self,
        image: &BuiltImage,
        name: &str,
        tag: &str,
        streamed: Vec<StreamedBlob>,
        early: Vec<EarlyUpload>,
    ) -> Result<PushOutcome> {
        let mut outcome = match self {
            Publisher::Registry(registries) => {
                match publish_to_registry(registries, image, name, tag, streamed, early).await {
                    // The registry lost blobs this session remembered (restarted without storage, say):
                    // forget what it was thought to hold and push everything it lacks again, once.
                    Err(e) if e.to_string().to_ascii_lowercase().contains("blob unknown") => {
                        registries.forget(&parse_reference(name)?);
                        publish_to_registry(registries, image, name, tag, Vec::new(), Vec::new()).await
                    }
                    other => other,
                }
            }
            Publisher::OciLayout { dir, registries, index_lock } => {
                publish_to_layout(dir, registries, index_lock, image, name, tag).await
            }
        }?;
        let total: u64 = distinct_blobs(image).iter().map(|b| b.size).sum();
        outcome.bytes_skipped = total.saturating_sub(outcome.bytes_uploaded);
        Ok(outcome)
    }
}

async fn publish_to_registry(
    registries: &Registries,
    image: &BuiltImage,
    name: &str,
    tag: &str,
    streamed: Vec<StreamedBlob>,
    early: Vec<EarlyUpload>,
) -> Result<PushOutcome> {
    let target = parse_reference(name)?;
    let blobs = distinct_blobs(image);
    let mut streamed: HashMap<String, PendingUpload> = streamed.into_iter().map(|s| (s.digest, s.upload)).collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL_UPLOADS));
    let uploads = blobs.into_iter().map(|blob| {
        let target = target.clone();
        let slots = slots.clone();
        let sent = streamed.remove(&blob.digest);
        let digest = blob.digest.clone();
        (digest, async move {
            if let Some(upload) = match sent {
                Some(pending) => pending.sent().await,
                None => None,
            } {
                match registries.commit_streamed(&target, upload, &blob.digest).await {
                    Ok(()) => return Ok(Some((blob.digest.clone(), blob.size))),
                    Err(e) => tracing::debug!(error = %e, "streamed upload not committed; uploading the layer whole"),
                }
            }
            let _slot = slots.acquire_owned().await.map_err(|e| KodevError::publish(e.to_string()))?;
            if registries.blob_exists(&target, &blob.digest).await? {
                return Ok::<_, KodevError>(None);
            }
            if let BlobData::Remote(source) = &blob.data {
                let same_registry = source.resolve_registry() == target.resolve_registry();
                if same_registry && registries.mount_blob(&target, source, &blob.digest).await? {
                    return Ok(None);
                }
            }
            let data = blob_bytes(registries, &blob).await?;
            // Another upload of it (an early one) that got there first counts it.
            let uploaded = registries.upload_blob(&target, data, &blob.digest).await?;
            Ok(uploaded.then(|| (blob.digest.clone(), blob.size)))
        })
    });
    let started = std::time::Instant::now();
    // Each blob goes up once, whichever platforms share it; each platform's manifest goes up
    // as soon as its own blobs are there, while other platforms' layers are still on their way.
    let uploads: HashMap<String, SharedUpload> =
        uploads.map(|(digest, upload)| (digest, upload.boxed().shared())).collect();
    let is_index = matches!(image, BuiltImage::Index { .. });
    futures::future::try_join_all(image.manifests().iter().map(|manifest| {
        let blobs: Vec<SharedUpload> = manifest
            .layers
            .iter()
            .map(|(_, blob)| &blob.digest)
            .chain(std::iter::once(&manifest.config.digest))
            .filter_map(|digest| uploads.get(digest).cloned())
            .collect();
        let (target, registries) = (&target, registries);
        async move {
            futures::future::try_join_all(blobs).await?;
            if is_index {
                let reference = target.clone_with_digest(manifest.digest.clone());
                registries.put_manifest(&reference, manifest.bytes.clone(), &manifest.media_type).await?;
            }
            Ok::<_, KodevError>(())
        }
    }))
    .await?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "blobs and platform manifests in place");
    let results = futures::future::try_join_all(uploads.into_values()).await?;
    let mut outcome = PushOutcome::default();
    // An early upload done before its blob's turn left the blob known, so that turn sent
    // nothing: the early upload is what this push uploaded.
    let early_results = futures::future::join_all(early.into_iter().map(|EarlyUpload(task)| task.finish())).await;
    let early_uploaded = early_results.into_iter().filter_map(|joined| match joined {
        Ok(Ok(uploaded)) => uploaded,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "early upload failed; the blob went up with the image");
            None
        }
        Err(_) => None,
    });
    for (digest, size) in results.into_iter().flatten().chain(early_uploaded) {
        if outcome.uploaded.insert(digest) {
            outcome.bytes_uploaded += size;
        }
    }
    for pending in streamed.into_values() {
        if let Some(upload) = pending.sent().await {
            upload.cancel().await;
        }
    }
    // The top level goes with its tag, last: one PUT stores it and moves the tag together.
    let tagged = parse_reference(&format!("{name}:{tag}"))?;
    registries.put_manifest(&tagged, image.bytes().clone(), image.media_type()).await?;
    outcome.digest = image.digest().to_string();
    outcome.reference = format!("{name}:{tag}@{}", image.digest());
    Ok(outcome)
}

/// Every digest an index (or manifest) reaches through the layout's blobs.
fn reachable(dir: &Path, node: &Value, seen: &mut HashSet<String>) {
    let descriptors = node
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(node.get("layers").and_then(Value::as_array).into_iter().flatten())
        .chain(node.get("config"));
    for descriptor in descriptors {
        let Some(digest) = descriptor.get("digest").and_then(Value::as_str) else { continue };
        if !seen.insert(digest.to_string()) {
            continue;
        }
        let media_type = descriptor.get("mediaType").and_then(Value::as_str).unwrap_or_default();
        if media_type.contains("manifest") || media_type.contains("index") {
            if let Some(child) =
                std::fs::read(blob_path(dir, digest)).ok().and_then(|b| serde_json::from_slice(&b).ok())
            {
                reachable(dir, &child, seen);
            }
        }
    }
}

/// Remove the blobs of an OCI layout that its index no longer reaches.
pub fn collect_garbage(dir: &Path, index: &Value) -> std::io::Result<u64> {
    let mut keep = HashSet::new();
    reachable(dir, index, &mut keep);
    let mut removed = 0;
    for entry in std::fs::read_dir(dir.join("blobs/sha256"))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let is_digest = name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit());
        if is_digest && !keep.contains(&format!("sha256:{name}")) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether an OCI layout already holds a blob.
pub fn layout_has_blob(dir: &Path, digest: &str) -> bool {
    blob_path(dir, digest).is_file()
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs").join(digest.replace(':', "/"))
}

async fn write_blob_if_missing(dir: &Path, digest: &str, data: &[u8]) -> Result<bool> {
    let path = blob_path(dir, digest);
    if path.is_file() {
        return Ok(false);
    }
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || write_atomically(&path, &data))
        .await
        .map_err(|e| KodevError::publish(format!("writing a blob panicked: {e}")))?
        .map_err(|e| KodevError::publish(format!("cannot write blob {digest} in {}: {e}", dir.display())))?;
    Ok(true)
}

async fn publish_to_layout(
    dir: &Path,
    registries: &Registries,
    index_lock: &Mutex<()>,
    image: &BuiltImage,
    name: &str,
    tag: &str,
) -> Result<PushOutcome> {
    let io_err = |what: &str, e: std::io::Error| {
        KodevError::publish(format!("cannot write {what} in OCI layout {}: {e}", dir.display()))
    };
    // One writer at a time: the garbage collection below must not see another build's new blobs
    // before its index entry exists.
    let _guard = index_lock.lock().await;
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(|e| io_err("blobs", e))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.is_file() {
        write_atomically(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| io_err("oci-layout", e))?;
    }
    let mut outcome = PushOutcome::default();
    for blob in distinct_blobs(image) {
        if layout_has_blob(dir, &blob.digest) {
            continue;
        }
        let data = blob_bytes(registries, &blob).await?;
        if write_blob_if_missing(dir, &blob.digest, &data).await? {
            outcome.bytes_uploaded += blob.size;
            outcome.uploaded.insert(blob.digest.clone());
        }
    }
    if let BuiltImage::Index { .. } = image {
        for manifest in image.manifests() {
            write_blob_if_missing(dir, &manifest.digest, &manifest.bytes).await?;
        }
    }
    write_blob_if_missing(dir, image.digest(), image.bytes()).await?;

    // index.json last: the reference appears only once everything it names is on disk.
    let reference = format!("{name}:{tag}");
    let index_path = dir.join("index.json");
    let mut index: Value =
        std::fs::read(&index_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(
            || json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}),
        );
    let manifests = index.get_mut("manifests").and_then(Value::as_array_mut).ok_or_else(|| {
        KodevError::publish(format!("{} has no manifests list; remove it and rebuild", index_path.display()))
    })?;
    manifests.retain(|m| {
        m.pointer(&format!("/annotations/{}", ANNOTATION_REF_NAME.replace('/', "~1"))).and_then(Value::as_str)
            != Some(&reference)
    });
    manifests.push(json!({
        "mediaType": image.media_type(),
        "digest": image.digest(),
        "size": image.bytes().len(),
        "annotations": {ANNOTATION_REF_NAME: reference},
    }));
    let bytes = serde_json::to_vec_pretty(&index).expect("JSON values serialize");
    write_atomically(&index_path, &bytes).map_err(|e| io_err("index.json", e))?;
    // A rebuild replaces its tag: drop what no entry of index.json reaches any more, so a long
    // dev session does not fill the disk with old binaries.
    let dir_owned = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || collect_garbage(&dir_owned, &index)).await;
    outcome.digest = image.digest().to_string();
    outcome.reference = format!("{reference}@{}", image.digest());
    Ok(outcome)
}
