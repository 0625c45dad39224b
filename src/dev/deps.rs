//! Which files an artifact depends on, and so which changes rebuild it.
//!
//! With `ko.dependencies` configured: its globs, with Skaffold's semantics (relative to the
//! context, `ignore` wins). Without: the precise default — the files of the main package's
//! Go dependency graph inside the main module(s) and the modules replaced by a local
//! directory (`replace example.com/lib => ../lib`), plus their go.mod, go.sum and kodata/.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::config::globs::DependencyGlobs;
use crate::config::gopkg::{local_modules, LocalModules};
use crate::config::{go_binary, Artifact};
use crate::pipeline::base::BUILTIN_PLATFORMS;
use crate::pipeline::gobuild::{build_env, build_tags, named_workspace};
use crate::platform::{GoTarget, Platform, PlatformRequest};

#[derive(Debug, Clone)]
pub enum Dependencies {
    /// The globs, over the context and over each local module outside it (go.mod's directory
    /// replacements, a workspace's modules: see `gopkg::local_modules`) from its own directory.
    /// `provisional`: kodev's broad default, used until the Go graph is read.
    Globs {
        context: PathBuf,
        globs: DependencyGlobs,
        local: LocalModules,
        provisional: bool,
    },
    Graph(Box<GoGraph>),
}

#[derive(Debug, Clone, Default)]
pub struct GoGraph {
    /// Source files of every in-module package the main depends on.
    pub files: HashSet<PathBuf>,
    /// Directories of those packages: a new .go file there may join a package.
    pub package_dirs: HashSet<PathBuf>,
    /// go.mod / go.sum of the modules involved.
    pub module_files: HashSet<PathBuf>,
    /// The root directories of those modules: some may lie outside every watched directory
    /// (a sibling module, a go.work member elsewhere), and need a watch of their own.
    pub module_dirs: HashSet<PathBuf>,
    /// The systems and architectures (GOOS, GOARCH) the graph was read for, and the build tags.
    pub targets: Vec<(String, String)>,
    pub tags: Vec<String>,
    /// The workspace file GOWORK names (any name), if it does.
    pub named_workspace: Option<PathBuf>,
    /// `<main package>/kodata`.
    pub kodata: PathBuf,
    /// The [`graph_signature`] of each Go file, read before `go list` read the graph.
    pub signatures: HashMap<PathBuf, GraphSignature>,
}

impl GoGraph {
    /// Whether go leaves this Go file out for its name on every platform the graph is for
    /// (`x_windows.go` when building linux images): whatever it holds, the images stay as
    /// they are.
    fn left_out_by_name(&self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".go")) else {
            return false;
        };
        // An empty GOOS or GOARCH (a wildcard platform) leaves the choice to go: not known here.
        !self.targets.is_empty()
            && self.targets.iter().all(|(goos, goarch)| {
                !goos.is_empty()
                    && !goarch.is_empty()
                    && GoTarget { goos, goarch, tags: &self.tags }.excludes_by_name(name)
            })
    }
}

/// A hash of what in a Go file can change the package graph.
pub type GraphSignature = [u8; 32];

/// What in a Go file can change the package graph: the code of its head (package clause and
/// imports: everything before the first other top-level declaration, which imports must
/// precede), its `//go:` directives (build constraints, embeds) and `// +build` lines.
/// Comments and blank lines elsewhere in the head do not count, nor does anything after
/// it (a function body, say): such edits leave the graph as it was, so `go list` need not
/// run again.
pub fn graph_signature(source: &str) -> GraphSignature {
    let mut hasher = blake3::Hasher::new();
    let mut in_head = true;
    let mut in_block_comment = false;
    for line in source.lines() {
        let trimmed = line.trim();
        let directive = trimmed.starts_with("//go:") || trimmed.starts_with("// +build");
        if in_head && !in_block_comment {
            in_head = !["func", "var", "const", "type"].iter().any(|keyword| {
                line.strip_prefix(keyword).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '(']))
            });
        }
        if directive && !in_block_comment {
            hasher.update(trimmed.as_bytes());
            hasher.update(b"\n");
        } else if in_head {
            let (code, open) = code_of_line(line, in_block_comment);
            in_block_comment = open;
            if !code.trim().is_empty() {
                hasher.update(code.trim().as_bytes());
                hasher.update(b"\n");
            }
        }
    }
    *hasher.finalize().as_bytes()
}

/// The code of a line outside comments, and whether a `/* … */` comment is open at its end.
fn code_of_line(line: &str, mut open: bool) -> (String, bool) {
    let mut code = String::new();
    let mut rest = line;
    loop {
        if open {
            match rest.find("*/") {
                Some(end) => {
                    open = false;
                    rest = &rest[end + 2..];
                }
                None => return (code, true),
            }
        } else {
            let line_comment = rest.find("//");
            match rest.find("/*") {
                Some(start) if line_comment.is_none_or(|c| start < c) => {
                    code.push_str(&rest[..start]);
                    code.push(' ');
                    open = true;
                    rest = &rest[start + 2..];
                }
                _ => {
                    code.push_str(&rest[..line_comment.unwrap_or(rest.len())]);
                    return (code, false);
                }
            }
        }
    }
}

fn signature_of(path: &Path) -> Option<GraphSignature> {
    std::fs::read_to_string(path).ok().map(|source| graph_signature(&source))
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
    dir: Option<PathBuf>,
    go_mod: Option<PathBuf>,
    replace: Option<ListedReplacement>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedReplacement {
    /// Empty when the replacement is a directory rather than another module version.
    #[serde(default)]
    version: String,
    dir: Option<PathBuf>,
}

impl ListedModule {
    /// Whether its sources are the developer's to edit: a main module (go.work lists several),
    /// or one replaced by a local directory. Other modules come from the read-only module cache.
    fn is_local(&self) -> bool {
        self.main || self.replace.as_ref().is_some_and(|r| r.version.is_empty() && r.dir.is_some())
    }
}

impl Dependencies {
    /// Package directories of a graph read before: their Go files' signatures are taken
    /// before the graph is read again.
    pub fn package_dirs(&self) -> HashSet<PathBuf> {
        match self {
            Dependencies::Graph(graph) => graph.package_dirs.clone(),
            Dependencies::Globs { .. } => HashSet::new(),
        }
    }

    /// The root directories of the modules whose files these are (globs: the local modules;
    /// the context is always watched).
    pub fn module_dirs(&self) -> HashSet<PathBuf> {
        match self {
            Dependencies::Graph(graph) => graph.module_dirs.clone(),
            Dependencies::Globs { local, .. } => local.dirs.iter().cloned().collect(),
        }
    }

    /// The go.work files in effect (they exist), which may lie above every module directory.
    pub fn workspace_files(&self) -> Vec<PathBuf> {
        match self {
            Dependencies::Graph(graph) => graph
                .module_files
                .iter()
                .filter(|f| f.file_name().is_some_and(|n| n == "go.work") || graph.named_workspace.as_ref() == Some(*f))
                .filter(|f| f.is_file())
                .cloned()
                .collect(),
            Dependencies::Globs { local, .. } => local.workspace_files.clone(),
        }
    }

    /// `known_dirs`: package directories of the graph read before, if any (see [`go_graph`]).
    pub fn resolve(artifact: &Artifact, known_dirs: &HashSet<PathBuf>) -> Result<Dependencies, String> {
        match &artifact.dependency_globs {
            Some(globs) => Ok(Dependencies::Globs {
                context: artifact.context.clone(),
                globs: globs.clone(),
                local: local_modules_of(artifact),
                provisional: false,
            }),
            None => go_graph(artifact, known_dirs).map(|graph| Dependencies::Graph(Box::new(graph))),
        }
    }

    /// Every Go file, module file and kodata under the context and the local modules: until
    /// the graph is read (at the start, or while `go list` fails on a broken go.mod, say), any
    /// such edit still rebuilds, and the next build reads the graph again.
    pub fn provisional(artifact: &Artifact) -> Dependencies {
        let patterns: Vec<String> =
            ["**/*.go", "**/go.mod", "**/go.sum", "**/go.work", "**/kodata/**"].iter().map(|p| p.to_string()).collect();
        let globs = DependencyGlobs::new(&patterns, &[]).expect("kodev's own globs are valid");
        Dependencies::Globs {
            context: artifact.context.clone(),
            globs,
            local: local_modules_of(artifact),
            provisional: true,
        }
    }

    pub fn matches(&self, path: &Path) -> bool {
        match self {
            Dependencies::Globs { context, globs, local, .. } => {
                let in_root = |root: &PathBuf| path.strip_prefix(root).is_ok_and(|rel| globs.matches(rel));
                in_root(context) || local.dirs.iter().any(in_root) || local.workspace_files.iter().any(|f| f == path)
            }
            Dependencies::Graph(graph) => {
                graph.module_files.contains(path)
                    || path.starts_with(&graph.kodata)
                    || (!graph.left_out_by_name(path)
                        && (graph.files.contains(path)
                            || (path.extension().is_some_and(|e| e == "go")
                                && path.parent().is_some_and(|d| graph.package_dirs.contains(d)))))
            }
        }
    }

    /// Whether a change at `path` may alter the graph itself (imports, modules).
    pub fn needs_refresh(&self, path: &Path) -> bool {
        match self {
            Dependencies::Globs { provisional, .. } => *provisional,
            Dependencies::Graph(graph) => {
                if graph.module_files.contains(path) {
                    return true;
                }
                if path.extension().is_none_or(|e| e != "go") || graph.left_out_by_name(path) {
                    return false;
                }
                // A new, removed or unreadable file changes its package's file list.
                match (graph.signatures.get(path), signature_of(path)) {
                    (Some(known), Some(now)) => *known != now,
                    _ => true,
                }
            }
        }
    }
}

/// The local modules an artifact's go builds take besides the main module, as its go.mod and
/// workspace say (GOWORK as those builds see it).
fn local_modules_of(artifact: &Artifact) -> LocalModules {
    local_modules(&artifact.work_dir, crate::pipeline::gobuild::workspace_setting(artifact).as_deref())
}

/// The signatures of the Go files in `dirs`.
fn signatures_in(dirs: &HashSet<PathBuf>) -> HashMap<PathBuf, GraphSignature> {
    let mut out = HashMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "go") {
                if let Some(signature) = signature_of(&path) {
                    out.insert(path, signature);
                }
            }
        }
    }
    out
}

/// The platforms whose package graphs make up an artifact's: the ones it builds, or for
/// `all` (which the base image decides) every linux platform ko's default bases ship.
fn graph_platforms(artifact: &Artifact) -> Vec<Platform> {
    let mut platforms: Vec<Platform> = match &artifact.platforms {
        PlatformRequest::List(list) => list.clone(),
        PlatformRequest::All => BUILTIN_PLATFORMS.iter().map(|(arch, v)| Platform::new("linux", arch, *v)).collect(),
    };
    // Once per go environment (a variant's GOARM or GOAMD64 sets build tags too: `amd64.v3`).
    let mut seen = HashSet::new();
    platforms.retain(|p| seen.insert(p.go_env()));
    platforms
}

/// `go list -deps -json` of the main package as go builds it for `platform`: its system and
/// architecture, the artifact's env and its go flags (`-tags` choose files too).
fn list_deps(artifact: &Artifact, platform: &Platform) -> Result<Vec<u8>, String> {
    let artifact = artifact.for_platform(platform)?;
    let output = Command::new(go_binary())
        .args(["list", "-deps", "-json=Dir,Standard,Module,GoFiles,CgoFiles,EmbedFiles,SFiles,HFiles,IgnoredGoFiles"])
        .args(&artifact.flags)
        .arg(&artifact.import_path)
        .current_dir(&artifact.work_dir)
        .envs(build_env(&artifact, platform))
        .output()
        .map_err(|e| format!("cannot run go list: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "go list -deps {} for {platform} failed: {}",
            artifact.import_path,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

/// `go list -deps -json` of the main package, keeping the packages of the main module(s) and of
/// modules replaced by a local directory.
/// Go files in `known_dirs` (the packages of the graph read before) get their signatures,
/// so that edits which cannot change the graph do not make it be read again; files of
/// packages new to the graph get theirs the next time it is read.
pub fn go_graph(artifact: &Artifact, known_dirs: &HashSet<PathBuf>) -> Result<GoGraph, String> {
    // Read before go list: a file edited while go list runs then compares as changed
    // (conservative), never as unchanged when go list saw its older text.
    let signatures_before = signatures_in(known_dirs);
    let platforms = graph_platforms(artifact);
    // One go list per platform, at once: a file of one system (`x_linux.go`, `//go:build
    // arm64`) can import packages the others do not.
    let listings: Vec<Result<Vec<u8>, String>> = std::thread::scope(|scope| {
        let running: Vec<_> = platforms.iter().map(|platform| scope.spawn(|| list_deps(artifact, platform))).collect();
        running
            .into_iter()
            .map(|run| run.join().unwrap_or_else(|_| Err("go list did not finish".to_string())))
            .collect()
    });
    let mut graph = GoGraph {
        kodata: artifact.package_dir.join("kodata"),
        targets: platforms.iter().map(|p| (p.os.clone(), p.architecture.clone())).collect(),
        tags: build_tags(artifact),
        ..Default::default()
    };
    let listings = listings.into_iter().collect::<Result<Vec<_>, _>>()?;
    let stream =
        listings.iter().flat_map(|listing| serde_json::Deserializer::from_slice(listing).into_iter::<ListedPackage>());
    for package in stream {
        let package = package.map_err(|e| format!("cannot read go list output: {e}"))?;
        let local_module = package.module.as_ref().is_some_and(ListedModule::is_local);
        if package.standard || !local_module {
            continue;
        }
        let Some(dir) = package.dir else { continue };
        // In vendor mode a package's directory is under vendor/, not in its module's.
        if let Some(module_dir) = package.module.as_ref().and_then(|m| m.dir.clone()).filter(|m| dir.starts_with(m)) {
            graph.module_dirs.insert(module_dir);
        }
        if let Some(go_mod) = package.module.as_ref().and_then(|m| m.go_mod.clone()) {
            if let Some(module_dir) = go_mod.parent() {
                graph.module_files.insert(module_dir.join("go.sum"));
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
    // go takes the first go.work in the directory it runs in or above it (or the one GOWORK
    // names): one appearing, changing or going changes the build.
    for dir in artifact.work_dir.ancestors() {
        graph.module_files.extend(["go.work", "go.work.sum"].map(|name| dir.join(name)));
    }
    graph.named_workspace = named_workspace(artifact);
    if let Some(go_work) = &graph.named_workspace {
        graph.module_files.extend([go_work.clone(), PathBuf::from(format!("{}.sum", go_work.display()))]);
    }
    graph.signatures = signatures_before.into_iter().filter(|(path, _)| graph.files.contains(path)).collect();
    tracing::debug!(image = %artifact.image, files = graph.files.len(), "package graph read");
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"//go:build linux

// Package main says hello.
package main

import (
	"fmt"

	"example.com/mono/internal/shared"
)

/* A block comment that mentions
func inside it, at the start of a line. */
import "os"

//go:embed static/*
var static embed.FS

func main() {
	fmt.Println(shared.Greeting("beta"), os.Args)
}
"#;

    #[test]
    fn only_edits_that_can_change_the_graph_change_the_signature() {
        let before = graph_signature(MAIN);
        let same = |edited: &str| graph_signature(edited) == before;
        assert!(same(&MAIN.replace("\"beta\"", "\"beta, again\"")), "a function body");
        assert!(same(&format!("{MAIN}\nfunc more() {{}}\n")), "a new function");
        assert!(same(&MAIN.replace("// Package main says hello.", "// Package main greets.\n")), "a comment");
        assert!(same(&MAIN.replace("mentions\nfunc", "mentions\nvar")), "a block comment");
        assert!(!same(&MAIN.replace("\t\"fmt\"", "\t\"fmt\"\n\t\"strings\"")), "a new import");
        assert!(!same(&MAIN.replace("import \"os\"", "import \"io\"")), "an import after a block comment");
        assert!(!same(&MAIN.replace("//go:build linux", "//go:build darwin")), "a build constraint");
        assert!(!same(&MAIN.replace("package main", "package other")), "the package clause");
        assert!(!same(&MAIN.replace("static/*", "assets/*")), "an embed pattern");
    }

    #[test]
    fn go_edits_ask_for_a_new_graph_only_when_their_signature_changed() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main.go");
        std::fs::write(&main, MAIN).unwrap();
        let go_mod = dir.path().join("go.mod");
        let mut graph = GoGraph::default();
        graph.files.insert(main.clone());
        graph.package_dirs.insert(dir.path().to_path_buf());
        graph.module_files.insert(go_mod.clone());
        graph.signatures = signatures_in(&graph.package_dirs);
        let deps = Dependencies::Graph(Box::new(graph));

        std::fs::write(&main, MAIN.replace("\"beta\"", "\"gamma\"")).unwrap();
        assert!(!deps.needs_refresh(&main), "a body edit");
        std::fs::write(&main, MAIN.replace("\t\"fmt\"", "\t\"fmt\"\n\t\"strings\"")).unwrap();
        assert!(deps.needs_refresh(&main), "a new import");
        let added = dir.path().join("extra.go");
        std::fs::write(&added, "package main\n").unwrap();
        assert!(deps.needs_refresh(&added), "a new file of the package");
        std::fs::remove_file(&main).unwrap();
        assert!(deps.needs_refresh(&main), "a removed file");
        assert!(deps.needs_refresh(&go_mod), "go.mod");
        assert!(!deps.needs_refresh(&dir.path().join("README.md")));
    }

    fn write_at(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The package graph of the first artifact of a skaffold.yaml.
    fn graph_of(skaffold: &Path) -> GoGraph {
        let options =
            crate::config::LoadOptions { file: skaffold.to_path_buf(), push: Some(false), ..Default::default() };
        let plan = crate::config::load(&options).unwrap();
        go_graph(&plan.artifacts[0], &HashSet::new()).unwrap()
    }

    /// Two local modules besides the main one: a go.work member and a directory replacement.
    #[test]
    fn the_graph_takes_in_workspace_members_and_modules_replaced_by_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        let write = |rel: &str, text: &str| write_at(&ws, rel, text);
        write("go.work", "go 1.22\n\nuse (\n\t./app\n\t./member\n)\n");
        write("app/go.mod", "module example.com/app\n\ngo 1.22\n\nrequire example.com/replaced v0.0.0\n\nreplace example.com/replaced => ../replaced\n");
        write(
            "app/main.go",
            "package main\n\nimport (\n\t\"example.com/member\"\n\t\"example.com/replaced\"\n)\n\nfunc main() { println(member.A + replaced.B) }\n",
        );
        write("app/skaffold.yaml", "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: app\n      ko:\n        main: .\n");
        write("member/go.mod", "module example.com/member\n\ngo 1.22\n");
        write("member/a.go", "package member\n\nconst A = \"a\"\n");
        write("replaced/go.mod", "module example.com/replaced\n\ngo 1.22\n");
        write("replaced/b.go", "package replaced\n\nconst B = \"b\"\n");
        let graph = graph_of(&ws.join("app/skaffold.yaml"));
        for file in ["app/main.go", "member/a.go", "replaced/b.go"] {
            assert!(graph.files.contains(&ws.join(file)), "{file} in {:?}", graph.files);
        }
        for dir in ["app", "member", "replaced"] {
            assert!(graph.module_dirs.contains(&ws.join(dir)), "{dir} in {:?}", graph.module_dirs);
        }
        for file in ["go.work", "member/go.mod", "replaced/go.mod"] {
            assert!(graph.module_files.contains(&ws.join(file)), "{file} in {:?}", graph.module_files);
        }
    }

    /// Files picked by the artifact's `-tags` and by each of its platforms import packages
    /// the host's default build does not.
    #[test]
    fn the_graph_is_the_one_of_every_platform_built_with_the_artifacts_flags() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().canonicalize().unwrap();
        let write = |rel: &str, text: &str| write_at(&app, rel, text);
        write("go.mod", "module example.com/app\n\ngo 1.22\n");
        write("main.go", "package main\n\nfunc main() {}\n");
        let importing = |package: &str| format!("package main\n\nimport _ \"example.com/app/{package}\"\n");
        write("tagged.go", &format!("//go:build extra\n\n{}", importing("extra")));
        write("arm_arm64.go", &importing("arm"));
        write("ppc_ppc64le.go", &importing("ppc"));
        for package in ["extra", "arm", "ppc"] {
            write(&format!("{package}/{package}.go"), &format!("package {package}\n"));
        }
        write(
            "skaffold.yaml",
            "apiVersion: skaffold/v4beta14\nkind: Config\nbuild:\n  artifacts:\n    - image: app\n      platforms: [linux/amd64, linux/arm64]\n      ko:\n        main: .\n        flags: [-tags=extra]\n",
        );
        let graph = graph_of(&app.join("skaffold.yaml"));
        for dir in ["extra", "arm"] {
            assert!(graph.package_dirs.contains(&app.join(dir)), "{dir} in {:?}", graph.package_dirs);
        }
        assert!(!graph.package_dirs.contains(&app.join("ppc")), "no ppc64le build: {:?}", graph.package_dirs);
    }

    #[test]
    fn files_go_leaves_out_by_name_on_every_platform_rebuild_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let mut graph = GoGraph {
            targets: vec![("linux".to_string(), "amd64".to_string()), ("linux".to_string(), "arm64".to_string())],
            kodata: at("kodata"),
            ..Default::default()
        };
        graph.package_dirs.insert(dir.path().to_path_buf());
        for name in ["main.go", "console_windows.go", "sys_arm64.go"] {
            graph.files.insert(at(name));
        }
        let deps = Dependencies::Graph(Box::new(graph.clone()));
        assert!(deps.matches(&at("main.go")));
        assert!(deps.matches(&at("sys_arm64.go")), "one platform builds it");
        assert!(deps.matches(&at("new_linux.go")), "a new file joining the package");
        for left_out in ["console_windows.go", "new_darwin_arm64.go"] {
            assert!(!deps.matches(&at(left_out)), "{left_out}");
            assert!(!deps.needs_refresh(&at(left_out)), "{left_out}");
        }
        assert!(deps.matches(&at("kodata/logo_windows.png")), "kodata is copied whatever its names");
        graph.tags = vec!["windows".to_string()];
        assert!(Dependencies::Graph(Box::new(graph.clone())).matches(&at("console_windows.go")), "-tags windows");
        graph.tags.clear();
        graph.targets.push((String::new(), String::new()));
        assert!(
            Dependencies::Graph(Box::new(graph)).matches(&at("console_windows.go")),
            "a wildcard platform: go decides"
        );
    }

    #[test]
    fn globs_count_in_the_local_modules_each_from_its_own_directory() {
        let globs = DependencyGlobs::new(&["**/*.go".to_string()], &[]).unwrap();
        let local = LocalModules { dirs: vec!["/w/lib".into()], workspace_files: vec!["/w/go.work".into()] };
        let deps = Dependencies::Globs { context: "/w/app".into(), globs, local, provisional: false };
        assert!(deps.matches(Path::new("/w/app/main.go")));
        assert!(deps.matches(Path::new("/w/lib/x/lib.go")), "a file of the local module");
        assert!(!deps.matches(Path::new("/w/lib/README.md")), "the globs apply there too");
        assert!(deps.matches(Path::new("/w/go.work")), "the workspace file");
        assert!(!deps.matches(Path::new("/w/other/a.go")), "no module the build takes");
        assert_eq!(deps.module_dirs(), HashSet::from([PathBuf::from("/w/lib")]), "watched");
    }
}
