//! The build pipeline: go build × platform → layers → image → index → publish.
//! Knows nothing of watching or screens; reports progress as events.

pub mod base;
pub mod gobuild;
pub mod image;
pub mod layer;
pub mod publish;
pub mod registry;
pub mod tarball;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use crate::config::{Artifact, BaseImageRef, Plan, PublishTarget};
use crate::error::{KodevError, Result};
use crate::event::{EventKind, EventSink};
use crate::platform::PlatformRequest;
use base::BaseImage;
use image::{BuiltImage, ConfigEdits};
use layer::{KodataSource, Layer};
use publish::{Publisher, PushOutcome};
use registry::Registries;

/// A base image as requested: which reference, for which platforms.
type BaseKey = (BaseImageRef, Vec<String>);

/// Builds and publishes artifacts; holds what is worth keeping between builds (base images).
pub struct Builder {
    registries: Arc<Registries>,
    publisher: Publisher,
    bases: Mutex<HashMap<BaseKey, Arc<BaseImage>>>,
}

/// The result of one artifact's build.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub image: BuiltImage,
    pub push: PushOutcome,
}

fn join_error(e: tokio::task::JoinError) -> KodevError {
    KodevError::build(format!("a build task failed: {e}"))
}

/// `SOURCE_DATE_EPOCH` from the environment wins over the artifact's `sourceDateEpoch`.
fn source_date_epoch(artifact: &Artifact) -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()).or(artifact.source_date_epoch)
}

/// Symlinks in kodata must stay inside `KO_DATA_PATH_ALLOWED_ROOT`, else the enclosing git work tree, else the context.
fn kodata_allowed_root(artifact: &Artifact) -> PathBuf {
    if let Some(root) = std::env::var_os("KO_DATA_PATH_ALLOWED_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let git_root = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(&artifact.package_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    git_root.unwrap_or_else(|| artifact.context.clone())
}

impl Builder {
    pub fn new(plan: &Plan) -> Self {
        let registries = Arc::new(Registries::new(plan.insecure_registries.clone()));
        let publisher = match &plan.target {
            PublishTarget::Registry => Publisher::Registry(registries.clone()),
            PublishTarget::OciLayout(dir) => Publisher::OciLayout {
                dir: dir.clone(),
                registries: registries.clone(),
                index_lock: Arc::new(Mutex::new(())),
            },
        };
        Builder { registries, publisher, bases: Mutex::new(HashMap::new()) }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Base images are resolved once per session and kept in memory.
    async fn base_for(&self, artifact: &Artifact) -> Result<Arc<BaseImage>> {
        let key = (artifact.base.clone(), artifact.platforms.describe());
        if let Some(found) = self.bases.lock().await.get(&key) {
            return Ok(found.clone());
        }
        let resolved = Arc::new(base::resolve(&self.registries, &artifact.base, &artifact.platforms).await?);
        self.bases.lock().await.insert(key, resolved.clone());
        Ok(resolved)
    }

    /// Build every platform of an artifact and publish it.
    pub async fn build_artifact(&self, artifact: &Artifact, debug: bool, events: &EventSink) -> Result<BuildOutcome> {
        let started = Instant::now();
        let base = self.base_for(artifact).await?;
        let platforms: Vec<String> = base.images.iter().map(|i| i.platform.to_string()).collect();
        events.send(EventKind::BuildStarted { platforms, debug });

        let kodata_source = KodataSource {
            dir: artifact.package_dir.join("kodata"),
            allowed_root: kodata_allowed_root(artifact),
            mtime: std::env::var("KO_DATA_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0),
        };
        let kodata =
            tokio::task::spawn_blocking(move || layer::kodata_layer(&kodata_source)).await.map_err(join_error)??;

        let scratch_root = base::cache_dir().join("tmp");
        std::fs::create_dir_all(&scratch_root)
            .map_err(|e| KodevError::build(format!("cannot create {}: {e}", scratch_root.display())))?;
        let scratch = tempfile::tempdir_in(&scratch_root).map_err(|e| {
            KodevError::build(format!("cannot create a build directory in {}: {e}", scratch_root.display()))
        })?;

        let edits = ConfigEdits {
            binary_name: artifact.binary_name().to_string(),
            import_path: artifact.import_path.clone(),
            labels: artifact.labels.clone(),
            created: source_date_epoch(artifact).map(image::rfc3339),
            debug,
        };
        let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let slots = Arc::new(tokio::sync::Semaphore::new(parallel));
        let per_platform = base.images.iter().enumerate().map(|(i, base_image)| {
            let out_dir = scratch.path().join(i.to_string());
            let kodata = kodata.clone();
            let base = base.clone();
            let edits = edits.clone();
            let slots = slots.clone();
            async move {
                let _slot = slots.acquire_owned().await.map_err(|e| KodevError::build(e.to_string()))?;
                std::fs::create_dir_all(&out_dir)
                    .map_err(|e| KodevError::build(format!("cannot create {}: {e}", out_dir.display())))?;
                let binary = gobuild::go_build(artifact, &base_image.platform, debug, &out_dir, events).await?;
                let name = artifact.binary_name().to_string();
                let layer_started = Instant::now();
                let binary_layer = binary_layer_blocking(binary, name).await?;
                tracing::debug!(elapsed_ms = layer_started.elapsed().as_millis() as u64, "binary layer");
                let layers = vec![kodata, binary_layer];
                Ok::<_, KodevError>(image::compose_image(&base, base_image, &layers, &edits))
            }
        });
        let manifests: Vec<image::ImageManifest> = futures::future::try_join_all(per_platform).await?;
        let built = image::assemble(&base, manifests);

        let publish_started = Instant::now();
        let push = self.publisher.publish(&built, &artifact.image_name, &artifact.tag).await?;
        tracing::debug!(elapsed_ms = publish_started.elapsed().as_millis() as u64, "publish");
        for manifest in built.manifests() {
            for (kind, blob) in &manifest.layers {
                events.send(EventKind::Layer {
                    platform: manifest.platform.to_string(),
                    kind: *kind,
                    digest: blob.digest.clone(),
                    size: blob.size,
                    uploaded: push.uploaded.contains(&blob.digest),
                });
            }
        }
        events.send(EventKind::Pushed {
            tag: push.reference.clone(),
            digest: push.digest.clone(),
            debug,
            bytes_uploaded: push.bytes_uploaded,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        Ok(BuildOutcome { image: built, push })
    }
}

async fn binary_layer_blocking(binary: PathBuf, name: String) -> Result<Layer> {
    tokio::task::spawn_blocking(move || layer::binary_layer(Path::new(&binary), &name)).await.map_err(join_error)?
}

/// Platforms as the user will see them before the base is resolved.
pub fn describe_platforms(request: &PlatformRequest) -> String {
    request.describe().join(",")
}
