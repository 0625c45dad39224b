//! Skaffold's tag policies. The default `gitCommit` tagger tags with the git tag or
//! abbreviated commit, plus `-dirty` for a dirty tree; without git, `latest`.

use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

pub const FALLBACK_TAG: &str = "latest";

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).current_dir(dir).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `git describe --tags --always` (Skaffold's `Tags` variant) plus `-dirty` when the context has changes.
pub fn git_commit_tag(context: &Path, variant: &str, prefix: &str, ignore_changes: bool) -> Option<String> {
    let base = match variant {
        "CommitSha" => git(context, &["rev-parse", "HEAD"])?,
        "AbbrevCommitSha" => git(context, &["rev-parse", "--short", "HEAD"])?,
        "TreeSha" => git(context, &["rev-parse", "HEAD:./"])?,
        "AbbrevTreeSha" => git(context, &["rev-parse", "--short", "HEAD:./"])?,
        _ => git(context, &["describe", "--tags", "--always"])?,
    };
    if base.is_empty() {
        return None;
    }
    let mut tag = format!("{prefix}{base}");
    if !ignore_changes {
        let status = git(context, &["status", "--porcelain", "--", "."])?;
        if !status.is_empty() {
            tag.push_str("-dirty");
        }
    }
    Some(tag)
}

/// Resolve `build.tagPolicy` for one artifact context; falls back to `latest` when the tagger fails.
pub fn resolve(policy: Option<&Value>, context: &Path) -> String {
    let get = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    match policy {
        Some(p) if p.get("sha256").is_some() => Some(FALLBACK_TAG.to_string()),
        Some(p) if p.get("gitCommit").is_some() => {
            let g = &p["gitCommit"];
            let variant = get(g, "variant").unwrap_or_else(|| "Tags".to_string());
            let prefix = get(g, "prefix").unwrap_or_default();
            let ignore = g.get("ignoreChanges").and_then(Value::as_bool).unwrap_or(false);
            git_commit_tag(context, &variant, &prefix, ignore)
        }
        _ => git_commit_tag(context, "Tags", "", false),
    }
    .unwrap_or_else(|| FALLBACK_TAG.to_string())
}
