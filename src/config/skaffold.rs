//! The parts of skaffold.yaml that kodev reads, decoded strictly (unknown keys are errors).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::error::KodevError;

/// The newest schema kodev knows; a newer file is refused rather than half-understood.
pub const LATEST_API_VERSION: &str = "skaffold/v4beta14";
/// The first schema with the ko builder.
pub const FIRST_KO_API_VERSION: &str = "skaffold/v2beta26";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SkaffoldConfig {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub requires: Option<Value>,
    #[serde(default)]
    pub build: Option<BuildConfig>,
    #[serde(default)]
    pub profiles: Option<Value>,
    // Sections kodev does not act on are accepted so real configs load unchanged.
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
    pub tag_policy: Option<Value>,
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

/// Decode every `---` document of a skaffold.yaml, strictly, with file:line:column errors.
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<SkaffoldConfig>, KodevError> {
    let mut configs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let decoded: Result<Option<SkaffoldConfig>, _> = serde_path_to_error::deserialize(document);
        match decoded {
            Ok(Some(config)) => configs.push(config),
            Ok(None) => {}
            Err(err) => return Err(yaml_error(path, err)),
        }
    }
    Ok(configs)
}

pub fn yaml_error(path: &Path, err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> KodevError {
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
    if message.contains("unknown field") {
        message.push_str(" (check the spelling; kodev decodes skaffold.yaml strictly, like Skaffold)");
    }
    KodevError::Config {
        file: path.to_path_buf(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        field: Some(field),
        message,
    }
}

/// Best-effort line of the `n`th occurrence of `key:` in the text, for errors found after decoding.
pub fn find_key_line(text: &str, key: &str, occurrence: usize) -> Option<usize> {
    let needle_plain = format!("{key}:");
    let needle_item = format!("- {key}:");
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let t = line.trim_start();
            t.starts_with(&needle_plain) || t.starts_with(&needle_item)
        })
        .nth(occurrence)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = parse_documents(Path::new("skaffold.yaml"), text).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("skaffold.yaml:7:"), "{shown}");
        assert!(shown.contains("mian"), "{shown}");
        assert_eq!(err.exit_code(), 2);
    }
}
