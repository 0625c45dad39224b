//! `ko.dependencies` globs, with Skaffold's semantics: relative to the context, `**.go` at
//! any depth, a plain directory covering what is below it.

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::skaffold::KoDependencies;

/// A glob that does not compile: in which list (`paths` or `ignore`), at which index, and why.
#[derive(Debug)]
pub struct InvalidGlob {
    pub list: &'static str,
    pub index: usize,
    pub message: String,
}

/// An artifact's `ko.dependencies`, compiled: a path (relative to the context) is one of its
/// dependencies when a `paths` glob matches it and no `ignore` glob does.
#[derive(Debug, Clone)]
pub struct DependencyGlobs {
    paths: GlobSet,
    ignore: GlobSet,
}

impl DependencyGlobs {
    pub fn new(paths: &[String], ignore: &[String]) -> Result<DependencyGlobs, InvalidGlob> {
        let invalid = |list| move |(index, message)| InvalidGlob { list, index, message };
        Ok(DependencyGlobs {
            paths: glob_set(paths).map_err(invalid("paths"))?,
            ignore: glob_set(ignore).map_err(invalid("ignore"))?,
        })
    }

    /// The artifact's own globs; None when it names no `paths` (kodev then uses its default).
    pub fn configured(dependencies: Option<&KoDependencies>) -> Result<Option<DependencyGlobs>, InvalidGlob> {
        match dependencies {
            Some(configured) if !configured.paths.is_empty() => {
                DependencyGlobs::new(&configured.paths, &configured.ignore).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub fn matches(&self, relative: &Path) -> bool {
        self.paths.is_match(relative) && !self.ignore.is_match(relative)
    }
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

/// An invalid glob is an error with its index in `patterns`.
fn glob_set(patterns: &[String]) -> Result<GlobSet, (usize, String)> {
    let mut builder = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        let glob = Glob::new(&skaffold_glob(p)).map_err(|e| (i, format!("invalid dependency glob {p:?}: {e}")))?;
        builder.add(glob);
        // A directory pattern covers what is below it, as in Skaffold.
        if !p.contains('*') {
            if let Ok(glob) = Glob::new(&format!("{}/**", p.trim_end_matches('/'))) {
                builder.add(glob);
            }
        }
    }
    builder.build().map_err(|e| (0, e.to_string()))
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

    #[test]
    fn ignore_wins_over_paths() {
        let globs = DependencyGlobs::new(&["**/*.go".to_string()], &["vendor".to_string()]).unwrap();
        assert!(globs.matches(Path::new("cmd/a.go")));
        assert!(!globs.matches(Path::new("vendor/x/y.go")));
        assert!(!globs.matches(Path::new("README.md")));
        let invalid = DependencyGlobs::new(&[], &["b".to_string(), "a[".to_string()]).unwrap_err();
        assert_eq!((invalid.list, invalid.index), ("ignore", 1));
        assert!(invalid.message.contains("a["), "{}", invalid.message);
    }
}
