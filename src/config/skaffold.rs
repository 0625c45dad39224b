//! The parts of skaffold.yaml that kodev reads, decoded strictly (unknown keys are errors).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::error::KodevError;

/// The newest schema kodev knows; a newer file is refused rather than half-understood.
pub const LATEST_API_VERSION: &str = "skaffold/v4beta14";
/// The first schema with the ko builder.
pub const FIRST_KO_API_VERSION: &str = "skaffold/v2beta26";

/// One `kind: Config` document. Top-level keys starting with `.` hold YAML anchors and are
/// skipped; any other unknown key is an error, as in Skaffold.
#[derive(Debug, Clone, Default)]
pub struct SkaffoldConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: Option<Metadata>,
    pub requires: Vec<ConfigDependency>,
    pub build: Option<BuildConfig>,
    pub profiles: Vec<Profile>,
}

const TOP_LEVEL_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "requires",
    "build",
    "profiles",
    "test",
    "render",
    "manifests",
    "deploy",
    "portForward",
    "resourceSelector",
    "verify",
    "customActions",
];

impl<'de> Deserialize<'de> for SkaffoldConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopLevel;
        impl<'de> serde::de::Visitor<'de> for TopLevel {
            type Value = SkaffoldConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Skaffold config (a mapping with apiVersion, kind, build …)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SkaffoldConfig, A::Error> {
                use serde::de::{Error, IgnoredAny};
                let mut config = SkaffoldConfig::default();
                let (mut api_version, mut kind) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "apiVersion" => api_version = Some(map.next_value()?),
                        "kind" => kind = Some(map.next_value()?),
                        "metadata" => config.metadata = map.next_value()?,
                        "requires" => config.requires = map.next_value::<Option<_>>()?.unwrap_or_default(),
                        "build" => config.build = map.next_value()?,
                        "profiles" => config.profiles = map.next_value::<Option<_>>()?.unwrap_or_default(),
                        // Sections kodev does not act on load unchanged.
                        k if TOP_LEVEL_FIELDS.contains(&k) || k.starts_with('.') => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        other => return Err(A::Error::unknown_field(other, TOP_LEVEL_FIELDS)),
                    }
                }
                config.api_version = api_version.ok_or_else(|| A::Error::missing_field("apiVersion"))?;
                config.kind = kind.ok_or_else(|| A::Error::missing_field("kind"))?;
                Ok(config)
            }
        }
        deserializer.deserialize_map(TopLevel)
    }
}

/// `requires[]`: other config files this one depends on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigDependency {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub configs: Vec<String>,
    #[serde(default)]
    pub git: Option<Value>,
    #[serde(default)]
    pub google_cloud_storage: Option<Value>,
    #[serde(default)]
    pub active_profiles: Vec<ProfileDependency>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileDependency {
    pub name: String,
    #[serde(default)]
    pub activated_by: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub activation: Vec<Activation>,
    #[serde(default)]
    pub requires_all_activations: bool,
    #[serde(default)]
    pub patches: Vec<JsonPatch>,
    /// Overlays `build` key by key.
    #[serde(default)]
    pub build: Option<Value>,
    #[serde(default)]
    pub test: Option<Value>,
    #[serde(default)]
    pub render: Option<Value>,
    #[serde(default)]
    pub manifests: Option<Value>,
    #[serde(default)]
    pub deploy: Option<Value>,
    #[serde(default)]
    pub port_forward: Option<Value>,
    #[serde(default)]
    pub resource_selector: Option<Value>,
    #[serde(default)]
    pub verify: Option<Value>,
    #[serde(default)]
    pub custom_actions: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Activation {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub kube_context: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonPatch {
    pub op: String,
    pub path: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
}

/// `build.tagPolicy`: exactly one tagger.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TagPolicy {
    #[serde(default)]
    pub git_commit: Option<GitTagger>,
    #[serde(default)]
    pub sha256: Option<Value>,
    #[serde(default)]
    pub input_digest: Option<Value>,
    #[serde(default)]
    pub env_template: Option<EnvTemplateTagger>,
    #[serde(default)]
    pub date_time: Option<DateTimeTagger>,
    #[serde(default)]
    pub custom_template: Option<CustomTemplateTagger>,
}

/// `customTemplate`: a template over named components, each a tagger of its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomTemplateTagger {
    pub template: String,
    #[serde(default)]
    pub components: Vec<TaggerComponent>,
}

/// One component of a `customTemplate`: its name and its tagger (any but customTemplate).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaggerComponent {
    pub name: String,
    #[serde(default)]
    pub git_commit: Option<GitTagger>,
    #[serde(default)]
    pub sha256: Option<Value>,
    #[serde(default)]
    pub input_digest: Option<Value>,
    #[serde(default)]
    pub env_template: Option<EnvTemplateTagger>,
    #[serde(default)]
    pub date_time: Option<DateTimeTagger>,
    #[serde(default)]
    pub custom_template: Option<Value>,
}

impl TaggerComponent {
    /// The component's tagger as a tag policy of its own.
    pub fn policy(&self) -> TagPolicy {
        TagPolicy {
            git_commit: self.git_commit.clone(),
            sha256: self.sha256.clone(),
            input_digest: self.input_digest.clone(),
            env_template: self.env_template.clone(),
            date_time: self.date_time.clone(),
            custom_template: None,
        }
    }
}

impl TagPolicy {
    /// Whether the policy hashes the artifact's inputs: inputDigest, or a customTemplate with
    /// an inputDigest component.
    pub fn reads_input_digest(&self) -> bool {
        self.input_digest.is_some()
            || self.custom_template.as_ref().is_some_and(|c| c.components.iter().any(|k| k.input_digest.is_some()))
    }

    /// The field below `tagPolicy` its errors are about: the tagger's key, with the setting
    /// its errors come from (envTemplate's `template`, gitCommit's `variant`, dateTime's
    /// `timezone`) when written; none when no tagger, or more than one, is set.
    pub fn tagger_field(&self) -> Vec<&'static str> {
        let with = |key: &'static str, setting: Option<&'static str>| [key].into_iter().chain(setting).collect();
        let variant = self.git_commit.as_ref().and_then(|g| g.variant.as_ref()).map(|_| "variant");
        let timezone = self.date_time.as_ref().and_then(|d| d.timezone.as_ref()).map(|_| "timezone");
        let set: Vec<Vec<&'static str>> = [
            (self.git_commit.is_some(), with("gitCommit", variant)),
            (self.sha256.is_some(), with("sha256", None)),
            (self.input_digest.is_some(), with("inputDigest", None)),
            (self.env_template.is_some(), with("envTemplate", Some("template"))),
            (self.date_time.is_some(), with("dateTime", timezone)),
            (self.custom_template.is_some(), with("customTemplate", None)),
        ]
        .into_iter()
        .filter_map(|(present, field)| present.then_some(field))
        .collect();
        match <[_; 1]>::try_from(set) {
            Ok([field]) => field,
            Err(_) => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitTagger {
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub ignore_changes: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvTemplateTagger {
    pub template: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DateTimeTagger {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildConfig {
    #[serde(default)]
    pub artifacts: Vec<ArtifactConfig>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    #[serde(default)]
    pub tag_policy: Option<TagPolicy>,
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    #[serde(default)]
    pub local: Option<LocalBuild>,
    #[serde(default)]
    pub google_cloud_build: Option<Value>,
    #[serde(default)]
    pub cluster: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalBuild {
    #[serde(default)]
    pub push: Option<bool>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub try_import_missing: Option<bool>,
    #[serde(default)]
    pub use_docker_cli: Option<bool>,
    #[serde(default)]
    pub use_build_kit: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArtifactConfig {
    pub image: String,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    #[serde(default)]
    pub ko: Option<KoArtifact>,
    #[serde(default)]
    pub sync: Option<Value>,
    #[serde(default)]
    pub requires: Option<Value>,
    #[serde(default)]
    pub hooks: Option<Value>,
    #[serde(default)]
    pub runtime_type: Option<String>,
    // Other builders are recognised so the error can say what to do instead.
    #[serde(default)]
    pub docker: Option<Value>,
    #[serde(default)]
    pub bazel: Option<Value>,
    #[serde(default)]
    pub jib: Option<Value>,
    #[serde(default)]
    pub kaniko: Option<Value>,
    #[serde(default)]
    pub buildpacks: Option<Value>,
    #[serde(default)]
    pub custom: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KoArtifact {
    #[serde(default)]
    pub from_image: Option<String>,
    #[serde(default)]
    pub dependencies: Option<KoDependencies>,
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub ldflags: Vec<String>,
    #[serde(default)]
    pub gcflags: Vec<String>,
    #[serde(default)]
    pub asmflags: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub main: Option<String>,
    /// The design doc's name for `main`.
    #[serde(default)]
    pub target: Option<String>,
    /// Older schemas put platforms here.
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KoDependencies {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
}

/// Ordering key of a `skaffold/vX...` version: (major, stage rank, minor).
fn api_version_key(version: &str) -> Option<(u32, u32, u32)> {
    let rest = version.strip_prefix("skaffold/v")?;
    let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let major: u32 = rest[..digits_end].parse().ok()?;
    let tail = &rest[digits_end..];
    let (rank, minor_text) = if let Some(m) = tail.strip_prefix("alpha") {
        (0, m)
    } else if let Some(m) = tail.strip_prefix("beta") {
        (1, m)
    } else if tail.is_empty() {
        (2, "0")
    } else if let Some(m) = tail.strip_prefix('.') {
        (2, m)
    } else {
        return None;
    };
    let minor: u32 = minor_text.parse().ok()?;
    Some((major, rank, minor))
}

/// Check a config's apiVersion; returns a user-facing message on failure.
pub fn check_api_version(version: &str, uses_ko: bool) -> Result<(), String> {
    let key = api_version_key(version).ok_or_else(|| {
        format!("unknown apiVersion {version:?}: expected skaffold/vXbetaY, up to {LATEST_API_VERSION}")
    })?;
    let latest = api_version_key(LATEST_API_VERSION).expect("constant is valid");
    if key > latest {
        return Err(format!(
            "apiVersion {version} is newer than kodev knows ({LATEST_API_VERSION}); upgrade kodev or lower the apiVersion"
        ));
    }
    let first_ko = api_version_key(FIRST_KO_API_VERSION).expect("constant is valid");
    if uses_ko && key < first_ko {
        return Err(format!(
            "apiVersion {version} has no ko builder (it arrived in {FIRST_KO_API_VERSION}); raise the apiVersion"
        ));
    }
    Ok(())
}

/// Which profiles to apply: the ones named with `-p`, plus those whose activation matches.
#[derive(Debug, Clone, Default)]
pub struct ProfileSelection {
    /// Named with `-p`, in order; `-NAME` turns off a profile its activation would turn on.
    pub names: Vec<String>,
    /// `build` or `dev`, for `activation.command`.
    pub command: String,
    /// The Kubernetes context activation.kubeContext is matched against (see
    /// [`current_kube_context`]); None: no context, such a condition does not hold.
    pub kube_context: Option<String>,
}

impl ProfileSelection {
    /// As Skaffold: the profiles whose activation holds, then each `-p` in order, `NAME`
    /// adding it and `-NAME` taking it away.
    fn activates(&self, profile: &Profile) -> bool {
        let named = self.names.iter().rev().find_map(|n| match n.strip_prefix('-') {
            Some(off) if off == profile.name => Some(false),
            _ if n == &profile.name => Some(true),
            _ => None,
        });
        if let Some(on) = named {
            return on;
        }
        if profile.activation.is_empty() {
            return false;
        }
        let matches = |a: &Activation| {
            let env_ok = a.env.as_deref().is_none_or(|e| match e.split_once('=') {
                // An empty value: the variable is unset or empty (an empty pattern would match anything).
                Some((k, "")) => std::env::var(k).unwrap_or_default().is_empty(),
                Some((k, v)) => regex_equal(v, &std::env::var(k).unwrap_or_default()),
                // Refused when the file is read (see `check_activations`).
                None => false,
            });
            let command_ok = a.command.as_deref().is_none_or(|c| regex_equal(c, &self.command));
            let context_ok = a
                .kube_context
                .as_deref()
                .is_none_or(|c| self.kube_context.as_deref().is_some_and(|current| regex_equal(c, current)));
            env_ok && command_ok && context_ok
        };
        if profile.requires_all_activations {
            profile.activation.iter().all(matches)
        } else {
            profile.activation.iter().any(matches)
        }
    }
}

/// Skaffold's match of an activation's value: the same string, else a match anywhere of the
/// value read as a regular expression (one that is none matches nothing); `!` in front turns
/// the answer round.
pub fn regex_equal(expected: &str, actual: &str) -> bool {
    match expected.strip_prefix('!') {
        Some(not) => !regex_match(not, actual),
        None => regex_match(expected, actual),
    }
}

fn regex_match(expected: &str, actual: &str) -> bool {
    expected == actual || regex::Regex::new(expected).is_ok_and(|re| re.is_match(actual))
}

/// The Kubernetes context in use, as kubectl and Skaffold take it: the first `current-context`
/// of the files `KUBECONFIG` lists (`:`-separated), else of `~/.kube/config`. None when there
/// is none (no cluster configured: kodev needs none).
pub fn current_kube_context() -> Option<String> {
    let files: Vec<PathBuf> = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list).collect(),
        None => vec![PathBuf::from(std::env::var_os("HOME")?).join(".kube/config")],
    };
    files.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        let value: Value = serde_yaml_ng::from_str(&text).ok()?;
        value.get("current-context")?.as_str().filter(|c| !c.is_empty()).map(str::to_string)
    })
}

/// An activation's `env` must be `KEY=VALUE`, as Skaffold requires.
fn check_activations(path: &Path, text: &str, first_line: usize, profiles: &[Profile]) -> Result<(), KodevError> {
    for (i, profile) in profiles.iter().enumerate() {
        for (j, activation) in profile.activation.iter().enumerate() {
            if let Some(env) = activation.env.as_deref().filter(|e| !e.contains('=')) {
                let parts =
                    ["profiles".to_string(), format!("[{i}]"), "activation".into(), format!("[{j}]"), "env".into()];
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                return Err(KodevError::Config {
                    file: path.to_path_buf(),
                    line: field_line(text, first_line, &parts),
                    column: None,
                    field: Some(format!("profiles[{i}].activation[{j}].env")),
                    message: format!("{env:?} should be KEY=VALUE (VALUE a regular expression; empty for unset)"),
                });
            }
        }
    }
    Ok(())
}

/// Decode every `---` document of a skaffold.yaml, strictly, with file:line:column errors,
/// then apply the selected profiles.
/// A config decoded from one document of a file, and the line the document starts on.
#[derive(Debug, Clone)]
pub struct Document {
    pub first_line: usize,
    pub config: SkaffoldConfig,
    /// What active profiles wrote over the document, in the order they did (see
    /// [`written_path`]).
    pub profile_writes: Vec<ProfileWrite>,
}

impl Document {
    fn plain(first_line: usize, config: SkaffoldConfig) -> Document {
        Document { first_line, config, profile_writes: Vec::new() }
    }
}

/// A part of a document an active profile replaced: a key of its `build`, or what one of its
/// patches put in place. Paths are `field_line`'s (`["build", "artifacts", "[0]"]`).
#[derive(Debug, Clone)]
pub struct ProfileWrite {
    /// The part of the effective config written.
    pub replaced: Vec<String>,
    /// Where the new value is written in the file.
    pub written_at: Vec<String>,
}

/// Where the field `path` of a document's effective config is written, for `field_line`:
/// inside the profile that wrote it last, else where the document has it.
pub fn written_path(writes: &[ProfileWrite], path: &[&str]) -> Vec<String> {
    let last = writes
        .iter()
        .rev()
        .find(|w| w.replaced.len() <= path.len() && w.replaced.iter().zip(path).all(|(a, b)| a == b));
    match last {
        Some(write) => {
            write.written_at.iter().cloned().chain(path[write.replaced.len()..].iter().map(|p| p.to_string())).collect()
        }
        None => path.iter().map(|p| p.to_string()).collect(),
    }
}

pub fn parse_documents(path: &Path, text: &str, selection: &ProfileSelection) -> Result<Vec<Document>, KodevError> {
    let mut values = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Result<Value, _> = serde_path_to_error::deserialize(document);
        values.push(value.map_err(|e| yaml_error(path, text, e))?);
    }
    let firsts = document_first_lines(text);
    let mut configs = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let first_line = firsts.get(index).copied().unwrap_or(1);
        let decoded: Result<Option<SkaffoldConfig>, _> = serde_path_to_error::deserialize(document);
        let config = match decoded {
            Ok(Some(config)) => Some(config),
            Ok(None) => continue,
            // Merge keys (`<<: *anchor`) need the document as a value first.
            Err(err) if err.path().to_string().contains("<<") || err.to_string().contains("<<") => None,
            Err(err) => return Err(yaml_error(path, text, err)),
        };
        if let Some(config) = &config {
            check_activations(path, text, first_line, &config.profiles)?;
        }
        let needs_profiles = config.as_ref().is_none_or(|c| c.profiles.iter().any(|p| selection.activates(p)));
        if let (Some(config), false) = (&config, needs_profiles) {
            configs.push(Document::plain(first_line, config.clone()));
            continue;
        }
        let mut value = values.get(index).cloned().unwrap_or(Value::Null);
        value.apply_merge().map_err(|e| KodevError::Config {
            file: path.to_path_buf(),
            line: e.location().map(|l| l.line()),
            column: None,
            field: None,
            message: format!("cannot merge `<<` keys: {e}"),
        })?;
        if let Value::Mapping(map) = &mut value {
            map.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with('.')));
        }
        let merged = from_value(path, text, first_line, value.clone(), None)?;
        if config.is_none() {
            // Only now decoded (merge keys): not checked above.
            check_activations(path, text, first_line, &merged.profiles)?;
        }
        let active: Vec<Profile> = merged.profiles.iter().filter(|p| selection.activates(p)).cloned().collect();
        if active.is_empty() {
            configs.push(Document::plain(first_line, merged));
            continue;
        }
        let mut profile_writes = Vec::new();
        for profile in &active {
            // Its place among the document's profiles, for the lines of its errors.
            let index = merged.profiles.iter().position(|p| p.name == profile.name).unwrap_or(0);
            let at = ProfileAt { path, text, first_line, index };
            profile_writes.extend(apply_profile(&at, &mut value, profile)?);
        }
        let names: Vec<&str> = active.iter().map(|p| p.name.as_str()).collect();
        let config = from_value(path, text, first_line, value, Some(&names.join(", ")))?;
        configs.push(Document { first_line, config, profile_writes });
    }
    Ok(configs)
}

/// Typed decoding of a document already turned into a value (merged or patched); errors name
/// the field path and, as best as can be found, its line.
fn from_value(
    path: &Path,
    text: &str,
    first_line: usize,
    value: Value,
    profile: Option<&str>,
) -> Result<SkaffoldConfig, KodevError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        let mut message = err.into_inner().to_string();
        if let Some(rest) = message.split_once(": ").filter(|(p, _)| !p.contains(' ')).map(|(_, r)| r.to_string()) {
            message = rest;
        }
        if let Some(profile) = profile {
            message.push_str(&format!(" (after applying profile {profile})"));
        }
        KodevError::Config {
            file: path.to_path_buf(),
            line: line_of_decoded_field(text, first_line, &field),
            column: None,
            field: Some(field),
            message,
        }
    })
}

/// Where a profile is written: the config file, its text, the line its document starts on,
/// and the profile's index in the document's `profiles`.
struct ProfileAt<'a> {
    path: &'a Path,
    text: &'a str,
    first_line: usize,
    index: usize,
}

impl ProfileAt<'_> {
    /// An error about the profile's part `sub` (`["patches", "[1]"]`), on that part's line.
    fn error(&self, profile: &Profile, sub: &[&str], message: String) -> KodevError {
        let item = format!("[{}]", self.index);
        let field_path: Vec<&str> = ["profiles", item.as_str()].iter().chain(sub).copied().collect();
        let field = sub.iter().fold(format!("profiles[{}]", profile.name), |field, part| {
            if part.starts_with('[') {
                field + part
            } else {
                format!("{field}.{part}")
            }
        });
        KodevError::Config {
            file: self.path.to_path_buf(),
            line: field_line(self.text, self.first_line, &field_path),
            column: None,
            field: Some(field),
            message,
        }
    }
}

/// A profile's `build` overlays the config's key by key; then its JSON patches apply in order.
/// Returns what it wrote, in order.
fn apply_profile(at: &ProfileAt, document: &mut Value, profile: &Profile) -> Result<Vec<ProfileWrite>, KodevError> {
    let item = format!("[{}]", at.index);
    let mut writes = Vec::new();
    if let Some(Value::Mapping(overlay)) = &profile.build {
        let Value::Mapping(root) = document else {
            return Err(at.error(profile, &[], "the config is not a mapping".into()));
        };
        let build = root.entry(Value::String("build".into())).or_insert_with(|| Value::Mapping(Default::default()));
        if let Value::Mapping(build) = build {
            for (k, v) in overlay {
                build.insert(k.clone(), v.clone());
                if let Some(key) = k.as_str() {
                    writes.push(ProfileWrite {
                        replaced: vec!["build".into(), key.into()],
                        written_at: vec!["profiles".into(), item.clone(), "build".into(), key.into()],
                    });
                }
            }
        }
    }
    for (i, patch) in profile.patches.iter().enumerate() {
        let patch_item = format!("[{i}]");
        let error =
            |m: String| at.error(profile, &["patches", &patch_item], format!("patch {} {}: {m}", patch.op, patch.path));
        // What the patch puts in place, as a field path: `-` (append) is the list's length now.
        let replaced = if matches!(patch.op.as_str(), "add" | "replace") && patch.value.is_some() {
            field_path_of_pointer(document, &patch.path)
        } else {
            None
        };
        json_patch(document, patch).map_err(error)?;
        if let Some(replaced) = replaced {
            writes.push(ProfileWrite {
                replaced,
                written_at: vec!["profiles".into(), item.clone(), "patches".into(), patch_item.clone(), "value".into()],
            });
        }
    }
    Ok(writes)
}

/// A JSON pointer into `document` as a `field_line` path: list indices as `[n]`, and `-` as
/// the index an appended item gets.
fn field_path_of_pointer(document: &Value, pointer: &str) -> Option<Vec<String>> {
    let mut node = Some(document);
    let mut path = Vec::new();
    for token in pointer_tokens(pointer).ok()? {
        let part = match node {
            Some(Value::Sequence(items)) if token == "-" => format!("[{}]", items.len()),
            Some(Value::Sequence(_)) => format!("[{}]", token.parse::<usize>().ok()?),
            _ => token.clone(),
        };
        node = match node {
            Some(Value::Sequence(items)) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            Some(Value::Mapping(map)) => map.get(token.as_str()),
            _ => None,
        };
        path.push(part);
    }
    Some(path)
}

fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer.strip_prefix('/').ok_or("a JSON pointer starts with '/'")?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn child_mut<'v>(value: &'v mut Value, token: &str) -> Result<&'v mut Value, String> {
    match value {
        Value::Mapping(map) => map.get_mut(token).ok_or_else(|| format!("no key {token:?}")),
        Value::Sequence(seq) => {
            let i: usize = token.parse().map_err(|_| format!("{token:?} is not an index"))?;
            let len = seq.len();
            seq.get_mut(i).ok_or_else(|| format!("index {i} is out of range (length {len})"))
        }
        _ => Err(format!("cannot descend into a scalar at {token:?}")),
    }
}

fn parent_and_last<'v>(document: &'v mut Value, pointer: &str) -> Result<(&'v mut Value, String), String> {
    let mut tokens = pointer_tokens(pointer)?;
    let last = tokens.pop().ok_or("the path must name a field")?;
    let mut node = document;
    for t in &tokens {
        node = child_mut(node, t)?;
    }
    Ok((node, last))
}

fn remove_at(document: &mut Value, pointer: &str) -> Result<Value, String> {
    let (parent, last) = parent_and_last(document, pointer)?;
    match parent {
        Value::Mapping(map) => map.remove(last.as_str()).ok_or_else(|| format!("no key {last:?}")),
        Value::Sequence(seq) => {
            let i: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            if i < seq.len() {
                Ok(seq.remove(i))
            } else {
                Err(format!("index {i} is out of range"))
            }
        }
        _ => Err("cannot remove from a scalar".into()),
    }
}

fn add_at(document: &mut Value, pointer: &str, value: Value, replace: bool) -> Result<(), String> {
    let (parent, last) = parent_and_last(document, pointer)?;
    match parent {
        Value::Mapping(map) => {
            if replace && !map.contains_key(last.as_str()) {
                return Err(format!("no key {last:?} to replace"));
            }
            map.insert(Value::String(last), value);
            Ok(())
        }
        Value::Sequence(seq) => {
            if last == "-" && !replace {
                seq.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            if replace {
                let slot = seq.get_mut(i).ok_or_else(|| format!("index {i} is out of range"))?;
                *slot = value;
            } else if i <= seq.len() {
                seq.insert(i, value);
            } else {
                return Err(format!("index {i} is out of range"));
            }
            Ok(())
        }
        _ => Err("cannot add into a scalar".into()),
    }
}

/// RFC 6902 operations, as Skaffold's profile patches use them.
pub fn json_patch(document: &mut Value, patch: &JsonPatch) -> Result<(), String> {
    let value = || patch.value.clone().ok_or_else(|| format!("{} needs a value", patch.op));
    match patch.op.as_str() {
        "add" => add_at(document, &patch.path, value()?, false),
        "replace" => add_at(document, &patch.path, value()?, true),
        "remove" => remove_at(document, &patch.path).map(|_| ()),
        "move" | "copy" => {
            let from = patch.from.as_deref().ok_or("needs from")?;
            let moved = if patch.op == "move" {
                remove_at(document, from)?
            } else {
                let mut node = &mut *document;
                for t in pointer_tokens(from)? {
                    node = child_mut(node, &t)?;
                }
                node.clone()
            };
            add_at(document, &patch.path, moved, false)
        }
        "test" => {
            let mut node = &mut *document;
            for t in pointer_tokens(&patch.path)? {
                node = child_mut(node, &t)?;
            }
            if Some(&*node) == patch.value.as_ref() {
                Ok(())
            } else {
                Err("test failed: the value differs".into())
            }
        }
        other => Err(format!("unknown op {other:?}: use add, remove, replace, move, copy or test")),
    }
}

pub fn yaml_error(path: &Path, text: &str, err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> KodevError {
    yaml_error_with(path, text, err, "kodev decodes skaffold.yaml strictly, like Skaffold")
}

/// [`yaml_error`], saying `strictness` (why an unknown key stops kodev) after an unknown field.
pub fn yaml_error_with(
    path: &Path,
    text: &str,
    err: serde_path_to_error::Error<serde_yaml_ng::Error>,
    strictness: &str,
) -> KodevError {
    let field = err.path().to_string();
    let inner = err.into_inner();
    let location = inner.location();
    let mut message = inner.to_string();
    // serde_yaml_ng appends " at line L column C"; the location is printed up front instead.
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    // serde_yaml_ng prefixes the path; the field is printed separately.
    if let Some(rest) = message.split_once(": ").filter(|(p, _)| !p.contains(' ')).map(|(_, r)| r.to_string()) {
        message = rest;
    }
    // An unknown key is reported where its mapping starts; point at the key itself.
    let mut line = location.as_ref().map(|l| l.line());
    let mut column = location.as_ref().map(|l| l.column());
    if let Some(key) = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
        let start = line.unwrap_or(1);
        if let Some(found) = first_key_line(text, start, key) {
            line = Some(found);
            column = None;
        }
    }
    if message.contains("unknown field") {
        message.push_str(&format!(" (check the spelling; {strictness})"));
    }
    KodevError::Config { file: path.to_path_buf(), line, column, field: Some(field), message }
}

/// The first line from `from_line` to the end of its document that is the key `key`, as a
/// mapping's key or a list item's first (`- key:`).
fn first_key_line(text: &str, from_line: usize, key: &str) -> Option<usize> {
    let names_key = |content: &str| is_key(content, key) || content.strip_prefix("- ").is_some_and(|c| is_key(c, key));
    outline(text, from_line).into_iter().find(|e| names_key(e.2)).map(|e| e.0)
}

/// The parts of a field path as errors print it (`build.artifacts[0].ko.main`), for [`field_line`].
pub fn field_path(field: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    for part in field.split('.') {
        match part.find('[') {
            Some(at) => {
                parts.push(&part[..at]);
                parts.extend(part[at..].split_inclusive(']'));
            }
            None => parts.push(part),
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// The line of a field that failed to decode after merging or patching: where the document has
/// it; else the first `key:` of its last key in the document (a profile's patch may hold the
/// value); else the deepest part of it found.
fn line_of_decoded_field(text: &str, first_line: usize, field: &str) -> Option<usize> {
    let path = field_path(field);
    let (deepest, found) = locate(text, first_line, &path);
    if found == path.len() {
        return deepest;
    }
    let last_key = path.iter().rev().find(|p| !p.starts_with('['));
    last_key.and_then(|key| first_key_line(text, first_line, key)).or(deepest)
}

/// A line of YAML that starts a document.
fn starts_document(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// The first line of each document of a YAML stream, as the YAML parser counts documents:
/// every `---` starts one; what comes before the first `---` is one only if it holds content.
pub fn document_first_lines(text: &str) -> Vec<usize> {
    let mut firsts = Vec::new();
    let mut before_any_start = true;
    for (i, line) in text.lines().enumerate() {
        if starts_document(line) {
            firsts.push(i + 1);
            before_any_start = false;
        } else if before_any_start && firsts.is_empty() {
            let content = line.trim();
            if !content.is_empty() && !content.starts_with('#') && !content.starts_with('%') {
                firsts.push(1);
            }
        }
    }
    firsts
}

/// A line of a YAML block: its number, indentation and text.
type OutlineEntry<'a> = (usize, usize, &'a str);

/// The lines of the document starting at `first_line`, blank lines and comments left out.
fn outline(text: &str, first_line: usize) -> Vec<OutlineEntry<'_>> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate().skip(first_line.saturating_sub(1)) {
        if starts_document(line) {
            if i + 1 > first_line {
                break;
            }
            continue;
        }
        let content = line.trim();
        if !content.is_empty() && !content.starts_with('#') {
            entries.push((i + 1, line.len() - line.trim_start().len(), content));
        }
    }
    entries
}

/// Best-effort line of the field `path` (`["build", "artifacts", "[2]", "ko", "main"]`; `[n]`
/// is the n-th list item) in the block-style document starting at `first_line`, for errors
/// found after decoding: the line of the deepest part of `path` written there, None if not
/// even the first is.
pub fn field_line(text: &str, first_line: usize, path: &[&str]) -> Option<usize> {
    locate(text, first_line, path).0
}

/// [`field_line`], and how many parts of `path` were found.
fn locate(text: &str, first_line: usize, path: &[&str]) -> (Option<usize>, usize) {
    let mut block = outline(text, first_line);
    let mut found = (None, 0);
    for part in path {
        let Some(level) = block.iter().map(|e| e.1).min() else { break };
        let item = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')).and_then(|n| n.parse::<usize>().ok());
        let at = match item {
            Some(n) => block.iter().enumerate().filter(|(_, e)| e.1 == level && e.2.starts_with('-')).nth(n),
            None => block.iter().enumerate().find(|(_, e)| e.1 == level && is_key(e.2, part)),
        };
        let Some((at, &(line, indent, content))) = at else { break };
        found = (Some(line), found.1 + 1);
        // A list may sit at its key's own indentation; siblings of a key never start with '-'.
        let end = block[at + 1..]
            .iter()
            .position(|e| e.1 < level || e.1 == level && (item.is_some() || !e.2.starts_with('-')))
            .map_or(block.len(), |n| at + 1 + n);
        let mut inner = Vec::new();
        if item.is_some() {
            // The item's first key sits after its "- ".
            let rest = &content[1..];
            if !rest.trim().is_empty() {
                inner.push((line, indent + 1 + rest.len() - rest.trim_start().len(), rest.trim()));
            }
        }
        inner.extend_from_slice(&block[at + 1..end]);
        block = inner;
    }
    found
}

/// Whether a line of YAML is the key `key` (quoted or not) of a mapping.
fn is_key(content: &str, key: &str) -> bool {
    let unquoted = content.trim_start_matches(['"', '\'']);
    unquoted.strip_prefix(key).is_some_and(|rest| rest.trim_start_matches(['"', '\'']).starts_with(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_values_match_as_skaffolds_regex_equal() {
        assert!(regex_equal("prod", "prod"));
        assert!(regex_equal("pro.*", "production"));
        assert!(regex_equal("dev", "mydevbox"), "a match anywhere");
        assert!(!regex_equal("^dev$", "mydev"));
        assert!(regex_equal("!prod", "dev") && !regex_equal("!prod", "prod"));
        assert!(regex_equal("[", "["), "not a regular expression: the same string");
        assert!(!regex_equal("[", "x"));
    }

    #[test]
    fn version_ordering() {
        assert!(check_api_version("skaffold/v4beta14", true).is_ok());
        assert!(check_api_version("skaffold/v2beta26", true).is_ok());
        assert!(check_api_version("skaffold/v3", true).is_ok());
        assert!(check_api_version("skaffold/v4beta15", true).is_err());
        assert!(check_api_version("skaffold/v5", true).is_err());
        assert!(check_api_version("skaffold/v2beta25", true).is_err());
        assert!(check_api_version("skaffold/v2beta25", false).is_ok());
        assert!(check_api_version("skaffold/vX", true).is_err());
    }

    #[test]
    fn unknown_key_has_line() {
        let text =
            "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n  - image: a\n    ko:\n      mian: .\n";
        let err = parse_documents(Path::new("skaffold.yaml"), text, &ProfileSelection::default()).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("skaffold.yaml:7 "), "{shown}");
        assert!(shown.contains("mian"), "{shown}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn fields_are_found_inside_their_document_and_list_item_only() {
        let text = "# a config\nbuild:\n  artifacts:\n    - image: a\n      ko:\n        main: ./a\n    - image: b\n      # comment\n\n      platforms: [x]\n      ko:\n        labels:\n          org.example.x: \"{{\"\n        main: ./b\n---\napiVersion: v\nbuild:\n  artifacts:\n  - image: c\n    requires:\n    - image: a\n  - image: d\n    ko: {main: ./d}\n";
        let firsts = document_first_lines(text);
        assert_eq!(firsts, [1, 15]);
        let line = |doc: usize, path: &str| field_line(text, firsts[doc], &path.split(' ').collect::<Vec<_>>());
        assert_eq!(line(0, "build artifacts [0] ko main"), Some(6));
        assert_eq!(line(0, "build artifacts [1] ko main"), Some(14));
        assert_eq!(line(0, "build artifacts [1] platforms"), Some(10));
        assert_eq!(line(0, "build artifacts [1] ko labels org.example.x"), Some(13));
        assert_eq!(line(0, "build artifacts [1] image"), Some(7));
        // Not written in that item: the deepest part found.
        assert_eq!(line(0, "build artifacts [0] platforms"), Some(4));
        assert_eq!(line(0, "build artifacts [0] ko env"), Some(5));
        assert_eq!(line(0, "apiVersion"), None);
        // The second document, whose list sits at its key's indentation.
        assert_eq!(line(1, "apiVersion"), Some(16));
        assert_eq!(line(1, "build artifacts [1]"), Some(22));
        assert_eq!(line(1, "build artifacts [1] ko main"), Some(23));
        assert_eq!(line(1, "build artifacts [0] requires [0] image"), Some(21));
        assert_eq!(document_first_lines("# only a comment\n---\na: 1\n---\n"), [2, 4]);
    }

    #[test]
    fn document_lines_match_the_documents_the_parser_reads() {
        let text = "# c\n---\na: 1\n---\n---\nb: 2\n";
        let parsed = serde_yaml_ng::Deserializer::from_str(text).count();
        assert_eq!(document_first_lines(text).len(), parsed);
    }
}
