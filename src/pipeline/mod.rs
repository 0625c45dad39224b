//! The build pipeline: go build × platform → layers → image → index → publish.
//! Knows nothing of watching or screens; reports progress as events.

pub mod base;
pub mod caps;
pub mod gobuild;
pub mod gocache;
pub mod image;
pub mod layer;
pub mod priority;
pub mod publish;
pub mod registry;
pub mod relink;
pub mod tarball;
pub mod trim;
pub mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Mutex;

use crate::config::{Artifact, BaseImageRef, Plan, PublishTarget};
use crate::error::{KodevError, Result};
use crate::event::{EventKind, EventSink};
use crate::platform::{Platform, PlatformRequest};
use base::{BaseImage, BlobData};
use image::{BuiltImage, ConfigEdits};
use layer::{ChunkMemo, KodataSource, Layer, LayerKind};
use publish::{EarlyUpload, Publisher, PushOutcome, StreamedBlob};
use registry::Registries;
use upload::OpenUpload;

/// A base image as requested: which reference, for which platforms.
type BaseKey = (BaseImageRef, Vec<String>);

/// A base image being resolved (or resolved): every build and platform that needs it waits
/// for the one resolution.
type SharedBase = Shared<BoxFuture<'static, Result<Arc<BaseImage>>>>;

/// The kodata layer being made.
type SharedLayer = Shared<BoxFuture<'static, Result<Layer>>>;

/// Builds and publishes artifacts; holds what is worth keeping between builds (base images).
pub struct Builder {
    registries: Arc<Registries>,
    publisher: Publisher,
    bases: std::sync::Mutex<HashMap<BaseKey, SharedBase>>,
    /// Compressed chunks of the latest binary layers, for the next build of the same binaries.
    chunks: Arc<ChunkMemo>,
    /// go's recipes for relinking after an edit of the main package alone.
    relinker: Option<Arc<relink::Relinker>>,
    /// `kodev dev`: a base named by tag is looked up again at each build (see `base::recheck`).
    recheck_bases: bool,
    /// Bases whose registry could not be asked again, said once: an offline session hears it
    /// once, not at every build, until a lookup gets an answer again.
    unanswered_bases: Arc<std::sync::Mutex<std::collections::HashSet<BaseKey>>>,
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

/// Edits of the main package alone are relinked without the go command (see `relink`), unless
/// `KODEV_RELINK=0`.
fn relinking_on() -> bool {
    std::env::var("KODEV_RELINK").map_or(true, |v| v != "0")
}

impl Builder {
    /// A builder for one-shot builds.
    pub fn new(plan: &Plan) -> Self {
        Builder::with_relink_checks(plan, false)
    }

    /// A builder for `kodev dev`: each binary it relinks is confirmed by `go build -n` in the
    /// background once pushed (see `relink`).
    pub fn for_dev(plan: &Plan) -> Self {
        Builder::with_relink_checks(plan, true)
    }

    fn with_relink_checks(plan: &Plan, check_with_go: bool) -> Self {
        let registries = Arc::new(Registries::new(plan.insecure_registries.clone()));
        let publisher = match &plan.target {
            PublishTarget::Registry => Publisher::Registry(registries.clone()),
            PublishTarget::OciLayout(dir) => Publisher::OciLayout {
                dir: dir.clone(),
                registries: registries.clone(),
                index_lock: Arc::new(Mutex::new(())),
            },
        };
        let relinker = relinking_on().then(|| Arc::new(relink::Relinker::new(check_with_go)));
        // Once per process (a reloaded config makes a new builder), off every build's path; a
        // one-shot build may exit before it is done, which only leaves the rest for the next
        // day's trim.
        static TRIMMING: std::sync::Once = std::sync::Once::new();
        TRIMMING.call_once(|| {
            std::thread::spawn(|| {
                let removed = trim::trim(&base::cache_dir(), std::time::SystemTime::now());
                if removed > 0 {
                    tracing::debug!(removed, "cache entries unused for five days removed");
                }
            });
        });
        Builder {
            registries,
            publisher,
            bases: Default::default(),
            chunks: Arc::default(),
            relinker,
            recheck_bases: check_with_go,
            unanswered_bases: Arc::default(),
        }
    }

    /// Base images are resolved once per builder and kept in memory; one that failed to resolve
    /// is tried again by the next build. In `kodev dev` each build looks a tag up again beside
    /// its compile, and builds on the kept base when the tag still names it, or when the
    /// registry cannot say (then it says so). Builds that start while a lookup is on share it.
    /// Returns the lookup and, when it is a second look, the base kept from before it.
    fn base_for(&self, artifact: &Artifact, events: &EventSink) -> (SharedBase, Option<Arc<BaseImage>>) {
        let key = (artifact.base.clone(), artifact.platforms.describe());
        let mut bases = self.bases.lock().unwrap_or_else(|e| e.into_inner());
        let (registries, reference, platforms) =
            (self.registries.clone(), artifact.base.clone(), artifact.platforms.clone());
        let mut kept_before = None;
        let resolving = match bases.get(&key).map(|found| (found.clone(), found.peek().cloned())) {
            Some((_, Some(Ok(kept)))) if self.recheck_bases => {
                let events = events.clone();
                kept_before = Some(kept.clone());
                let (unanswered, key) = (self.unanswered_bases.clone(), key.clone());
                async move {
                    let recheck = base::recheck(&registries, &reference, &platforms, &kept).await?;
                    let mut unanswered = unanswered.lock().unwrap_or_else(|e| e.into_inner());
                    if !matches!(recheck, base::Recheck::Unknown(_)) {
                        unanswered.remove(&key);
                    }
                    match recheck {
                        base::Recheck::Same => Ok(kept),
                        base::Recheck::Moved(now) => Ok(Arc::new(now)),
                        base::Recheck::Unknown(why) => {
                            let message = format!(
                                "cannot look up base image {reference} again ({why}); building on {}",
                                kept.digest
                            );
                            if unanswered.insert(key) {
                                events.send(EventKind::Error { message });
                            } else {
                                tracing::debug!("{message}");
                            }
                            Ok(kept)
                        }
                    }
                }
                .boxed()
                .shared()
            }
            Some((found, Some(Ok(_)) | None)) => return (found, None),
            _ => async move { base::resolve(&registries, &reference, &platforms).await.map(Arc::new) }.boxed().shared(),
        };
        bases.insert(key, resolving.clone());
        (resolving, kept_before)
    }

    /// The binary's layer, with its upload when it is streaming to the registry. A binary built
    /// before (go did not relink it: same build ID) whose layer the target already holds is not
    /// compressed again; otherwise the layer is compressed, streaming to the registry as it goes,
    /// and `config_early` gets the layer's diff ID as soon as it is hashed.
    async fn binary_layer(
        &self,
        binary: FinishedBinary,
        app: &layer::AppFile,
        slot: String,
        target: Option<&oci_client::Reference>,
        config_early: impl FnOnce(tokio::sync::oneshot::Receiver<String>) -> Option<EarlyUpload>,
        session: Option<OpeningUpload>,
    ) -> Result<(Layer, Option<PendingUpload>, Option<EarlyUpload>, Option<SavingChunks>)> {
        let FinishedBinary { path: binary, keyed_ahead } = binary;
        let cache = base::cache_dir();
        trim::mark_used(&saved_chunks_path(&slot));
        let build_id = layer::go_build_id(&binary);
        if let Some(record) = build_id.as_deref().and_then(|id| layer::load_record(&cache, id, app)) {
            let present = match (&self.publisher, target) {
                (Publisher::Registry(registries), Some(target)) => {
                    registries.blob_exists(target, &record.digest).await.unwrap_or(false)
                }
                (Publisher::OciLayout { dir, .. }, _) => publish::layout_has_blob(dir, &record.digest),
                _ => false,
            };
            if present {
                tracing::debug!(digest = %record.digest, "binary unchanged since an earlier build; its layer is already there");
                // Closed now rather than when dropped: a one-shot build may exit before a
                // deletion left to the background is sent.
                if let Some(opening) = session {
                    if let Ok(Ok(unused)) = opening.finish().await {
                        unused.cancel().await;
                    }
                }
                return Ok((layer::recorded_binary_layer(record, &binary, app), None, None, None));
            }
        }
        let (diff_id, diff_id_known) = tokio::sync::oneshot::channel();
        let config = config_early(diff_id_known);
        let source = BinarySource {
            path: binary,
            app: app.clone(),
            chunks: self.chunks.clone(),
            slot: slot.clone(),
            diff_id,
            keyed_ahead,
        };
        let (layer, streamed) = match (&self.publisher, target) {
            (Publisher::Registry(registries), Some(target)) => {
                binary_layer_uploading(registries, target, source, session).await?
            }
            _ => (binary_layer_blocking(source).await?, None),
        };
        if let Some(id) = build_id {
            layer::save_record(&cache, &id, app, &layer);
        }
        // Written while the image goes up; best effort, like the records.
        let memo = self.chunks.clone();
        let saving = tokio::task::spawn_blocking(move || {
            let path = saved_chunks_path(&slot);
            static SWEPT: std::sync::Once = std::sync::Once::new();
            SWEPT.call_once(|| {
                if let Some(dir) = path.parent() {
                    let removed = base::remove_stale_temp_files(dir);
                    if removed > 0 {
                        tracing::debug!(removed, "removed chunk files left half-written by killed processes");
                    }
                }
            });
            if let Err(e) = memo.save_slot(&slot, &path) {
                tracing::debug!(error = %e, "cannot keep the layer's chunks for later processes");
            }
        });
        Ok((layer, streamed, config, Some(saving)))
    }

    /// Open the upload session of the binary's layer while go finishes the binary, so the layer
    /// streams to the registry from its first compressed piece. Only for registries; dropped
    /// unused (the binary's layer was already there, a cancelled build), it is deleted.
    fn open_layer_session(&self, target: Option<&oci_client::Reference>) -> Option<OpeningUpload> {
        let (Publisher::Registry(registries), Some(target)) = (&self.publisher, target) else { return None };
        let (registries, target) = (registries.clone(), target.clone());
        Some(AbortOnDrop(tokio::spawn(async move { registries.open_upload(&target).await })))
    }

    /// When kodev's own relink starts the linker (`link_starts`), read the chunks an earlier
    /// process kept for this slot, on a core the single-threaded linker leaves idle rather
    /// than after the link. Nothing is read when go builds or the binary is up to date (the
    /// sender is dropped unsent). Returns how many chunks were read.
    fn load_chunks_while_linking(
        &self,
        link_starts: tokio::sync::oneshot::Receiver<()>,
        slot: &str,
    ) -> tokio::task::JoinHandle<usize> {
        let (memo, slot) = (self.chunks.clone(), slot.to_string());
        tokio::spawn(async move {
            if link_starts.await.is_err() {
                return 0;
            }
            let loaded = tokio::task::spawn_blocking(move || memo.load_slot(&slot, &saved_chunks_path(&slot)))
                .await
                .unwrap_or(0);
            tracing::debug!(chunks = loaded, "chunks read while the linker runs");
            loaded
        })
    }

    /// While go finishes the binary: read the chunks an earlier process kept for this slot
    /// (unless `early_load` or the memo has them), then, if `compress`, compress the rest of
    /// the linker's output into the memo. Returns how many chunks were read once both are
    /// done or stopped, and the chunks compressing ahead cut and keyed.
    fn prepare_layer_ahead(
        &self,
        linker_output: PathBuf,
        app: &layer::AppFile,
        slot: &str,
        compress: bool,
        early_load: tokio::task::JoinHandle<usize>,
    ) -> (WantedWhileAlive, tokio::task::JoinHandle<(usize, Option<layer::KeyedAhead>)>) {
        let wanted = Arc::new(AtomicBool::new(true));
        let (memo, app, slot, flag) = (self.chunks.clone(), app.clone(), slot.to_string(), wanted.clone());
        let task = tokio::spawn(async move {
            // Still reading (a link shorter than the read): wait rather than read twice.
            let loaded_early = early_load.await.unwrap_or(0);
            let prepared = tokio::task::spawn_blocking(move || {
                let loaded = memo.load_slot(&slot, &saved_chunks_path(&slot));
                if !compress || !flag.load(Ordering::Relaxed) {
                    return (loaded, None);
                }
                let started = Instant::now();
                match layer::precompress_binary(&linker_output, &app, &memo, &slot, &flag) {
                    Ok((chunks, keyed)) => {
                        let ms = started.elapsed().as_millis() as u64;
                        tracing::debug!(chunks, keyed = keyed.len(), ms, "compressed ahead");
                        (loaded, Some(keyed))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "compressing ahead failed");
                        (loaded, None)
                    }
                }
            });
            let (loaded, keyed) = prepared.await.unwrap_or((0, None));
            (loaded_early + loaded, keyed)
        });
        (WantedWhileAlive(wanted), task)
    }

    /// Upload a platform's config as soon as its newly compressed binary layer's diff ID is
    /// known, while the layer is still being compressed: the publish step then only commits
    /// the layer before the manifest goes up. After an edit the config is new, so it is sent
    /// without asking first. The publish step makes the same config again (the same bytes) and
    /// uploads it itself if this did not get it there. Only for registries.
    fn upload_config_early(
        &self,
        target: Option<&oci_client::Reference>,
        platform: &Platform,
        parts: (SharedBase, SharedLayer, ConfigEdits),
        diff_id: tokio::sync::oneshot::Receiver<String>,
    ) -> Option<EarlyUpload> {
        let (Publisher::Registry(registries), Some(target)) = (&self.publisher, target) else { return None };
        let (registries, target, platform) = (registries.clone(), target.clone(), platform.clone());
        let (base, kodata, edits) = parts;
        let upload = async move {
            // The session opens while the diff ID is being hashed: the config then goes up
            // in one request.
            let (session, diff_id) = tokio::join!(registries.open_upload(&target), diff_id);
            // Dropped unused (no diff ID, a cancelled build), the session is deleted (see OpenUpload).
            let session = session.ok();
            let Ok(binary_diff_id) = diff_id else { return Ok(None) };
            let (base, kodata) = (base.await?, kodata.await?);
            let Some(base_image) = base.images.iter().find(|i| platform.matches(&i.platform) || platform == i.platform)
            else {
                return Ok(None);
            };
            let diff_ids = [(kodata.kind, kodata.diff_id.clone()), (LayerKind::Binary, binary_diff_id)];
            let config = image::config_blob(base.family, &base_image.config, &diff_ids, &edits);
            let BlobData::Memory(bytes) = &config.data else { return Ok(None) };
            let uploaded = match session {
                Some(upload) => match registries.finish_upload(&target, upload, bytes.clone(), &config.digest).await {
                    Ok(uploaded) => uploaded,
                    Err(e) => {
                        tracing::debug!(error = %e, "config upload on the early session failed");
                        registries.upload_blob(&target, bytes.clone(), &config.digest).await?
                    }
                },
                None => registries.upload_blob(&target, bytes.clone(), &config.digest).await?,
            };
            tracing::debug!(digest = %config.digest, uploaded, "config uploaded ahead of its layer");
            Ok(uploaded.then_some((config.digest, config.size)))
        };
        Some(EarlyUpload(AbortOnDrop(tokio::spawn(upload))))
    }

    /// Build every platform of an artifact and publish it.
    pub async fn build_artifact(&self, artifact: &Artifact, debug: bool, events: &EventSink) -> Result<BuildOutcome> {
        self.build_artifact_tagged(artifact, debug, events, None).await
    }

    /// [`Builder::build_artifact`], published under `tag` when given: a tag worked out while the
    /// build runs (the tagger's git or hashing costs no latency), else the artifact's own.
    pub async fn build_artifact_tagged(
        &self,
        artifact: &Artifact,
        debug: bool,
        events: &EventSink,
        tag: Option<tokio::task::JoinHandle<String>>,
    ) -> Result<BuildOutcome> {
        let started = Instant::now();
        tracing::debug!(image = %artifact.image, "build starts");
        // A concrete platform list is known before the base: compile while the base resolves.
        let concrete = match &artifact.platforms {
            PlatformRequest::List(list)
                if list.iter().all(|p| {
                    !p.os.is_empty() && !p.architecture.is_empty() && (p.architecture != "arm" || p.variant.is_some())
                }) =>
            {
                Some(list.clone())
            }
            _ => None,
        };
        let (shared_base, kept_base) = self.base_for(artifact, events);
        let platforms_of_kept_base = concrete.is_none() && kept_base.is_some();
        let (resolved_base, platforms) = match (concrete, &kept_base) {
            (Some(list), _) => (None, list),
            // `kodev dev` looking the base up again: go starts on the platforms of the base the
            // session has, beside the lookup; a base that moved to other platforms is built
            // again below.
            (None, Some(kept)) => (None, kept.images.iter().map(|i| i.platform.clone()).collect()),
            (None, None) => {
                let base = shared_base.clone().await?;
                let platforms = base.images.iter().map(|i| i.platform.clone()).collect();
                (Some(base), platforms)
            }
        };
        events.send(EventKind::BuildStarted { platforms: platforms.iter().map(|p| p.to_string()).collect(), debug });

        let kodata_artifact = artifact.clone();
        let kodata = tokio::task::spawn_blocking(move || {
            let source = KodataSource {
                dir: kodata_artifact.package_dir.join("kodata"),
                allowed_root: kodata_allowed_root(&kodata_artifact),
                mtime: std::env::var("KO_DATA_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0),
            };
            layer::kodata_layer(&source)
        });
        let kodata: SharedLayer = async move { kodata.await.map_err(join_error)? }.boxed().shared();
        let edits = ConfigEdits {
            binary_name: artifact.binary_name().to_string(),
            import_path: artifact.import_path.clone(),
            labels: artifact.labels.clone(),
            created: source_date_epoch(artifact).map(image::rfc3339),
            debug,
        };

        // Usually read by hand in microseconds (see `parse_reference`); None for an OCI layout name.
        let upload_target = registry::parse_reference(&artifact.image_name).ok();
        let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let slots = Arc::new(tokio::sync::Semaphore::new(parallel));
        // Each platform's go build sees the artifact as expanded for it (ko's per-platform `.Env`).
        let per_platform = platforms
            .iter()
            .map(|platform| artifact.for_platform(platform))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|message| KodevError::build(format!("{}: {message}", artifact.image)))?;
        // Cores are divided between the platforms only when each of them relinks a binary it
        // built before: then they have the same packages to compile. A platform with nothing
        // built yet may have the whole standard library to compile while the others are done
        // at once, and it would then be held to its share.
        let relinking_all = platforms.iter().zip(&per_platform).all(|(platform, artifact)| {
            gobuild::output_dir(artifact, platform, debug).join(artifact.binary_name()).is_file()
        });
        let gomaxprocs = if relinking_all { gobuild::gomaxprocs_share(artifact, platforms.len()) } else { None };
        let compile_all =
            futures::future::try_join_all(platforms.iter().zip(&per_platform).map(|(platform, artifact)| {
                let artifact: &Artifact = artifact;
                let out_dir = gobuild::output_dir(artifact, platform, debug);
                let slot = out_dir.display().to_string();
                let slots = slots.clone();
                let config_parts = (shared_base.clone(), kodata.clone(), edits.clone());
                let upload_target = upload_target.as_ref();
                async move {
                    let _slot = slots.acquire_owned().await.map_err(|e| KodevError::build(e.to_string()))?;
                    std::fs::create_dir_all(&out_dir)
                        .map_err(|e| KodevError::build(format!("cannot create {}: {e}", out_dir.display())))?;
                    trim::mark_used(&out_dir);
                    let (linking, link_starts) = tokio::sync::oneshot::channel();
                    let (linked, link_seen) = tokio::sync::oneshot::channel();
                    let (placed, in_place) = tokio::sync::oneshot::channel();
                    let milestones = gobuild::Milestones { linking, linked, placed };
                    let early_load = self.load_chunks_while_linking(link_starts, &slot);
                    let compile = gobuild::go_build(
                        artifact,
                        platform,
                        debug,
                        &out_dir,
                        events,
                        Some(milestones),
                        gomaxprocs,
                        self.relinker.as_ref(),
                    );
                    tokio::pin!(compile);
                    // Compressing starts when the linker is done; go still needs a while to finish.
                    let mut ahead = None;
                    let mut stamped = None;
                    let mut layer_session = None;
                    let mut exited = false;
                    let binary = tokio::select! {
                        biased;
                        built = &mut compile => { exited = true; built? }
                        Ok(linker_output) = link_seen => {
                            // Only with a core to spare: taking one from another go build (a second
                            // platform still linking) delays that build by more than it saves here.
                            let compress = gobuild::running_go_builds() < layer::compression_workers();
                            stamped = linker_output.stamped;
                            ahead = Some(self.prepare_layer_ahead(
                                linker_output.path,
                                &artifact.app_file(),
                                &slot,
                                compress,
                                early_load,
                            ));
                            layer_session = self.open_layer_session(upload_target);
                            tokio::select! {
                                biased;
                                built = &mut compile => { exited = true; built? }
                                // Final once go renamed it into place: go is only cleaning up now.
                                Ok(binary) = in_place => {
                                    tracing::debug!("binary in place, go still exiting");
                                    binary
                                }
                            }
                        }
                    };
                    // The layer is made now, from the finished binary: no new chunks ahead of it.
                    // Without the linker's close (go did not relink: the layer is likely recorded
                    // already) the saved chunks are not read at all.
                    let mut keyed_ahead = None;
                    if let Some((wanted, preparing)) = ahead {
                        drop(wanted);
                        if let Ok((loaded, keyed)) = preparing.await {
                            if loaded > 0 {
                                tracing::debug!(
                                    chunks = loaded,
                                    "chunks of this slot's last layer read from the cache"
                                );
                            }
                            keyed_ahead = keyed;
                        }
                    }
                    // What compressing ahead cut and keyed stands when kodev linked the binary and
                    // wrote its content ID only where the layer cuts and keys again anyway.
                    let keyed_ahead = match (keyed_ahead, stamped) {
                        (Some(keyed), Some(stamped)) => {
                            stamped.await.ok().and_then(|(offsets, len)| keyed.hold_after(&offsets, len))
                        }
                        _ => None,
                    };
                    let binary = FinishedBinary { path: binary, keyed_ahead };
                    let config_early =
                        |diff_id| self.upload_config_early(upload_target, platform, config_parts, diff_id);
                    let app = artifact.app_file();
                    let layer_work = self.binary_layer(binary, &app, slot, upload_target, config_early, layer_session);
                    // Nothing is published before go has exited successfully; a failure drops the
                    // layer's work (and its uploads) with it.
                    let (layer, streamed, config, saving) =
                        if exited { layer_work.await? } else { tokio::try_join!(layer_work, &mut compile)?.0 };
                    Ok::<_, KodevError>((platform.clone(), layer, streamed, config, saving))
                }
            }));
        let (base, binaries) = match resolved_base {
            Some(base) => (base, compile_all.await?),
            // Fails fast: a missing base stops the compiles (dropping them kills go).
            None => {
                // The compiles first: try_join! polls in order, so go starts before anything else runs.
                let (binaries, base, ()) =
                    tokio::try_join!(compile_all, shared_base, self.publisher.prepare(&artifact.image_name))?;
                (base, binaries)
            }
        };
        let kodata = kodata.await?;
        let binary_for = |base_image: &base::BasePlatformImage| {
            binaries
                .iter()
                .find(|(requested, ..)| requested.matches(&base_image.platform) || *requested == base_image.platform)
        };
        if platforms_of_kept_base && !base.images.iter().all(|i| binary_for(i).is_some()) {
            // Rare: the base's tag moved to an index of other platforms. The new base is kept
            // now, so the build starts again on its platforms.
            tracing::debug!(image = %artifact.image, "the base's platforms changed; building again for them");
            return Box::pin(self.build_artifact_tagged(artifact, debug, events, tag)).await;
        }

        let mut manifests = Vec::new();
        for base_image in &base.images {
            let (_, binary, ..) = binary_for(base_image)
                .ok_or_else(|| KodevError::build(format!("no binary was built for {}", base_image.platform)))?;
            let layers = [kodata.clone(), binary.clone()];
            manifests.push(image::compose_image(&base, base_image, &layers, &edits));
        }
        let built = image::assemble(&base, manifests);

        let publish_started = Instant::now();
        let mut streamed = Vec::new();
        let mut early = Vec::new();
        let mut savings = Vec::new();
        for (_, layer, upload, config, saving) in binaries {
            streamed.extend(upload.map(|upload| StreamedBlob { digest: layer.digest, upload }));
            early.extend(config);
            savings.extend(saving);
        }
        let tag = match tag {
            Some(worked_out) => worked_out.await.unwrap_or_else(|_| artifact.tag.clone()),
            None => artifact.tag.clone(),
        };
        let push = self.publisher.publish(&built, &artifact.image_name, &tag, streamed, early).await?;
        let push_ms = publish_started.elapsed().as_millis() as u64;
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
            bytes_skipped: push.bytes_skipped,
            push_ms,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        if let Some(relinker) = &self.relinker {
            relinker.check_pushed(&artifact.image, events);
        }
        // Before returning: a one-shot build's process exits right after.
        futures::future::join_all(savings).await;
        if let Some(relinker) = &self.relinker {
            relinker.settle().await;
        }
        Ok(BuildOutcome { image: built, push })
    }

    /// This builder is being replaced (`kodev dev` read a changed config): its background go
    /// builds that record recipes stop, leaving the machine to the new builder's first builds.
    pub fn retire(&self) {
        if let Some(relinker) = &self.relinker {
            relinker.stop_recaptures();
        }
    }
}

/// Set to false when dropped: a cancelled build tells its compressor to stop, and compression
/// ahead of the finished binary stops taking chunks once the layer itself is being made.
struct WantedWhileAlive(Arc<AtomicBool>);

impl Drop for WantedWhileAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A finished binary, with what compressing ahead cut and keyed of these very bytes.
struct FinishedBinary {
    path: PathBuf,
    keyed_ahead: Option<layer::KeyedAhead>,
}

/// A built binary to put in a layer, with the chunk memo of its slot and who waits for its diff ID.
struct BinarySource {
    path: PathBuf,
    app: layer::AppFile,
    chunks: Arc<ChunkMemo>,
    slot: String,
    diff_id: tokio::sync::oneshot::Sender<String>,
    keyed_ahead: Option<layer::KeyedAhead>,
}

impl BinarySource {
    fn layer(self, sink: layer::ChunkSink) -> Result<Layer> {
        let BinarySource { path, app, chunks, slot, diff_id, keyed_ahead } = self;
        let streaming = layer::Streaming {
            sink: Some(sink),
            memo: Some((&chunks, &slot)),
            on_diff_id: Some(Box::new(move |id: &str| {
                let _ = diff_id.send(id.to_string());
            })),
            keyed_ahead,
        };
        layer::binary_layer_streaming(&path, &app, streaming)
    }
}

/// Compress the binary layer while its pieces stream to the registry. Returns as soon as the
/// layer is compressed, with the upload still finishing: the image's configs and the commit of
/// this upload then go up together. When streaming fails, the layer is still complete and the
/// publish step uploads it whole.
async fn binary_layer_uploading(
    registries: &Arc<Registries>,
    target: &oci_client::Reference,
    source: BinarySource,
    session: Option<OpeningUpload>,
) -> Result<(Layer, Option<PendingUpload>)> {
    let (pieces, received) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    // What the compressed layer can come to: the binary, stored where it does not shrink, with
    // each chunk's gzip framing and the tar around it.
    let binary_len = std::fs::metadata(&source.path).map_or(0, |m| m.len());
    let most_bytes = binary_len + binary_len / 64 + (64 << 10);
    let wanted = Arc::new(AtomicBool::new(true));
    let _guard = WantedWhileAlive(wanted.clone());
    let compress = tokio::task::spawn_blocking(move || {
        let mut pieces = Some(pieces);
        source.layer(&mut |piece| {
            if pieces.as_ref().is_some_and(|p| p.blocking_send(piece.clone()).is_err()) {
                // The upload gave up; keep compressing for the usual upload.
                pieces = None;
            }
            wanted.load(Ordering::Relaxed)
        })
    });
    let sending = {
        let registries = registries.clone();
        let target = target.clone();
        AbortOnDrop(tokio::spawn(async move {
            // A session that could not be opened ahead is opened now.
            let opened = match session {
                Some(opening) => opening.finish().await.ok().and_then(|opened| opened.ok()),
                None => None,
            };
            registries.send_streamed(&target, opened, received, most_bytes).await
        }))
    };
    let started = Instant::now();
    let layer = compress.await.map_err(join_error)?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "binary layer compressed");
    match layer {
        Ok(layer) => {
            let pending = PendingUpload { sending, size: layer.size };
            Ok((layer, Some(pending)))
        }
        Err(e) => {
            if let Ok(Ok(upload)) = sending.finish().await {
                upload.cancel().await;
            }
            Err(e)
        }
    }
}

/// A task that dies with its handle (a cancelled build takes its upload with it).
pub struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub async fn finish(mut self) -> std::result::Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The chunks of a new layer being written to the cache (see `ChunkMemo::save_slot`).
type SavingChunks = tokio::task::JoinHandle<()>;

/// Where a slot's chunks are kept between processes.
fn saved_chunks_path(slot: &str) -> PathBuf {
    use sha2::Digest;
    let key = hex::encode(sha2::Sha256::digest(slot.as_bytes()));
    base::cache_dir().join("chunks").join(&key[..32])
}

/// An upload session being opened.
type OpeningUpload = AbortOnDrop<std::result::Result<OpenUpload, String>>;

/// A streamed upload whose last bytes may still be on their way.
pub struct PendingUpload {
    sending: AbortOnDrop<std::result::Result<OpenUpload, String>>,
    size: u64,
}

impl PendingUpload {
    /// The upload, once every byte of the layer reached the registry; None when it did not
    /// (the layer then goes up whole).
    pub async fn sent(self) -> Option<OpenUpload> {
        let started = Instant::now();
        let outcome = self.sending.finish().await.map_err(|e| e.to_string()).and_then(|sent| sent);
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "binary layer sent");
        match outcome {
            Ok(upload) if upload.bytes == self.size => {
                tracing::debug!("layer streamed to the registry while compressing");
                Some(upload)
            }
            Ok(upload) => {
                upload.cancel().await;
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "streamed upload failed; the layer goes up with the image");
                None
            }
        }
    }
}

async fn binary_layer_blocking(source: BinarySource) -> Result<Layer> {
    tokio::task::spawn_blocking(move || source.layer(&mut |_| true)).await.map_err(join_error)?
}
