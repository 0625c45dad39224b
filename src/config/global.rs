//! Skaffold's global config, `~/.skaffold/config` (`SKAFFOLD_CONFIG` names another): what
//! `skaffold config set` writes, per Kubernetes context (`kubeContexts`) and for all
//! (`global`). kodev reads the three keys that concern it: `default-repo`,
//! `multi-level-repo` and `insecure-registries`. The context's entry wins, the global one
//! fills what it leaves unset, and insecure registries add up, as in Skaffold. Other keys
//! (survey, update checks, ...) are Skaffold's business and are passed over.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::skaffold::regex_equal;
use crate::error::KodevError;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContextConfig {
    #[serde(default)]
    pub kube_context: Option<String>,
    #[serde(default)]
    pub default_repo: Option<String>,
    #[serde(default)]
    pub multi_level_repo: Option<bool>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GlobalConfig {
    #[serde(default)]
    global: Option<ContextConfig>,
    #[serde(default)]
    kube_contexts: Vec<ContextConfig>,
}

/// Where the global config is: `SKAFFOLD_CONFIG`, else `~/.skaffold/config`.
pub fn location() -> Option<PathBuf> {
    match std::env::var_os("SKAFFOLD_CONFIG").filter(|v| !v.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from(std::env::var_os("HOME")?).join(".skaffold/config")),
    }
}

/// The settings for `kube_context` (None: no context, the global ones alone). No file: none.
pub fn read(path: &Path, kube_context: Option<&str>) -> Result<ContextConfig, KodevError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ContextConfig::default()),
        Err(e) => return Err(error(path, None, format!("cannot read Skaffold's global config: {e}"))),
    };
    if text.trim().is_empty() {
        return Ok(ContextConfig::default());
    }
    let config: GlobalConfig = serde_yaml_ng::from_str(&text).map_err(|e| {
        error(path, e.location().map(|l| l.line()), format!("cannot read Skaffold's global config: {e}"))
    })?;
    let global = config.global.unwrap_or_default();
    let Some(current) = kube_context else { return Ok(global) };
    // The last entry that matches wins, as in Skaffold.
    let mut merged = config
        .kube_contexts
        .into_iter()
        .rfind(|c| c.kube_context.as_deref().is_some_and(|k| regex_equal(k, current)))
        .unwrap_or_default();
    merged.default_repo = merged.default_repo.filter(|r| !r.is_empty()).or(global.default_repo);
    merged.multi_level_repo = merged.multi_level_repo.or(global.multi_level_repo);
    merged.insecure_registries.extend(global.insecure_registries);
    Ok(merged)
}

fn error(path: &Path, line: Option<usize>, message: String) -> KodevError {
    KodevError::Config { file: path.to_path_buf(), line, column: None, field: None, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contexts_entry_wins_and_the_global_one_fills_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "global:\n  default-repo: gcr.io/everyone\n  insecure-registries: [shared.local:5000]\n  survey: {disable-prompt: true}\nkubeContexts:\n  - kube-context: kind-.*\n    default-repo: 127.0.0.1:5000/kind\n    insecure-registries: [kind.local:5000]\n  - kube-context: minikube\n    multi-level-repo: true\n",
        )
        .unwrap();
        let kind = read(&path, Some("kind-dev")).unwrap();
        assert_eq!(kind.default_repo.as_deref(), Some("127.0.0.1:5000/kind"));
        assert_eq!(kind.insecure_registries, ["kind.local:5000", "shared.local:5000"]);
        let minikube = read(&path, Some("minikube")).unwrap();
        assert_eq!(minikube.default_repo.as_deref(), Some("gcr.io/everyone"), "filled in from global");
        assert_eq!(minikube.multi_level_repo, Some(true));
        let none = read(&path, None).unwrap();
        assert_eq!(none.default_repo.as_deref(), Some("gcr.io/everyone"));
        assert_eq!(read(&dir.path().join("missing"), Some("x")).unwrap(), ContextConfig::default());

        std::fs::write(&path, "global: [not, a, map]\n").unwrap();
        let e = read(&path, None).unwrap_err().to_string();
        assert!(e.contains("config:1") && e.contains("cannot read Skaffold's global config"), "{e}");
    }
}
