//! Which files an artifact depends on, and so which changes rebuild it.
//!
//! With `ko.dependencies` configured: its globs, with Skaffold's semantics (relative to the
//! context, `ignore` wins). Without: the precise default — the files of the main package's
//! Go dependency graph inside the main module(s), plus go.mod, go.sum and kodata/.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::config::{go_binary, Artifact};

#[derive(Debug, Clone)]
pub enum Dependencies {
    /// `provisional`: Skaffold's broad default, used until the Go graph can be read.
    Globs {
        context: PathBuf,
        paths: GlobSet,
        ignore: GlobSet,
        provisional: bool,
    },
    Graph(GoGraph),
}

#[derive(Debug, Clone, Default)]
pub struct GoGraph {
    /// Source files of every in-module package the main depends on.
    pub files: HashSet<PathBuf>,
    /// Directories of those packages: a new .go file there may join a package.
    pub package_dirs: HashSet<PathBuf>,
    /// go.mod / go.sum of the modules involved.
    pub module_files: HashSet<PathBuf>,
    /// `<main package>/kodata`.
    pub kodata: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedPackage {
    dir: Option<PathBuf>,
    #[serde(default)]
    standard: bool,
    module: Option<ListedModule>,
    #[serde(default)]
    go_files: Vec<String>,
    #[serde(default)]
    cgo_files: Vec<String>,
    #[serde(default)]
    embed_files: Vec<String>,
    #[serde(default)]
    s_files: Vec<String>,
    #[serde(default)]
    h_files: Vec<String>,
    #[serde(default)]
    ignored_go_files: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedModule {
    #[serde(default)]
    main: bool,
    go_mod: Option<PathBuf>,
}

/// Skaffold turns a glob like `**.go` into "any depth"; globset needs `**/*.go`.
fn skaffold_glob(pattern: &str) -> String {
    let p = pattern.trim_start_matches("./");
    if let Some(rest) = p.strip_prefix("**") {
        if !rest.starts_with('/') && !rest.is_empty() {
            return format!("**/*{rest}");
        }
    }
    p.to_string()
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(&skaffold_glob(p)).map_err(|e| format!("invalid dependency glob {p:?}: {e}"))?;
        builder.add(glob);
        // A directory pattern covers what is below it, as in Skaffold.
        if !p.contains('*') {
            if let Ok(glob) = Glob::new(&format!("{}/**", p.trim_end_matches('/'))) {
                builder.add(glob);
            }
        }
    }
    builder.build().map_err(|e| e.to_string())
}

impl Dependencies {
    pub fn resolve(artifact: &Artifact) -> Result<Dependencies, String> {
        match &artifact.dependencies {
            Some(configured) if !configured.paths.is_empty() => Ok(Dependencies::Globs {
                context: artifact.context.clone(),
                paths: glob_set(&configured.paths)?,
                ignore: glob_set(&configured.ignore)?,
                provisional: false,
            }),
            _ => go_graph(artifact).map(Dependencies::Graph),
        }
    }

    /// Every Go file, module file and kodata under the context: while `go list` fails (a broken
    /// go.mod, say), any such edit still rebuilds, and the next build reads the graph again.
    pub fn provisional(artifact: &Artifact) -> Dependencies {
        let patterns: Vec<String> =
            ["**/*.go", "**/go.mod", "**/go.sum", "**/go.work", "**/kodata/**"].iter().map(|p| p.to_string()).collect();
        Dependencies::Globs {
            context: artifact.context.clone(),
            paths: glob_set(&patterns).unwrap_or_else(|_| GlobSet::empty()),
            ignore: GlobSet::empty(),
            provisional: true,
        }
    }

    pub fn matches(&self, path: &Path) -> bool {
        match self {
            Dependencies::Globs { context, paths, ignore, .. } => match path.strip_prefix(context) {
                Ok(rel) => paths.is_match(rel) && !ignore.is_match(rel),
                Err(_) => false,
            },
            Dependencies::Graph(graph) => {
                graph.files.contains(path)
                    || graph.module_files.contains(path)
                    || path.starts_with(&graph.kodata)
                    || (path.extension().is_some_and(|e| e == "go")
                        && path.parent().is_some_and(|d| graph.package_dirs.contains(d)))
            }
        }
    }

    /// Whether a change at `path` may alter the graph itself (imports, modules).
    pub fn needs_refresh(&self, path: &Path) -> bool {
        match self {
            Dependencies::Globs { provisional, .. } => *provisional,
            Dependencies::Graph(graph) => {
                graph.module_files.contains(path) || path.extension().is_some_and(|e| e == "go")
            }
        }
    }
}

/// `go list -deps -json` of the main package, keeping the packages of the main module(s).
pub fn go_graph(artifact: &Artifact) -> Result<GoGraph, String> {
    let output = Command::new(go_binary())
        .args([
            "list",
            "-deps",
            "-json=Dir,Standard,Module,GoFiles,CgoFiles,EmbedFiles,SFiles,HFiles,IgnoredGoFiles",
            &artifact.import_path,
        ])
        .current_dir(&artifact.work_dir)
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|e| format!("cannot run go list: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "go list -deps {} failed: {}",
            artifact.import_path,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let mut graph = GoGraph { kodata: artifact.package_dir.join("kodata"), ..Default::default() };
    let stream = serde_json::Deserializer::from_slice(&output.stdout).into_iter::<ListedPackage>();
    for package in stream {
        let package = package.map_err(|e| format!("cannot read go list output: {e}"))?;
        let in_main_module = package.module.as_ref().is_some_and(|m| m.main);
        if package.standard || !in_main_module {
            continue;
        }
        let Some(dir) = package.dir else { continue };
        if let Some(go_mod) = package.module.as_ref().and_then(|m| m.go_mod.clone()) {
            if let Some(module_dir) = go_mod.parent() {
                graph.module_files.insert(module_dir.join("go.sum"));
                graph.module_files.insert(module_dir.join("go.work"));
            }
            graph.module_files.insert(go_mod);
        }
        for name in package
            .go_files
            .iter()
            .chain(&package.cgo_files)
            .chain(&package.embed_files)
            .chain(&package.s_files)
            .chain(&package.h_files)
            .chain(&package.ignored_go_files)
        {
            graph.files.insert(dir.join(name));
        }
        graph.package_dirs.insert(dir);
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skaffold_globs() {
        let set = glob_set(&["**.go".to_string(), "static".to_string()]).unwrap();
        assert!(set.is_match("a/b/c.go"));
        assert!(set.is_match("main.go"));
        assert!(set.is_match("static/x.css"));
        assert!(!set.is_match("README.md"));
    }
}
