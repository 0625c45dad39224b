//! `.ko.yaml`: ko's own configuration, read next to where `go` runs or from `KO_CONFIG_PATH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::KodevError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KoYaml {
    #[serde(default)]
    pub default_base_image: Option<String>,
    #[serde(default)]
    pub base_image_overrides: BTreeMap<String, String>,
    #[serde(default)]
    pub default_platforms: Vec<String>,
    #[serde(default)]
    pub default_env: Vec<String>,
    #[serde(default)]
    pub default_flags: Vec<String>,
    #[serde(default)]
    pub default_ldflags: Vec<String>,
    #[serde(default)]
    pub builds: Vec<KoBuild>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KoBuild {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub main: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub flags: Option<Vec<String>>,
    #[serde(default)]
    pub ldflags: Option<Vec<String>>,
}

/// Where `.ko.yaml` is looked for: `KO_CONFIG_PATH` (file or folder) wins over the work dir.
pub fn locate(work_dir: &Path) -> Option<PathBuf> {
    if let Some(configured) = std::env::var_os("KO_CONFIG_PATH").filter(|v| !v.is_empty()) {
        let configured = PathBuf::from(configured);
        let candidate = if configured.is_dir() { configured.join(".ko.yaml") } else { configured };
        return Some(candidate);
    }
    let candidate = work_dir.join(".ko.yaml");
    candidate.is_file().then_some(candidate)
}

pub fn load(path: &Path) -> Result<KoYaml, KodevError> {
    let text = std::fs::read_to_string(path).map_err(|e| KodevError::Config {
        file: path.to_path_buf(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot read .ko.yaml: {e}"),
    })?;
    if text.trim().is_empty() {
        return Ok(KoYaml::default());
    }
    let document = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(document).map_err(|e| super::skaffold::yaml_error(path, &text, e))
}
