//! Where Go packages are: the `go` binary, `go list`, and resolving a `main` from go.mod.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A `main` relative to the context, rewritten relative to the work dir for `go list`.
pub(crate) fn relative_package_arg(work_dir: &Path, main_abs: &Path, main: &str) -> String {
    let recursive = main.ends_with("/...");
    let target = if recursive {
        PathBuf::from(main_abs.to_string_lossy().trim_end_matches("/..."))
    } else {
        main_abs.to_path_buf()
    };
    let target = target.canonicalize().unwrap_or(target);
    let rel = match target.strip_prefix(work_dir) {
        Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
        Ok(r) => format!("./{}", r.display()),
        Err(_) => target.display().to_string(),
    };
    if recursive {
        format!("{}/...", rel.trim_end_matches('/'))
    } else {
        rel
    }
}

#[derive(Debug, Clone)]
pub struct GoPackage {
    pub import_path: String,
    pub dir: PathBuf,
    pub name: String,
}

/// Where `go` is found on PATH, the way running it by name finds it.
fn go_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("go")).find(|path| path.is_file())
}

/// The `go` binary: `KO_GO_PATH`, else `go` on PATH, else the standard install location.
pub fn go_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KO_GO_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if go_on_path().is_none() && Path::new("/usr/local/go/bin/go").is_file() {
        return PathBuf::from("/usr/local/go/bin/go");
    }
    PathBuf::from("go")
}

/// `go_binary` as a path even when it is run by name (found on PATH): what a stamp of the go
/// command, or a comparison between processes, needs.
pub fn go_binary_path() -> PathBuf {
    let go = go_binary();
    if go.components().count() > 1 {
        return go;
    }
    go_on_path().unwrap_or(go)
}

/// The nearest go.mod at or above `dir`.
fn nearest_go_mod(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join("go.mod")).find(|p| p.is_file())
}

/// The `module` path declared in a go.mod.
fn module_path(go_mod: &Path) -> Option<String> {
    let text = std::fs::read_to_string(go_mod).ok()?;
    text.lines().find_map(|line| {
        let line = line.split("//").next().unwrap_or("").trim();
        let rest = line.strip_prefix("module")?.trim();
        Some(rest.trim_matches('"').to_string()).filter(|m| !m.is_empty())
    })
}

/// The package name a Go file declares, skipping comments.
fn package_clause(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut rest = text.trim_start_matches('\u{feff}');
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map(|(_, r)| r)?;
        } else {
            break;
        }
    }
    let name = rest.strip_prefix("package")?.trim_start();
    Some(name.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()?.to_string())
}

/// Resolve a plain directory `main` from go.mod alone, without running `go list`: the
/// import path is the module path plus the directory. Only a certain `package main` is
/// accepted; anything unusual (patterns, workspaces, another module) is left to `go list`.
pub(crate) fn main_package_from_go_mod(work_dir: &Path, main_abs: &Path, main: &str) -> Option<GoPackage> {
    if main.contains("...") || !(main == "." || main.starts_with("./") || main.starts_with("../")) {
        return None;
    }
    if std::env::var_os("GOWORK").is_some_and(|v| v != "off") || std::env::var_os("GOFLAGS").is_some() {
        return None;
    }
    let dir = main_abs.canonicalize().ok()?;
    let go_mod = nearest_go_mod(&dir)?;
    if nearest_go_mod(work_dir)? != go_mod || dir.ancestors().any(|d| d.join("go.work").is_file()) {
        return None;
    }
    let module_dir = go_mod.parent()?;
    let module = module_path(&go_mod)?;
    let rel = dir.strip_prefix(module_dir).ok()?;
    if rel.components().any(|c| {
        let s = c.as_os_str().to_string_lossy();
        s == "vendor" || s == "testdata" || s.starts_with('.') || s.starts_with('_')
    }) {
        return None;
    }
    let mut saw_main = false;
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".go") || name.ends_with("_test.go") || name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        match package_clause(&entry.path())?.as_str() {
            "main" => saw_main = true,
            // A file of another package (a build-tagged tool, say): let go list decide.
            _ => return None,
        }
    }
    if !saw_main {
        return None;
    }
    let rel_text = rel.to_string_lossy().replace('\\', "/");
    let import_path = if rel_text.is_empty() { module } else { format!("{module}/{rel_text}") };
    Some(GoPackage { import_path, dir, name: "main".to_string() })
}

/// `go list` the packages matching `pattern` from `work_dir`.
pub fn go_list_packages(work_dir: &Path, pattern: &str) -> std::result::Result<Vec<GoPackage>, String> {
    let output = Command::new(go_binary())
        .args(["list", "-f", "{{.ImportPath}}\t{{.Dir}}\t{{.Name}}", pattern])
        .current_dir(work_dir)
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|e| format!("cannot run go ({}): {e}; install Go or set KO_GO_PATH", go_binary().display()))?;
    if !output.status.success() {
        return Err(format!(
            "go list {pattern} in {} failed: {}",
            work_dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            Some(GoPackage {
                import_path: parts.next()?.to_string(),
                dir: PathBuf::from(parts.next()?),
                name: parts.next()?.to_string(),
            })
        })
        .collect())
}

/// What a build in `work_dir` takes from the developer's disk besides the main module, as its
/// go.mod and workspace say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalModules {
    /// The targets of go.mod's `replace` directives that name a directory and, in a
    /// workspace, its `use`d modules and its own directory replacements. Directories that do
    /// not exist are left out (the build fails on them anyway).
    pub dirs: Vec<PathBuf>,
    /// The workspace file in effect, with its `.sum` beside it when there is one.
    pub workspace_files: Vec<PathBuf>,
}

/// `gowork` is GOWORK as the build sees it (`off`: no workspace; None: the go.work found above
/// `work_dir`, as go finds it).
pub fn local_modules(work_dir: &Path, gowork: Option<&str>) -> LocalModules {
    let mut dirs = Vec::new();
    let mut from_file = |file: &Path, verbs: &[&str]| {
        let Ok(text) = std::fs::read_to_string(file) else { return };
        let base = file.parent().unwrap_or(Path::new("."));
        for (verb, words) in directives(&text) {
            let dir = match verb.as_str() {
                "replace" => words.iter().position(|w| w == "=>").and_then(|at| words.get(at + 1)),
                "use" => words.first(),
                _ => None,
            };
            if let Some(dir) = dir.filter(|d| verbs.contains(&verb.as_str()) && is_directory_path(d)) {
                if let Ok(dir) = base.join(dir).canonicalize() {
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
            }
        }
    };
    if let Some(go_mod) = nearest_go_mod(work_dir) {
        from_file(&go_mod, &["replace"]);
    }
    let workspace = match gowork {
        Some("off") => None,
        Some(file) => Some(PathBuf::from(file)),
        None => work_dir.ancestors().map(|d| d.join("go.work")).find(|p| p.is_file()),
    };
    let mut workspace_files = Vec::new();
    if let Some(workspace) = workspace.filter(|w| w.is_file()) {
        from_file(&workspace, &["use", "replace"]);
        let sum = PathBuf::from(format!("{}.sum", workspace.display()));
        workspace_files.extend(std::iter::once(workspace).chain(sum.is_file().then_some(sum)));
    }
    LocalModules { dirs, workspace_files }
}

/// A go.mod or go.work path that names a directory, as go tells them from module paths.
fn is_directory_path(path: &str) -> bool {
    path == "." || path == ".." || path.starts_with("./") || path.starts_with("../") || path.starts_with('/')
}

/// The directives of a go.mod or go.work: each with its verb and its words (quotes removed,
/// comments dropped), a `verb ( ... )` block giving one per line.
fn directives(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        let words = words_of(line);
        let Some(first) = words.first() else { continue };
        match &block {
            Some(_) if first == ")" => block = None,
            Some(verb) => out.push((verb.clone(), words)),
            None if words.get(1).is_some_and(|w| w == "(") => block = Some(first.clone()),
            None => out.push((first.clone(), words[1..].to_vec())),
        }
    }
    out
}

/// The words of one line of a go.mod, without its `//` comment; quoted words unquoted.
fn words_of(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() && !rest.starts_with("//") {
        let (word, after) = match rest.chars().next() {
            Some(quote @ ('"' | '`')) => match rest[1..].find(quote) {
                Some(end) => (&rest[1..1 + end], &rest[end + 2..]),
                None => (&rest[1..], ""),
            },
            _ => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        words.push(word.to_string());
        rest = after.trim_start();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_clauses_skip_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.go");
        std::fs::write(&file, "// Copyright\n/* block\n package nope */\n//go:build linux\n\npackage main // here\n")
            .unwrap();
        assert_eq!(package_clause(&file).as_deref(), Some("main"));
        std::fs::write(&file, "\u{feff}package shared\n").unwrap();
        assert_eq!(package_clause(&file).as_deref(), Some("shared"));
    }

    #[test]
    fn local_modules_come_from_directory_replacements_and_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for sub in ["app", "lib", "other", "member", "pinned"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        std::fs::write(
            root.join("app/go.mod"),
            "module example.com/app // the app\n\ngo 1.22\n\nreplace example.com/lib => ../lib\n\nreplace (\n\texample.com/other v1.0.0 => \"../other\" // local\n\texample.com/up => example.com/fork v1.2.0\n\texample.com/gone => ../gone\n)\n",
        )
        .unwrap();
        let found = local_modules(&root.join("app"), None);
        assert_eq!(
            found.dirs,
            [root.join("lib"), root.join("other")],
            "a module path and a missing directory are not local"
        );
        assert!(found.workspace_files.is_empty());

        std::fs::write(root.join("go.work"), "go 1.22\n\nuse (\n\t./app\n\t./member\n)\nuse ./pinned\n").unwrap();
        std::fs::write(root.join("go.work.sum"), "").unwrap();
        let found = local_modules(&root.join("app"), None);
        let want = ["lib", "other", "app", "member", "pinned"].map(|d| root.join(d));
        assert_eq!(found.dirs, want, "the go.work found above");
        assert_eq!(found.workspace_files, [root.join("go.work"), root.join("go.work.sum")]);
        assert_eq!(local_modules(&root.join("app"), Some("off")).dirs.len(), 2, "GOWORK=off");
    }

    #[test]
    fn go_mod_resolution_agrees_with_go_list() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monorepo");
        let fast = main_package_from_go_mod(&root, &root.join("./cmd/alpha"), "./cmd/alpha").expect("fast path");
        assert_eq!(fast.import_path, "example.com/mono/cmd/alpha");
        if let Ok(listed) = go_list_packages(&root, "./cmd/alpha") {
            assert_eq!(listed[0].import_path, fast.import_path);
            assert_eq!(listed[0].dir, fast.dir);
        }
        // Not a main package, or a pattern: left to go list.
        assert!(main_package_from_go_mod(&root, &root.join("./internal/shared"), "./internal/shared").is_none());
        assert!(main_package_from_go_mod(&root, &root.join("./cmd"), "./cmd/...").is_none());
    }
}
