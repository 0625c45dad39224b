//! Configuration: skaffold.yaml + .ko.yaml + flags + environment → a `Plan`.
//! Knows nothing of building; `go list` is only asked where packages are.

pub mod envfile;
pub mod global;
pub mod globs;
pub mod gopkg;
pub mod init;
pub mod koyaml;
pub mod naming;
pub mod skaffold;
pub mod tag;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{KodevError, Result};
use crate::platform::{Platform, PlatformRequest};
pub use gopkg::{go_binary, go_binary_path, go_list_packages, GoPackage};
use gopkg::{main_package_from_go_mod, relative_package_arg};
use skaffold::{ArtifactConfig, KoDependencies, ProfileSelection, SkaffoldConfig, TagPolicy};

/// The base image an artifact is built on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BaseImageRef {
    /// kodev's embedded static base (no network needed).
    Builtin,
    /// A reference to pull from a registry.
    Remote(String),
}

impl std::fmt::Display for BaseImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BaseImageRef::Builtin => write!(f, "kodev/static (built in)"),
            BaseImageRef::Remote(r) => write!(f, "{r}"),
        }
    }
}

/// Where images go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PublishTarget {
    Registry,
    OciLayout(PathBuf),
}

/// One image to build: pure data, everything resolved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// The image as written in skaffold.yaml.
    pub image: String,
    /// The final repository name, without tag.
    pub image_name: String,
    pub tag: String,
    pub import_path: String,
    pub context: PathBuf,
    pub work_dir: PathBuf,
    /// Directory of the main package; `kodata/` lives here.
    pub package_dir: PathBuf,
    pub platforms: PlatformRequest,
    pub base: BaseImageRef,
    /// `KEY=value` for the build only.
    pub env: Vec<String>,
    pub flags: Vec<String>,
    pub ldflags: Vec<String>,
    pub gcflags: Vec<String>,
    pub asmflags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub dependencies: Option<KoDependencies>,
    /// `dependencies` compiled (None: no `paths` given, kodev's default applies).
    #[serde(skip)]
    pub dependency_globs: Option<globs::DependencyGlobs>,
    pub source_date_epoch: Option<u64>,
    /// The binary's `security.capability` attribute, from `.ko.yaml`'s `linux_capabilities`.
    pub file_capabilities: Option<Vec<u8>>,
    /// How `kodev dev` works the tag out again at each build (None: the tag is fixed, given
    /// with `-t` or in the image name, or the tagger does not read the tree).
    #[serde(skip)]
    pub retag: Option<tag::Retag>,
    /// How `kodev dev` expands the artifact's templated settings again at each build (None:
    /// none of them reads what changes during a session).
    #[serde(skip)]
    pub retemplate: Option<Arc<Retemplate>>,
    /// Flags and ldflags that read what differs by platform, expanded again for each one (see
    /// [`Artifact::for_platform`]); None when they do not.
    #[serde(skip)]
    pub per_platform: Option<Arc<PlatformTemplates>>,
}

impl Artifact {
    /// The artifact as `platform`'s go build sees it: flags and ldflags that read ko's
    /// per-platform values (`.Env.GOOS`, `.Env.GOARCH`, `GOARM`, `GOAMD64`, `.GoEnv`) expanded
    /// with that platform's, as ko expands them for each platform it builds.
    pub fn for_platform(&self, platform: &Platform) -> std::result::Result<std::borrow::Cow<'_, Artifact>, String> {
        let Some(templates) = &self.per_platform else { return Ok(std::borrow::Cow::Borrowed(self)) };
        let (flags, ldflags) = templates.expand(platform, &self.env).map_err(|(_, message)| message)?;
        Ok(std::borrow::Cow::Owned(Artifact { flags, ldflags, ..self.clone() }))
    }

    pub fn binary_name(&self) -> &str {
        naming::binary_name(&self.import_path)
    }

    /// The binary's file in the image: its name, with its capabilities.
    pub fn app_file(&self) -> crate::pipeline::layer::AppFile {
        crate::pipeline::layer::AppFile {
            name: self.binary_name().to_string(),
            capabilities: self.file_capabilities.clone(),
        }
    }

    pub fn reference(&self) -> String {
        format!("{}:{}", self.image_name, self.tag)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub config_path: PathBuf,
    /// Every config file read (the main one and those it requires): editing one reloads.
    pub config_files: Vec<PathBuf>,
    /// Directory of skaffold.yaml; relative paths start here.
    pub root: PathBuf,
    pub artifacts: Vec<Artifact>,
    pub target: PublishTarget,
    pub insecure_registries: Vec<String>,
    /// Artifacts built at once (0 = unlimited).
    pub concurrency: usize,
}

impl Plan {
    /// The directories to watch: every config file's and artifact context's, without the ones
    /// inside another (a `requires: ../lib` adds `../lib`, not the whole parent directory).
    pub fn watch_roots(&self) -> Vec<PathBuf> {
        let mut candidates: Vec<PathBuf> = std::iter::once(self.root.clone())
            .chain(self.config_files.iter().map(|f| dir_of(f)))
            .chain(self.artifacts.iter().map(|a| a.context.clone()))
            .collect();
        candidates.sort();
        candidates.dedup();
        let mut roots: Vec<PathBuf> = Vec::new();
        for dir in candidates {
            if !roots.iter().any(|r| dir.starts_with(r)) {
                roots.push(dir);
            }
        }
        roots
    }
}

/// What the command line and environment say, before reading any file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub file: PathBuf,
    pub default_repo: Option<String>,
    pub multi_level_repo: bool,
    pub push: Option<bool>,
    pub platforms: Vec<String>,
    pub tag: Option<String>,
    pub oci_layout: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub build_images: Vec<String>,
    /// Profiles named with `-p`.
    pub profiles: Vec<String>,
    /// `build` or `dev`, for profile activation by command.
    pub command: String,
    /// Only describing the plan (`kodev plan`): a target that cannot be pushed to is not an error.
    pub describe_only: bool,
    /// `--kube-context`: the context profiles' `activation.kubeContext` is matched against,
    /// instead of kubeconfig's current one.
    pub kube_context: Option<String>,
    /// `-c/--config`: Skaffold's global config file, instead of `~/.skaffold/config`.
    pub global_config: Option<PathBuf>,
}

impl LoadOptions {
    /// Default repo from the flag, else `SKAFFOLD_DEFAULT_REPO`, else Skaffold's global config
    /// (`from_global_config`), else `KO_DOCKER_REPO`.
    pub fn effective_default_repo(&self, from_global_config: Option<&str>) -> Option<String> {
        self.default_repo
            .clone()
            .or_else(|| std::env::var("SKAFFOLD_DEFAULT_REPO").ok())
            .or_else(|| from_global_config.map(str::to_string))
            .or_else(|| std::env::var("KO_DOCKER_REPO").ok())
            .filter(|r| !r.trim().is_empty())
    }
}

/// The default when nothing says otherwise, as ko does.
pub fn default_platform() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn config_err(file: &Path, line: Option<usize>, field: &str, message: impl Into<String>) -> KodevError {
    KodevError::Config {
        file: file.to_path_buf(),
        line,
        column: None,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// One decoded config document and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub file: PathBuf,
    /// Directory of `file`: the config's relative paths start here.
    pub root: PathBuf,
    pub text: Arc<String>,
    /// The line the config's document starts on in `text`.
    pub first_line: usize,
    pub config: SkaffoldConfig,
    /// What active profiles wrote over the config (see `skaffold::written_path`).
    pub profile_writes: Vec<skaffold::ProfileWrite>,
}

fn read_config(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).map_err(|e| KodevError::Config {
        file: file.to_path_buf(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot read the config: {e} (pass -f FILE, or run `kodev init` to create one)"),
    })
}

fn dir_of(file: &Path) -> PathBuf {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    dir.canonicalize().unwrap_or(dir)
}

/// Read a skaffold.yaml and, depth first, the files it `requires`; a cycle is an error.
pub fn load_configs(file: &Path, selection: &ProfileSelection, stack: &mut Vec<PathBuf>) -> Result<Vec<LoadedConfig>> {
    let canonical = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let text = Arc::new(read_config(file)?);
    let configs = skaffold::parse_documents(file, &text, selection)?;
    let root = dir_of(file);
    stack.push(canonical);
    let mut out = Vec::new();
    for skaffold::Document { first_line, config, profile_writes } in configs {
        for (i, dependency) in config.requires.iter().enumerate() {
            let field = format!("requires[{i}]");
            let line = skaffold::field_line(&text, first_line, &["requires", &format!("[{i}]")]);
            if dependency.git.is_some() || dependency.google_cloud_storage.is_some() {
                return Err(config_err(
                    file,
                    line,
                    &field,
                    "remote requires (git, googleCloudStorage) are not supported: check the config out and use path",
                ));
            }
            let target = root.join(dependency.path.as_deref().unwrap_or("."));
            let target = if target.is_dir() { target.join("skaffold.yaml") } else { target };
            let path_line = skaffold::field_line(&text, first_line, &["requires", &format!("[{i}]"), "path"]);
            if !target.is_file() {
                return Err(config_err(
                    file,
                    path_line,
                    &format!("{field}.path"),
                    format!("{} does not exist", target.display()),
                ));
            }
            // A cycle is named where it closes: this entry of this file.
            let required = target.canonicalize().unwrap_or_else(|_| target.clone());
            if let Some(pos) = stack.iter().position(|f| *f == required) {
                let cycle: Vec<String> =
                    stack[pos..].iter().chain([&required]).map(|p| p.display().to_string()).collect();
                return Err(config_err(
                    file,
                    path_line,
                    &format!("{field}.path"),
                    format!("requires cycle: {}; remove one of the requires", cycle.join(" → ")),
                ));
            }
            let mut nested = selection.clone();
            nested.names.extend(dependency.active_profiles.iter().map(|p| p.name.clone()));
            let required = load_configs(&target, &nested, stack)?;
            let wanted: Vec<LoadedConfig> = required
                .into_iter()
                .filter(|c| {
                    dependency.configs.is_empty()
                        || c.config
                            .metadata
                            .as_ref()
                            .and_then(|m| m.name.as_ref())
                            .is_some_and(|n| dependency.configs.contains(n))
                })
                .collect();
            out.extend(wanted);
        }
        out.push(LoadedConfig {
            file: file.to_path_buf(),
            root: root.clone(),
            text: text.clone(),
            first_line,
            config,
            profile_writes,
        });
    }
    stack.pop();
    Ok(out)
}

/// Read skaffold.yaml (its requires, .ko.yaml) and resolve every artifact.
pub fn load(options: &LoadOptions) -> Result<Plan> {
    let file = &options.file;
    let kube_context = options.kube_context.clone().or_else(skaffold::current_kube_context);
    let selection =
        ProfileSelection { names: options.profiles.clone(), command: options.command.clone(), kube_context };
    // Skaffold's global config (`skaffold config set`), for the context in use.
    let global = match options.global_config.clone().or_else(global::location) {
        Some(path) => global::read(&path, selection.kube_context.as_deref())?,
        None => global::ContextConfig::default(),
    };
    let loaded = load_configs(file, &selection, &mut Vec::new())?;
    if loaded.is_empty() {
        return Err(config_err(
            file,
            None,
            "",
            "the file holds no config: add `apiVersion`, `kind: Config` and `build.artifacts`",
        ));
    }
    for name in &options.profiles {
        let name = &name.strip_prefix('-').unwrap_or(name).to_string();
        if !loaded.iter().any(|c| c.config.profiles.iter().any(|p| &p.name == name)) {
            let known: Vec<&str> =
                loaded.iter().flat_map(|c| c.config.profiles.iter().map(|p| p.name.as_str())).collect();
            return Err(KodevError::Usage(format!(
                "profile {name:?} is not defined in {} (profiles: {})",
                file.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
    }
    let root = dir_of(file);

    // ko's settings in the environment, which beat each artifact's .ko.yaml.
    let ko_environment = koyaml::KoEnvironment::read()?;
    let default_repo = options.effective_default_repo(global.default_repo.as_deref());
    let multi_level = options.multi_level_repo
        || match std::env::var("SKAFFOLD_MULTI_LEVEL_REPO") {
            Ok(v) => v == "true",
            Err(_) => global.multi_level_repo.unwrap_or(false),
        };
    let cli_platforms =
        PlatformRequest::parse_list(&options.platforms).map_err(|e| KodevError::Usage(format!("--platform: {e}")))?;

    let mut artifacts = Vec::new();
    let mut insecure = options.insecure_registries.clone();
    insecure.extend(global.insecure_registries.iter().cloned());
    let mut push_from_config = None;
    let mut concurrency = 1;
    let mut config_files = Vec::new();
    for LoadedConfig { file, root: config_root, text, first_line, config, profile_writes } in &loaded {
        if !config_files.contains(file) {
            config_files.push(file.clone());
        }
        let line_of = |path: &[&str]| skaffold::field_line(text, *first_line, path);
        let build_line = |key: &str, below: &[&str]| {
            let field: Vec<&str> = ["build", key].into_iter().chain(below.iter().copied()).collect();
            let path = skaffold::written_path(profile_writes, &field);
            line_of(&path.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let artifact_lines = |i: usize| build_line("artifacts", &[&format!("[{i}]")]);
        let uses_ko = config.build.as_ref().is_some_and(|b| b.artifacts.iter().any(|a| a.ko.is_some()));
        if let Err(message) = skaffold::check_api_version(&config.api_version, uses_ko) {
            return Err(config_err(file, line_of(&["apiVersion"]), "apiVersion", message));
        }
        if config.kind != "Config" {
            return Err(config_err(
                file,
                line_of(&["kind"]),
                "kind",
                format!("kind must be Config, not {:?}", config.kind),
            ));
        }
        let Some(build) = &config.build else { continue };
        let tagger_field = build.tag_policy.as_ref().map(TagPolicy::tagger_field).unwrap_or_default();
        let tag_policy_at = SettingLine {
            line: build_line("tagPolicy", &tagger_field),
            field: ["build", "tagPolicy"].iter().chain(&tagger_field).copied().collect::<Vec<_>>().join("."),
        };
        insecure.extend(build.insecure_registries.iter().cloned());
        if let Some(local) = &build.local {
            push_from_config = push_from_config.or(local.push);
            if let Some(c) = local.concurrency {
                concurrency = c;
            }
        }
        let build_platforms = match &build.platforms {
            Some(list) => Some(
                PlatformRequest::parse_list(list)
                    .map_err(|e| config_err(file, build_line("platforms", &[]), "build.platforms", e.to_string()))?,
            ),
            None => None,
        };
        for (i, raw) in build.artifacts.iter().enumerate() {
            let field = format!("build.artifacts[{i}]");
            if !options.build_images.is_empty() && !options.build_images.iter().any(|b| b == &raw.image) {
                continue;
            }
            let artifact = resolve_artifact(ArtifactInput {
                file,
                root: config_root,
                raw,
                text,
                first_line: *first_line,
                profile_writes,
                field: &field,
                index: i,
                default_repo: default_repo.as_deref(),
                multi_level,
                build_platforms: build_platforms.as_ref(),
                cli_platforms: &cli_platforms,
                tag_override: options.tag.as_deref(),
                tag_policy: build.tag_policy.as_ref(),
                tag_policy_at: &tag_policy_at,
                ko_environment: &ko_environment,
            })?;
            if let Some(previous) = artifacts.iter().find(|a: &&Artifact| a.image == artifact.image) {
                return Err(config_err(
                    file,
                    artifact_lines(i),
                    &format!("{field}.image"),
                    format!(
                        "image {:?} is defined twice (also for {}): give each artifact its own image",
                        artifact.image, previous.import_path
                    ),
                ));
            }
            artifacts.push(artifact);
        }
    }
    if artifacts.is_empty() {
        let message = if options.build_images.is_empty() {
            "no ko artifacts to build: add one under build.artifacts".to_string()
        } else {
            format!("no artifact matches --build-image {}", options.build_images.join(", "))
        };
        return Err(config_err(file, None, "build.artifacts", message));
    }

    let target = match (&options.oci_layout, options.push.or(push_from_config)) {
        (Some(dir), _) => {
            // Said before anything is built: a layout is a directory (made if missing).
            if dir.exists() && !dir.is_dir() {
                return Err(KodevError::Usage(format!(
                    "--oci-layout {}: not a directory (an OCI image layout is one)",
                    dir.display()
                )));
            }
            PublishTarget::OciLayout(absolutize(dir))
        }
        (None, Some(false)) => PublishTarget::OciLayout(root.join(".kodev/oci")),
        (None, explicit) => {
            let ko_image_without_repo =
                artifacts.iter().find(|a| a.image.starts_with("ko://")).filter(|_| default_repo.is_none());
            if let Some(a) = ko_image_without_repo.filter(|_| !options.describe_only) {
                return Err(KodevError::Usage(format!(
                    "image {:?} is a ko:// import path and needs a repository to push to: pass -d/--default-repo REPO (or set SKAFFOLD_DEFAULT_REPO or KO_DOCKER_REPO), or --push=false to write an OCI layout",
                    a.image
                )));
            }
            let daemon_bound =
                artifacts.iter().find_map(|a| naming::ko_local_target(&a.image_name).map(|what| (a, what)));
            if let Some((a, what)) = daemon_bound.filter(|_| !options.describe_only) {
                return Err(KodevError::Usage(format!(
                    "image {:?} would go to {}, {what}: kodev pushes to registries and writes OCI image layouts, and uses no daemon. Pass --push=false to write the layout .kodev/oci (then, say, `skopeo copy oci:.kodev/oci:{}:{} docker-daemon:{}:{}`), or -d/--default-repo REPO for a registry the cluster pulls from",
                    a.image, a.image_name, a.image_name, a.tag, a.image_name, a.tag
                )));
            }
            let not_pushable = artifacts.iter().find(|a| !naming::has_registry_host(&a.image_name));
            match (not_pushable, explicit) {
                (None, _) => PublishTarget::Registry,
                (Some(a), Some(true)) if !options.describe_only => {
                    return Err(KodevError::Usage(format!(
                        "image {:?} names no registry to push to: pass -d/--default-repo REPO (or set SKAFFOLD_DEFAULT_REPO), or --push=false to write an OCI layout",
                        a.image
                    )));
                }
                (Some(_), _) => PublishTarget::OciLayout(root.join(".kodev/oci")),
            }
        }
    };
    Ok(Plan {
        config_path: file.clone(),
        config_files,
        root,
        artifacts,
        target,
        insecure_registries: insecure,
        concurrency,
    })
}

fn absolutize(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    }
}

struct ArtifactInput<'a> {
    file: &'a Path,
    root: &'a Path,
    raw: &'a ArtifactConfig,
    /// The config file's text and the line its document starts on, for the line of the key
    /// an error is about.
    text: &'a str,
    first_line: usize,
    /// What profiles wrote over the config: an error about a field they wrote names their line.
    profile_writes: &'a [skaffold::ProfileWrite],
    field: &'a str,
    /// The artifact's place in `build.artifacts`.
    index: usize,
    default_repo: Option<&'a str>,
    multi_level: bool,
    build_platforms: Option<&'a PlatformRequest>,
    cli_platforms: &'a PlatformRequest,
    tag_override: Option<&'a str>,
    tag_policy: Option<&'a TagPolicy>,
    tag_policy_at: &'a SettingLine,
    ko_environment: &'a koyaml::KoEnvironment,
}

/// Where a setting of the config file is written, for its errors.
struct SettingLine {
    line: Option<usize>,
    field: String,
}

/// A field path's part `paths[1]` as the key and its item (`paths`, `[1]`), for `field_line`.
fn list_item(part: &str) -> Vec<&str> {
    match part.find('[') {
        Some(open) if open > 0 && part.ends_with(']') => vec![&part[..open], &part[open..]],
        _ => vec![part],
    }
}

fn resolve_artifact(input: ArtifactInput<'_>) -> Result<Artifact> {
    let ArtifactInput { file, root, raw, text, first_line, profile_writes, field, index, .. } = input;
    // `sub` is the field below the artifact (".ko.main", ".ko.labels.<key>"): the error names
    // its line. Label keys may hold dots, so it is split in three parts at most.
    let err = |sub: &str, message: String| {
        let item = format!("[{index}]");
        let path: Vec<&str> = ["build", "artifacts", item.as_str()]
            .into_iter()
            .chain(sub.trim_start_matches('.').splitn(3, '.').filter(|k| !k.is_empty()).flat_map(list_item))
            .collect();
        let written: Vec<String> = skaffold::written_path(profile_writes, &path);
        let written: Vec<&str> = written.iter().map(String::as_str).collect();
        config_err(file, skaffold::field_line(text, first_line, &written), &format!("{field}{sub}"), message)
    };
    for (name, present) in [
        ("docker", raw.docker.is_some()),
        ("bazel", raw.bazel.is_some()),
        ("jib", raw.jib.is_some()),
        ("kaniko", raw.kaniko.is_some()),
        ("buildpacks", raw.buildpacks.is_some()),
        ("custom", raw.custom.is_some()),
    ] {
        if present && raw.ko.is_some() {
            return Err(err(
                ".ko",
                format!("an artifact has one builder, but this one has both ko and {name}: remove one"),
            ));
        }
        if present {
            return Err(err(
                &format!(".{name}"),
                format!("kodev builds only ko artifacts; {name} is not supported here"),
            ));
        }
    }
    let ko = raw.ko.clone().unwrap_or_default();
    if raw.image.trim().is_empty() {
        return Err(err(".image", "image must not be empty".to_string()));
    }
    let context = root.join(raw.context.as_deref().unwrap_or("."));
    let context = context
        .canonicalize()
        .map_err(|e| err(".context", format!("context {} does not exist: {e}", context.display())))?;
    let work_dir = context.join(ko.dir.as_deref().unwrap_or("."));
    let work_dir = work_dir
        .canonicalize()
        .map_err(|e| err(".ko.dir", format!("dir {} does not exist: {e}", work_dir.display())))?;
    if !work_dir.starts_with(&context) {
        return Err(err(".ko.dir", format!("dir {} is outside the context {}", work_dir.display(), context.display())));
    }

    // Naming: sanitize, then the default repo.
    let sanitized = naming::sanitize(&raw.image);
    let (bare_name, written_tag) = naming::split_tag_or_digest(&sanitized);
    if written_tag.starts_with('@') {
        return Err(err(
            ".image",
            format!("image {:?} must not carry a digest: kodev builds it and computes the digest", raw.image),
        ));
    }
    let image_name = naming::substitute_default_repo(bare_name, input.default_repo, input.multi_level);
    naming::validate_repository(&image_name).map_err(|m| match input.default_repo {
        // The default repo made the name invalid: say so, not the artifact's line.
        Some(repo) if image_name != bare_name && naming::validate_repository(bare_name).is_ok() => KodevError::Usage(
            format!("default repo {repo:?} (from -d/--default-repo, SKAFFOLD_DEFAULT_REPO, Skaffold's global config or KO_DOCKER_REPO): {m}"),
        ),
        _ => err(".image", m),
    })?;

    // The .ko.yaml next to where go runs; ko's settings in the environment beat it.
    let ko_yaml = match koyaml::locate(&work_dir) {
        Some(path) => Some((koyaml::load(&path)?, path)),
        None => None,
    };
    let ko_environment = input.ko_environment;

    let (import_path, package_dir) =
        resolve_package(&raw.image, &ko, &context, &work_dir).map_err(|(sub, message)| err(sub, message))?;

    // Platforms: build.platforms ∩ artifact platforms ∩ --platform; else .ko.yaml defaults; else linux/amd64.
    let artifact_platforms = raw.platforms.clone().or(ko.platforms.clone());
    let platforms_sub = if raw.platforms.is_none() && ko.platforms.is_some() { ".ko.platforms" } else { ".platforms" };
    let artifact_request = match &artifact_platforms {
        Some(list) => Some(PlatformRequest::parse_list(list).map_err(|e| err(platforms_sub, e.to_string()))?),
        None => None,
    };
    let ko_yaml_platforms = match (&ko_environment.default_platforms, &ko_yaml) {
        (Some(list), _) => Some(
            PlatformRequest::parse_list(list)
                .map_err(|e| KodevError::Usage(format!("{}: {e}", koyaml::PLATFORMS_VARIABLE)))?,
        ),
        (None, Some((k, path))) if !k.default_platforms.is_empty() => {
            Some(PlatformRequest::parse_list(&k.default_platforms).map_err(|e| {
                config_err(path, koyaml::key_line(path, None, "defaultPlatforms"), "defaultPlatforms", e.to_string())
            })?)
        }
        _ => None,
    };
    let cli = match input.cli_platforms {
        PlatformRequest::List(l) if l.is_empty() => None,
        other => Some(other),
    };
    let candidates: Vec<&PlatformRequest> =
        [input.build_platforms, artifact_request.as_ref(), cli].into_iter().flatten().collect();
    let platforms = if candidates.is_empty() {
        ko_yaml_platforms.unwrap_or_else(|| PlatformRequest::List(vec![default_platform()]))
    } else {
        intersect(&candidates).ok_or_else(|| {
            err(platforms_sub, format!(
                "the requested platforms do not overlap ({}): build.platforms, the artifact's platforms and --platform must share at least one",
                candidates.iter().map(|c| c.describe().join(",")).collect::<Vec<_>>().join(" vs ")
            ))
        })?
    };

    // Base image: baseImageOverrides > fromImage > defaultBaseImage > built in; for each of
    // .ko.yaml's keys, its KO_ variable first.
    let overrides =
        ko_environment.base_image_overrides.as_ref().or(ko_yaml.as_ref().map(|(k, _)| &k.base_image_overrides));
    let base = overrides
        .and_then(|o| o.get(&import_path).cloned())
        .or(ko.from_image.clone())
        .or_else(|| ko_environment.default_base_image.clone())
        .or_else(|| ko_yaml.as_ref().and_then(|(k, _)| k.default_base_image.clone()))
        .map(BaseImageRef::Remote)
        .unwrap_or(BaseImageRef::Builtin);

    // .ko.yaml build settings for this main, below skaffold's own: a build's own list, else the
    // default from the environment, else .ko.yaml's default; each with where it came from, for
    // errors.
    let build = match &ko_yaml {
        Some((k, path)) => ko_build_for(k, path, &work_dir, &package_dir)?,
        None => None,
    };
    let chosen = ko_yaml.as_ref().zip(build).map(|((k, _), b)| &k.builds[b]);
    let file_capabilities = match (chosen.and_then(|b| b.linux_capabilities.as_ref()), &ko_yaml) {
        (Some(terms), Some((_, path))) => crate::pipeline::caps::file_capabilities(terms)
            .map_err(|m| ko_yaml_err(&(path.clone(), build, "linux_capabilities".to_string()), m))?,
        _ => None,
    };
    let setting = |own: Option<&Vec<String>>,
                   key: &str,
                   from_environment: &Option<Vec<String>>,
                   variable: &'static str,
                   default: fn(&koyaml::KoYaml) -> &Vec<String>,
                   default_key: &str| {
        // A build's empty list is none: the default applies, as ko's `len(…) == 0`.
        match (own.filter(|own| !own.is_empty()), from_environment, &ko_yaml) {
            (Some(values), _, Some((_, path))) => KoYamlSetting {
                values: values.clone(),
                at: Some(SettingAt::KoYaml((path.clone(), build, key.to_string()))),
            },
            (_, Some(values), _) => {
                KoYamlSetting { values: values.clone(), at: Some(SettingAt::Environment(variable)) }
            }
            (_, None, Some((k, path))) => KoYamlSetting {
                values: default(k).clone(),
                at: Some(SettingAt::KoYaml((path.clone(), None, default_key.to_string()))),
            },
            _ => KoYamlSetting::default(),
        }
    };
    let ko_env = setting(
        chosen.and_then(|b| b.env.as_ref()),
        "env",
        &ko_environment.default_env,
        koyaml::ENV_VARIABLE,
        |k| &k.default_env,
        "defaultEnv",
    );
    let ko_flags = setting(
        chosen.and_then(|b| b.flags.as_ref()),
        "flags",
        &ko_environment.default_flags,
        koyaml::FLAGS_VARIABLE,
        |k| &k.default_flags,
        "defaultFlags",
    );
    let ko_ldflags = setting(
        chosen.and_then(|b| b.ldflags.as_ref()),
        "ldflags",
        &ko_environment.default_ldflags,
        koyaml::LDFLAGS_VARIABLE,
        |k| &k.default_ldflags,
        "defaultLdflags",
    );
    if let Some(named) = &ko.from_image {
        crate::pipeline::registry::parse_reference(named).map_err(|e| err(".ko.fromImage", e.to_string()))?;
    }

    // skaffold.yaml's own list wins over .ko.yaml's; an error names the file the list is in.
    let pick = |skaffold: &[String], ko_yaml: KoYamlSetting, sub: &'static str| match ko_yaml.at {
        Some(at) if skaffold.is_empty() => (ko_yaml.values, at),
        _ => (skaffold.to_vec(), SettingAt::Skaffold(sub)),
    };
    let fail = |at: &SettingAt, message: String| match at {
        SettingAt::KoYaml(at) => ko_yaml_err(at, message),
        SettingAt::Environment(variable) => KodevError::Usage(format!("{variable}: {message}")),
        SettingAt::Skaffold(sub) => err(sub, message),
    };
    let (env_templates, env_at) = pick(&ko.env, ko_env, ".ko.env");
    let (flags_templates, flags_at) = pick(&ko.flags, ko_flags, ".ko.flags");
    let (ldflags_templates, ldflags_at) = pick(&ko.ldflags, ko_ldflags, ".ko.ldflags");
    let dependency_globs = globs::DependencyGlobs::configured(ko.dependencies.as_ref())
        .map_err(|g| err(&format!(".ko.dependencies.{}[{}]", g.list, g.index), g.message))?;

    // Templates see the environment, IMAGE_REPO / IMAGE_NAME / IMAGE_TAG, and ko's .Git.*, .Date, .Timestamp.
    let templated = env_templates.iter().chain(&flags_templates).chain(&ldflags_templates).chain(ko.labels.values());
    let uses_git = templated.into_iter().any(|t| template::reads_git(t))
        || input.tag_policy.and_then(|p| p.env_template.as_ref()).is_some_and(|t| template::reads_git(&t.template));
    let mut vars = template_vars(&context, uses_git, ko.source_date_epoch);
    let (repo_part, name_part) = image_name.rsplit_once('/').unwrap_or(("", &image_name));
    vars.insert("IMAGE_REPO".into(), repo_part.to_string());
    vars.insert("IMAGE_NAME".into(), name_part.to_string());
    let tag_policy_err =
        |message: String| config_err(file, input.tag_policy_at.line, &input.tag_policy_at.field, message);
    let (tag, retag) = match (input.tag_override, written_tag.strip_prefix(':')) {
        (Some(t), _) => {
            naming::validate_tag(t).map_err(|m| KodevError::Usage(format!("-t/--tag: {m}")))?;
            (t.to_string(), None)
        }
        (None, Some(t)) if !t.is_empty() => {
            naming::validate_tag(t).map_err(|m| err(".image", m))?;
            (t.to_string(), None)
        }
        _ => {
            let settings = BuildSettings {
                image: &raw.image,
                import_path: &import_path,
                work_dir: work_dir.strip_prefix(&context).unwrap_or(&work_dir),
                platforms: &platforms,
                base: &base,
                env: &env_templates,
                flags: &flags_templates,
                ldflags: &ldflags_templates,
                gcflags: &ko.gcflags,
                asmflags: &ko.asmflags,
                labels: &ko.labels,
                source_date_epoch: ko.source_date_epoch,
            };
            // Only the inputDigest tagger reads the settings and the local modules.
            let hashed = input.tag_policy.is_some_and(|p| p.reads_input_digest());
            let inputs = tag::Inputs {
                context: context.clone(),
                dependencies: dependency_globs.clone(),
                settings: if hashed { settings.digest_text(&vars) } else { String::new() },
                modules: if hashed {
                    // The env as written: a template there is not worth a workspace's files.
                    gopkg::local_modules(
                        &work_dir,
                        crate::pipeline::gobuild::go_setting_with(&env_templates, "GOWORK").as_deref(),
                    )
                } else {
                    gopkg::LocalModules::default()
                },
            };
            let tag = tag::resolve(input.tag_policy, &inputs, &vars).map_err(tag_policy_err)?;
            naming::validate_tag(&tag).map_err(|m| tag_policy_err(format!("the tagger gave {tag:?}: {m}")))?;
            let image_vars = ["IMAGE_REPO", "IMAGE_NAME"].map(|k| (k.to_string(), vars[k].clone())).into();
            (tag, tag::Retag::new(input.tag_policy, inputs, image_vars))
        }
    };
    vars.insert("IMAGE_TAG".into(), tag.clone());
    let reads_go_env = env_templates.iter().chain(&flags_templates).chain(&ldflags_templates).chain(ko.labels.values());
    if reads_go_env.into_iter().any(|t| t.contains("{{") && t.contains("GoEnv")) {
        vars.extend(go_env_vars(&work_dir, &env_templates));
    }
    let env = env_templates
        .iter()
        .map(|s| template::expand(s, &vars).map_err(|m| fail(&env_at, m)))
        .collect::<Result<Vec<_>>>()?;
    check_env(&env).map_err(|m| fail(&env_at, m))?;
    with_build_env(&mut vars, &env);
    let go_flags =
        PlatformTemplates { flags: flags_templates.clone(), ldflags: ldflags_templates.clone(), vars: vars.clone() };
    let (flags, ldflags) = go_flags
        .expand_for_plan(&platforms, &env)
        .map_err(|(in_ldflags, m)| fail(if in_ldflags { &ldflags_at } else { &flags_at }, m))?;
    let per_platform = go_flags.reads_platform().then(|| Arc::new(go_flags));
    let mut labels = BTreeMap::new();
    for (k, v) in &ko.labels {
        labels.insert(k.clone(), template::expand(v, &vars).map_err(|m| err(&format!(".ko.labels.{k}"), m))?);
    }
    let retemplate = Retemplate::new(Retemplate {
        env: env_templates,
        flags: flags_templates,
        ldflags: ldflags_templates,
        labels: ko.labels.clone(),
        context: context.clone(),
        image_vars: ["IMAGE_REPO", "IMAGE_NAME"].map(|k| (k.to_string(), vars[k].clone())).into(),
        uses_git,
        source_date_epoch: ko.source_date_epoch,
        go_env: vars.iter().filter(|(k, _)| k.starts_with("GoEnv.")).map(|(k, v)| (k.clone(), v.clone())).collect(),
    });

    Ok(Artifact {
        image: raw.image.clone(),
        image_name,
        tag,
        import_path,
        context,
        work_dir,
        package_dir,
        platforms,
        base,
        env,
        flags,
        ldflags,
        gcflags: ko.gcflags.clone(),
        asmflags: ko.asmflags.clone(),
        labels,
        dependencies: ko.dependencies.clone(),
        dependency_globs,
        source_date_epoch: ko.source_date_epoch,
        file_capabilities,
        retag,
        retemplate,
        per_platform,
    })
}

/// What an artifact is built with, as the inputDigest tagger hashes it beside the files: as
/// Skaffold hashes the artifact's config, so a change of flags, base or platforms is a new tag
/// even when the config file lies outside the context.
struct BuildSettings<'a> {
    image: &'a str,
    import_path: &'a str,
    work_dir: &'a Path,
    platforms: &'a PlatformRequest,
    base: &'a BaseImageRef,
    env: &'a [String],
    flags: &'a [String],
    ldflags: &'a [String],
    gcflags: &'a [String],
    asmflags: &'a [String],
    labels: &'a BTreeMap<String, String>,
    source_date_epoch: Option<u64>,
}

impl BuildSettings<'_> {
    /// The settings as one text. Templates are expanded from the environment, IMAGE_REPO and
    /// IMAGE_NAME (what they read there reaches the image); what follows the tree or the clock
    /// (`.Git.*`, `.Date`, `.Timestamp`) and the tag itself stay as written: the files stand for
    /// the tree, and a tag cannot hash itself.
    fn digest_text(&self, vars: &BTreeMap<String, String>) -> String {
        let mut vars = vars.clone();
        for name in ["IMAGE_TAG", "Date", "Timestamp"].iter().chain(&GIT_VARS) {
            vars.insert(name.to_string(), format!("{{{{.{name}}}}}"));
        }
        // A template that fails here fails again, with its error, when the build expands it.
        let expanded = |items: &[String]| -> Vec<String> {
            items.iter().map(|t| template::expand(t, &vars).unwrap_or_else(|_| t.clone())).collect()
        };
        let labels: BTreeMap<&String, String> =
            self.labels.iter().map(|(k, v)| (k, template::expand(v, &vars).unwrap_or_else(|_| v.clone()))).collect();
        let source_date_epoch =
            std::env::var("SOURCE_DATE_EPOCH").ok().or(self.source_date_epoch.map(|e| e.to_string()));
        serde_json::json!({
            "image": self.image,
            "importPath": self.import_path,
            "dir": self.work_dir,
            "platforms": self.platforms.describe(),
            "base": self.base.to_string(),
            "env": expanded(self.env),
            "flags": expanded(self.flags),
            "ldflags": expanded(self.ldflags),
            "gcflags": self.gcflags,
            "asmflags": self.asmflags,
            "labels": labels,
            "sourceDateEpoch": source_date_epoch,
        })
        .to_string()
    }
}

/// What kodev refuses in an artifact's env, once expanded.
fn check_env(env: &[String]) -> std::result::Result<(), String> {
    for entry in env {
        if !entry.contains('=') {
            return Err(format!("env entry {entry:?} must be KEY=value"));
        }
        // GOFLAGS would smuggle in what `flags` refuses.
        if entry.starts_with("GOFLAGS=") && entry.contains("-toolexec") {
            return Err("-toolexec in GOFLAGS is refused: it would run arbitrary programs during the build".to_string());
        }
    }
    Ok(())
}

/// What kodev refuses in an artifact's go flags, once expanded.
fn check_flags(flags: &[String]) -> std::result::Result<(), String> {
    if flags.iter().any(|f| f.starts_with("-toolexec") || f.starts_with("--toolexec")) {
        return Err("-toolexec is refused: it would run arbitrary programs during the build".to_string());
    }
    Ok(())
}

/// The variables ko's templates see that differ by platform: its `.Env` has the platform's
/// `GOOS`, `GOARCH` and `GOARM`/`GOAMD64` (its `.GoEnv` too).
const PLATFORM_VARS: [&str; 4] = ["GOOS", "GOARCH", "GOARM", "GOAMD64"];

/// Whether a template reads a value that differs by platform.
fn reads_platform(template: &str) -> bool {
    template.contains("{{") && (template.contains("GoEnv") || PLATFORM_VARS.iter().any(|v| template.contains(v)))
}

/// An artifact's flags and ldflags as written, when they read what differs by platform, with
/// what else their templates see.
#[derive(Debug, Clone)]
pub struct PlatformTemplates {
    flags: Vec<String>,
    ldflags: Vec<String>,
    /// The templates' variables but the platform's (the environment, the build's env entries,
    /// `IMAGE_*`, `.Git`, `.Date`, `go env`'s as `GoEnv.*`).
    vars: BTreeMap<String, String>,
}

impl PlatformTemplates {
    /// The variables for `platform`'s build: its go environment, then the build's own env
    /// entries over it (what go sees, see `gobuild::build_env`), in `.Env` and `.GoEnv` alike.
    fn vars_for(&self, platform: &Platform, env: &[String]) -> BTreeMap<String, String> {
        let mut vars = self.vars.clone();
        let mut seen = platform.go_env_over_process();
        seen.extend(env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())));
        for (key, value) in seen {
            let go_env_key = format!("GoEnv.{key}");
            if vars.contains_key(&go_env_key) {
                vars.insert(go_env_key, value.clone());
            }
            vars.insert(key, value);
        }
        vars
    }

    fn reads_platform(&self) -> bool {
        self.flags.iter().chain(&self.ldflags).any(|t| reads_platform(t))
    }

    /// Flags and ldflags for `platform`; an error says whether the ldflags (true) or the
    /// flags failed, and why.
    fn expand(
        &self,
        platform: &Platform,
        env: &[String],
    ) -> std::result::Result<(Vec<String>, Vec<String>), (bool, String)> {
        let vars = self.vars_for(platform, env);
        let expand = |items: &[String]| {
            items.iter().map(|t| template::expand(t, &vars)).collect::<std::result::Result<Vec<_>, _>>()
        };
        let flags =
            expand(&self.flags).and_then(|flags| check_flags(&flags).map(|()| flags)).map_err(|m| (false, m))?;
        Ok((flags, expand(&self.ldflags).map_err(|m| (true, m))?))
    }

    /// The flags and ldflags the plan shows: those of the first platform built (linux/amd64
    /// for `all`, which the base decides later). Expanding them finds their errors.
    fn expand_for_plan(
        &self,
        platforms: &PlatformRequest,
        env: &[String],
    ) -> std::result::Result<(Vec<String>, Vec<String>), (bool, String)> {
        let first = match platforms {
            PlatformRequest::List(list) => list.first().cloned(),
            PlatformRequest::All => None,
        };
        self.expand(&first.unwrap_or_else(|| Platform::new("linux", "amd64", None)), env)
    }
}

/// `go env` as ko's templates see it (`.GoEnv`), as `GoEnv.NAME` entries: go asked in the
/// directory it builds in, with the build's env entries. Empty if go cannot say.
fn go_env_vars(work_dir: &Path, env: &[String]) -> BTreeMap<String, String> {
    let output = std::process::Command::new(go_binary())
        .args(["env", "-json"])
        .current_dir(work_dir)
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let values: BTreeMap<String, String> = output
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    values.into_iter().map(|(k, v)| (format!("GoEnv.{k}"), v)).collect()
}

/// An artifact's templated settings (env, flags, ldflags, labels) as written, for `kodev dev`
/// to expand again at each build when they read what changes during a session: the git state,
/// the clock or the tag (which follows the tree, see `tag::Retag`). Skaffold and ko expand
/// them at each build.
#[derive(Debug, Clone)]
pub struct Retemplate {
    env: Vec<String>,
    flags: Vec<String>,
    ldflags: Vec<String>,
    labels: BTreeMap<String, String>,
    context: PathBuf,
    /// `IMAGE_REPO` and `IMAGE_NAME`.
    image_vars: BTreeMap<String, String>,
    uses_git: bool,
    /// skaffold.yaml's `sourceDateEpoch` (`SOURCE_DATE_EPOCH` wins): `.Date` when set.
    source_date_epoch: Option<u64>,
    /// `go env` (`GoEnv.*`) when the templates read it, as read at load.
    go_env: BTreeMap<String, String>,
}

impl Retemplate {
    /// None when no setting reads what changes during a session.
    fn new(settings: Retemplate) -> Option<Arc<Retemplate>> {
        const CHANGING: [&str; 5] = [".Git", "\"Git\"", ".Date", ".Timestamp", "IMAGE_TAG"];
        let mut templates =
            settings.env.iter().chain(&settings.flags).chain(&settings.ldflags).chain(settings.labels.values());
        templates.any(|t| t.contains("{{") && CHANGING.iter().any(|v| t.contains(v))).then(|| Arc::new(settings))
    }

    /// What the templates see now but the tag: the environment, the clock and, if they read
    /// it, the git state (git runs here).
    pub fn vars_now(&self) -> BTreeMap<String, String> {
        let mut vars = template_vars(&self.context, self.uses_git, self.source_date_epoch);
        vars.extend(self.image_vars.clone());
        vars.extend(self.go_env.clone());
        vars
    }

    /// The artifact with its settings expanded over `vars` (from [`Retemplate::vars_now`]),
    /// tagged `tag`.
    pub fn apply(
        &self,
        artifact: &Artifact,
        mut vars: BTreeMap<String, String>,
        tag: &str,
    ) -> std::result::Result<Artifact, String> {
        vars.insert("IMAGE_TAG".into(), tag.to_string());
        let mut now = artifact.clone();
        now.tag = tag.to_string();
        now.env = self.env.iter().map(|t| template::expand(t, &vars)).collect::<std::result::Result<Vec<_>, _>>()?;
        check_env(&now.env)?;
        with_build_env(&mut vars, &now.env);
        let go_flags =
            PlatformTemplates { flags: self.flags.clone(), ldflags: self.ldflags.clone(), vars: vars.clone() };
        (now.flags, now.ldflags) = go_flags.expand_for_plan(&artifact.platforms, &now.env).map_err(|(_, m)| m)?;
        now.per_platform = go_flags.reads_platform().then(|| Arc::new(go_flags));
        for (key, value) in &self.labels {
            now.labels.insert(key.clone(), template::expand(value, &vars)?);
        }
        Ok(now)
    }
}

/// A list of ko's settings, and where it was given (None: nowhere, the list is empty).
#[derive(Debug, Clone, Default)]
struct KoYamlSetting {
    values: Vec<String>,
    at: Option<SettingAt>,
}

/// Where a list setting an artifact uses was written: skaffold.yaml's artifact (the field
/// under it), `.ko.yaml` (the file, the entry of `builds` or None for the top-level default,
/// and the key), or a `KO_` variable of the environment.
#[derive(Debug, Clone)]
enum SettingAt {
    Skaffold(&'static str),
    KoYaml((PathBuf, Option<usize>, String)),
    Environment(&'static str),
}

/// The `.ko.yaml` build for the main package in `package_dir`, matched as ko matches them:
/// each build's `dir` and `main` (default `.`; a source file stands for its directory), from
/// where go runs, name one package; the last build naming this one wins. A build naming
/// nothing that exists is an error, as in ko.
fn ko_build_for(ko: &koyaml::KoYaml, path: &Path, work_dir: &Path, package_dir: &Path) -> Result<Option<usize>> {
    let package = package_dir.canonicalize().unwrap_or_else(|_| package_dir.to_path_buf());
    let mut found = None;
    for (i, build) in ko.builds.iter().enumerate() {
        let main = work_dir.join(build.dir.as_deref().unwrap_or(".")).join(build.main.as_deref().unwrap_or("."));
        let dir = if main.is_file() { main.parent().map(Path::to_path_buf).unwrap_or_default() } else { main };
        let key = if build.main.is_some() { "main" } else { "dir" };
        let dir = dir.canonicalize().map_err(|e| {
            ko_yaml_err(&(path.to_path_buf(), Some(i), key.to_string()), format!("{}: {e}", dir.display()))
        })?;
        if dir == package {
            found = Some(i);
        }
    }
    Ok(found)
}

/// An error in a `.ko.yaml` setting, with its line and field (`builds[1].env`, `defaultEnv`).
fn ko_yaml_err((path, build, key): &(PathBuf, Option<usize>, String), message: String) -> KodevError {
    let field = match build {
        Some(b) => format!("builds[{b}].{key}"),
        None => key.clone(),
    };
    config_err(path, koyaml::key_line(path, *build, key), &field, message)
}

/// The import path and directory of an artifact's main package: the rest of a `ko://` image,
/// else `main` (alias `target`) from go.mod or `go list`. Errors name the field they concern.
fn resolve_package(
    image: &str,
    ko: &skaffold::KoArtifact,
    context: &Path,
    work_dir: &Path,
) -> std::result::Result<(String, PathBuf), (&'static str, String)> {
    if let Some(path) = image.strip_prefix("ko://") {
        let (path, _) = naming::split_tag_or_digest(path);
        let pkg = go_list_packages(work_dir, path).map_err(|m| (".image", m))?;
        let dir = pkg
            .into_iter()
            .next()
            .map(|p| p.dir)
            .ok_or_else(|| (".image", format!("go list found no package {path}")))?;
        return Ok((path.to_string(), dir));
    }
    let main = ko.main.clone().or(ko.target.clone()).unwrap_or_else(|| ".".to_string());
    let main_rel = context.join(&main);
    let main_arg = if main.starts_with("./") || main == "." || main.starts_with("../") {
        relative_package_arg(work_dir, &main_rel, &main)
    } else {
        main.clone()
    };
    let packages = match main_package_from_go_mod(work_dir, &main_rel, &main) {
        Some(found) => vec![found],
        None => go_list_packages(work_dir, &main_arg).map_err(|m| (".ko.main", m))?,
    };
    let mains: Vec<_> = packages.into_iter().filter(|p| p.name == "main").collect();
    match mains.as_slice() {
        [one] => Ok((one.import_path.clone(), one.dir.clone())),
        [] => Err((
            ".ko.main",
            format!("{main:?} has no main package: point main at a package with `package main` and func main"),
        )),
        many => {
            let names: Vec<_> = many.iter().map(|p| p.import_path.as_str()).collect();
            Err((
                ".ko.main",
                format!("{main:?} matches {} main packages ({}): name exactly one", many.len(), names.join(", ")),
            ))
        }
    }
}

/// The `.Git.*` values ko's templates offer, in the order `template_vars` works them out.
const GIT_VARS: [&str; 9] = [
    "Git.FullCommit",
    "Git.ShortCommit",
    "Git.Branch",
    "Git.Tag",
    "Git.IsDirty",
    "Git.IsClean",
    "Git.TreeState",
    "Git.CommitDate",
    "Git.CommitTimestamp",
];

/// What ko's `.Env` holds beyond the process environment, for the templates of flags, ldflags
/// and labels: the build's own `env` entries (already expanded) over it, cgo off unless either
/// says otherwise, and `LDFLAGS` empty unless set. (The platform's `GOOS`, `GOARCH`… come per
/// platform, see [`PlatformTemplates`].)
fn with_build_env(vars: &mut BTreeMap<String, String>, env: &[String]) {
    vars.entry("CGO_ENABLED".into()).or_insert_with(|| "0".into());
    vars.entry("LDFLAGS".into()).or_default();
    for (key, value) in env.iter().filter_map(|entry| entry.split_once('=')) {
        vars.insert(key.to_string(), value.to_string());
    }
}

/// RFC 3339 in UTC, as ko's templates write dates.
fn rfc3339_utc(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The environment plus the `.Git.*`, `.Date` and `.Timestamp` values ko's templates offer;
/// git is asked only when a template uses `.Git`. `.Date` and `.Timestamp` are the build's
/// creation time, as in ko: `SOURCE_DATE_EPOCH` (else `source_date_epoch`, skaffold.yaml's
/// `sourceDateEpoch`) when set, so that a reproducible build stays so; else now.
pub fn template_vars(context: &Path, uses_git: bool, source_date_epoch: Option<u64>) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(source_date_epoch.and_then(|e| i64::try_from(e).ok()));
    let created = epoch.and_then(|e| chrono::DateTime::from_timestamp(e, 0)).unwrap_or_else(chrono::Utc::now);
    vars.insert("Date".into(), rfc3339_utc(created));
    vars.insert("Timestamp".into(), created.timestamp().to_string());
    if !uses_git {
        return vars;
    }
    // HEAD's hashes and commit time in one git process. Without a commit (outside a work tree,
    // say) every value is empty or zero, as ko's are; with one but no tag `.Git.Tag` is ko's
    // v0.0.0.
    let head = tag::git(context, &["show", "-s", "--format=%H%n%h%n%ct", "HEAD"]).unwrap_or_default();
    let mut head = head.lines().map(str::to_string);
    let (full, short) = (head.next().unwrap_or_default(), head.next().unwrap_or_default());
    let committed =
        head.next().and_then(|t| t.parse::<i64>().ok()).and_then(|t| chrono::DateTime::from_timestamp(t, 0));
    let in_git = committed.is_some();
    let git = |args: &[&str]| if in_git { tag::git(context, args) } else { None };
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_default();
    let git_tag = match git(&["describe", "--tags", "--abbrev=0"]) {
        Some(found) => found,
        None if in_git => "v0.0.0".to_string(),
        None => String::new(),
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    let (commit_date, commit_timestamp) = match committed {
        Some(time) => (rfc3339_utc(time), time.timestamp().to_string()),
        // Go's zero time, which ko's templates give when there is no commit.
        None => ("0001-01-01T00:00:00Z".to_string(), "-62135596800".to_string()),
    };
    let tree_state = if dirty { "dirty" } else { "clean" };
    let values = [
        full,
        short,
        branch,
        git_tag,
        dirty.to_string(),
        (!dirty).to_string(),
        tree_state.into(),
        commit_date,
        commit_timestamp,
    ];
    vars.extend(GIT_VARS.iter().map(|name| name.to_string()).zip(values));
    vars
}

fn intersect(requests: &[&PlatformRequest]) -> Option<PlatformRequest> {
    let mut result = PlatformRequest::All;
    for request in requests {
        result = match (result, request) {
            (PlatformRequest::All, other) => (*other).clone(),
            (mine, PlatformRequest::All) => mine,
            (PlatformRequest::List(a), PlatformRequest::List(b)) => {
                PlatformRequest::List(a.into_iter().filter(|p| b.contains(p)).collect())
            }
        };
    }
    match &result {
        PlatformRequest::List(l) if l.is_empty() => None,
        _ => Some(result),
    }
}
