//! Relinking after an edit of the main module's packages, without the go command.
//!
//! Before it compiles anything, `go build` loads the package graph and hashes the sources of
//! every package to check its cache: 70–110 ms for hello on two cores, about 0.3 s for ko's own
//! source, all of it before the edit's compile starts. Most edits touch only the main module's
//! own packages. For those, kodev replays what go itself did — the compiles of the edited
//! packages and of the importers whose action IDs change with them, the main package's
//! compile and the link, with go's own recorded arguments — after working out the build IDs go
//! would give, the same way go does. What it compiles goes into go's build cache as go would
//! put it (`gocache`). The binary is byte for byte the one `go build` makes.
//!
//! The recipe is captured from a `go build -x -work` run with `GODEBUG=gocachehash=1`, which
//! prints the exact text go hashes into each action ID. Only the edited packages' file hashes
//! and, from them, content IDs change after an edit; everything else in the texts stays as go
//! wrote it. A recipe is used only while every other input go read is as it was (the same size,
//! modification time and inode), the followed packages' directories list the same files, and
//! the edited files' package clause, imports and `//go:` directives are unchanged. Anything
//! else goes through `go build` again, which captures a new recipe.
//!
//! A recipe is saved beside its binary for the next process, and applies only in the same
//! environment with the same go command. It is kept only if kodev's computation gives the
//! content IDs go wrote into the archive and the binary of the build it was read from.
//!
//! In `kodev dev`, after each relink, `go build -n` confirms that go agrees the binary is up to
//! date (it computes the same build ID from the sources). If it ever does not, relinking is
//! turned off with that toolchain and the next build runs go. A one-shot build has no idle
//! moment for that check and goes without it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pipeline::gocache;
use crate::platform::GoTarget;
use crate::stamp::FileStamp;

/// The `GODEBUG` setting that makes go print what it hashes into action IDs.
pub const CAPTURE_GODEBUG: &str = "gocachehash=1";
/// The `go build` flags that make it print its commands and keep its work directory.
pub const CAPTURE_FLAGS: [&str; 2] = ["-x", "-work"];

/// Why a go build gave no recipe when the main package came from go's cache.
pub const NOT_COMPILED: &str = "go did not compile the main package";

/// Byte strings as hex in a saved recipe (go's texts are mostly, not always, UTF-8).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(texts: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(texts.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts.iter().map(|t| hex::decode(t).map_err(serde::de::Error::custom)).collect()
    }
}

/// A command go ran, as `-x` printed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ToolRun {
    dir: PathBuf,
    env: Vec<(String, String)>,
    tool: PathBuf,
    args: Vec<String>,
}

/// What go did to build one binary, enough to redo the main package's compile and the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    /// `RECIPE_FORMAT` and the kodev version that wrote it: a saved recipe of another is not read.
    format: String,
    /// The environment go ran in, as far as it can change a build (`go_environment`), and the
    /// go command kodev ran.
    environment: Vec<(String, String)>,
    go: PathBuf,
    main_import_path: String,
    compile: ToolRun,
    link: ToolRun,
    /// The files go wrote into `$WORK/b001` for the tools (import and embed configuration).
    work_file_names: Vec<String>,
    #[serde(with = "hex_bytes")]
    work_file_contents: Vec<Vec<u8>>,
    /// What go hashed into the main package's compile action ID and the link's, write by write.
    #[serde(with = "hex_bytes")]
    compile_text: Vec<Vec<u8>>,
    #[serde(with = "hex_bytes")]
    link_text: Vec<Vec<u8>>,
    /// The main package's input files: (index of their `file` write, name in the package dir).
    main_files: Vec<(usize, String)>,
    /// Every other input that must be as it was (None: must still be missing).
    inputs: Vec<(PathBuf, Option<FileStamp>)>,
    main_dir: PathBuf,
    /// The main package directory's names that can join the package.
    main_listing: BTreeSet<String>,
    main_signatures: HashMap<String, crate::dev::deps::GraphSignature>,
    /// Whether the listing counts every file (the package embeds some) or only source files.
    listing_all: bool,
    /// go's build cache (`GOCACHE`), where the packages of the main module that kodev compiles
    /// itself are kept the way go keeps them.
    gocache: Option<PathBuf>,
    /// The main module's other packages, each after those it imports (see `ModulePackage`).
    packages: Vec<ModulePackage>,
}

/// A package of the main module besides main, as the captured build saw it: enough to tell
/// when its files change, to work out its action ID again, and, when go compiled it in that
/// build, to compile it again the way go did. An edit of such a package (most of a
/// developer's edits) is then rebuilt without the go command: the package and those of its
/// importers whose action IDs change, then main and the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModulePackage {
    import_path: String,
    dir: PathBuf,
    /// What go hashed into its compile action ID, write by write.
    #[serde(with = "hex_bytes")]
    text: Vec<Vec<u8>>,
    /// The content ID of its archive (the last part of its build ID).
    content_id: String,
    /// Whether its files may change without the go command: then they are followed here, not
    /// among the recipe's fixed inputs. Packages with cgo, assembly or embedded files are fixed.
    editable: bool,
    /// Its files: (index of their `file` write, name in `dir`, stamp when captured).
    files: Vec<(usize, String, Option<FileStamp>)>,
    dir_stamp: Option<FileStamp>,
    listing: BTreeSet<String>,
    signatures: HashMap<String, crate::dev::deps::GraphSignature>,
    /// go's compile of it, when the captured build (or an earlier one with the same text) ran one.
    compile: Option<PackageCompile>,
}

/// A package's compile as go ran it, in `$WORK/<work>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PackageCompile {
    run: ToolRun,
    work: String,
    work_file_names: Vec<String>,
    #[serde(with = "hex_bytes")]
    work_file_contents: Vec<Vec<u8>>,
}

/// A Go-quoted string (`strconv.Quote`) back to its bytes.
fn go_unquote(quoted: &str) -> Option<Vec<u8>> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?.as_bytes();
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let escape = *inner.get(i + 1)?;
        let simple = match escape {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'\\' | b'"' | b'\'' => Some(escape),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            i += 2;
            continue;
        }
        let digits = match escape {
            b'x' => 2,
            b'u' => 4,
            b'U' => 8,
            _ => return None,
        };
        let hex = std::str::from_utf8(inner.get(i + 2..i + 2 + digits)?).ok()?;
        let value = u32::from_str_radix(hex, 16).ok()?;
        if escape == b'x' {
            out.push(value as u8);
        } else {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(char::from_u32(value)?.encode_utf8(&mut utf8).as_bytes());
        }
        i += 2 + digits;
    }
    Some(out)
}

/// One `-x` command line into its words: go quotes a word (`strconv.Quote`) when it has spaces
/// or shell syntax in it, and an environment value with single quotes.
fn split_command(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        rest = rest.trim_start_matches(' ');
        if rest.starts_with('"') {
            let bytes = rest.as_bytes();
            let mut end = 1;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let word = go_unquote(rest.get(..=end)?)?;
            words.push(String::from_utf8(word).ok()?);
            rest = rest.get(end + 1..)?;
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    Some(words)
}

/// A tool run line (`[NAME=value ...] /goroot/pkg/tool/os_arch/tool args...`), in `dir`.
fn tool_run(line: &str, dir: &Path) -> Option<ToolRun> {
    let words = split_command(line)?;
    let mut env = Vec::new();
    let mut words = words.into_iter();
    let tool = loop {
        let word = words.next()?;
        match word.split_once('=') {
            Some((name, value)) if !word.starts_with('/') && !name.is_empty() => {
                let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
                env.push((name.to_string(), value.to_string()));
            }
            _ => break PathBuf::from(word),
        }
    };
    Some(ToolRun { dir: dir.to_path_buf(), env, tool, args: words.collect() })
}

/// A run of one of go's tools (see `tool_run`); None for the steps go takes itself (`mkdir`…).
fn go_tool_run(line: &str, dir: &Path) -> Option<ToolRun> {
    tool_run(line, dir).filter(|run| tool_name(&run.tool.to_string_lossy()).is_some())
}

/// The work directory (`b001`, `b002`…) that a line's first `$WORK/b…` path names.
fn work_dir_named(line: &str) -> Option<String> {
    let at = line.find("$WORK/b")?;
    Some(line[at + "$WORK/".len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect())
}

/// The name of a go tool (`compile`, `link`, `asm`…) if the word is one's path.
fn tool_name(word: &str) -> Option<&str> {
    let (dir, name) = word.rsplit_once('/')?;
    dir.rsplit_once('/').is_some_and(|(parent, _)| parent.ends_with("/pkg/tool")).then_some(name)
}

/// The bytes of each write into the hash named `name`, from its last complete run in the
/// `gocachehash` output, checked against the digest go printed at its end.
fn hashed_text(lines: &[String], name: &str) -> Option<Vec<Vec<u8>>> {
    let head = format!("HASH[{name}]");
    let prefix = format!("{head}: ");
    let (mut writes, mut done) = (None::<Vec<Vec<u8>>>, None);
    for line in lines {
        if *line == head {
            writes = Some(Vec::new());
        } else if let Some(rest) = line.strip_prefix(&prefix) {
            let current = writes.as_mut()?;
            if rest.starts_with('"') {
                current.push(go_unquote(rest)?);
            } else {
                let digest = action_hex_of(current);
                if digest != rest {
                    return None;
                }
                done = writes.take();
            }
        }
    }
    done
}

/// The main package's full action ID (hex) from a capturing build's output: the name of its
/// entry in go's cache, `<GOCACHE>/<first two digits>/<id>-a`.
pub fn main_action_in_cache(lines: &[String]) -> Option<String> {
    let main = lines.iter().find_map(|l| l.strip_prefix("HASH[link ")?.strip_suffix(']'))?;
    package_action(lines, main)
}

/// After a capturing build that linked a main package go took from its cache, when no recipe
/// holds main's compile: removes main's entry from go's cache (the `-a` file; the archive
/// stays), so that the next go build compiles main again, the same bytes, and is recorded. For
/// a one-shot `kodev build`, which records nothing after its push (`kodev dev` does, see
/// `Recapture`). Returns whether the entry was removed.
pub fn forget_cached_main(lines: &[String]) -> bool {
    let linked = lines.iter().any(|line| line.contains("/link -o $WORK/b001/exe/a.out "));
    let cache = lines
        .iter()
        .filter_map(|line| packagefile(line))
        .find_map(|(_, path)| cache_holding(Path::new(path)))
        .filter(|_| cache_is_files());
    match (linked, cache, main_action_in_cache(lines)) {
        (true, Some(cache), Some(action)) => std::fs::remove_file(gocache::entry_path(cache, &action)).is_ok(),
        _ => false,
    }
}

/// The full action ID (hex) of the package `import_path`'s compile, from a `gocachehash`
/// output (a `go build -n` too: it hashes what it would build, even when the binary is up to
/// date and it has nothing to link).
pub fn package_action(lines: &[String], import_path: &str) -> Option<String> {
    let text = hashed_text(lines, &format!("build {import_path}"))?;
    Some(action_hex_of(&text))
}

/// go's `HashToString`: the first 15 bytes of a hash in 20 characters of URL-safe base64.
fn hash_to_string(hash: &[u8]) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(20);
    for three in hash[..15].chunks(3) {
        let v = u32::from(three[0]) << 16 | u32::from(three[1]) << 8 | u32::from(three[2]);
        for shift in [18, 12, 6, 0] {
            out.push(B64[(v >> shift & 0x3f) as usize] as char);
        }
    }
    out
}

/// The full action ID (hex) of hashed text `text`: the name of its entry in go's cache.
fn action_hex_of(text: &[Vec<u8>]) -> String {
    hex::encode(Sha256::digest(text.concat()))
}

fn text_id(text: &[Vec<u8>]) -> String {
    let mut hasher = Sha256::new();
    for write in text {
        hasher.update(write);
    }
    hash_to_string(&hasher.finalize())
}

/// Source file names go may add to a package (besides embedded files).
fn is_source_name(name: &str) -> bool {
    const EXTENSIONS: [&str; 20] = [
        ".go", ".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx", ".m", ".s", ".S", ".sx", ".f", ".F", ".for",
        ".f90", ".syso", ".swig", ".swigcxx",
    ];
    EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

/// How go builds an artifact, beyond what its output says.
#[derive(Debug, Clone, Default)]
pub struct BuildSettings {
    /// The build tags its flags set (`-tags`).
    pub tags: Vec<String>,
    /// The workspace file GOWORK names, if it names one.
    pub workspace_file: Option<PathBuf>,
}

fn listing(dir: &Path, all: bool) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let name = entry.ok()?.file_name().to_string_lossy().into_owned();
        // go skips names starting with '.' or '_' when it lists a package.
        if !name.starts_with(['.', '_']) && (all || is_source_name(&name)) {
            names.insert(name);
        }
    }
    Some(names)
}

/// An import configuration line's package and archive path.
fn packagefile(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("packagefile ")?.split_once('=')
}

/// An import configuration with the packages go compiled in the same run (which it names by
/// their place in its work directory, gone by the next build) named by their place in go's
/// cache instead: go keeps each compiled package there under the SHA-256 of its bytes. The main
/// package's own entry (`b001`) stays: the linker reads main from its command line.
fn point_into_cache(config: &[u8], work: &str, gocache: Option<&Path>) -> Result<Vec<u8>, &'static str> {
    let Ok(text) = std::str::from_utf8(config) else { return Ok(config.to_vec()) };
    let (in_work, main_archive) = (format!("{work}/"), format!("{work}/b001/"));
    let from_this_run = |path: &str| path.starts_with(&in_work) && !path.starts_with(&main_archive);
    // go's cache, from a package this run did not compile: `<cache>/xx/<sha256>-d`.
    let cache =
        gocache.or_else(|| text.lines().filter_map(packagefile).find_map(|(_, path)| cache_holding(Path::new(path))));
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match packagefile(line.trim_end_matches('\n')) {
            Some((package, path)) if from_this_run(path) => {
                let cache = cache.ok_or("every package was compiled in this go run")?;
                let bytes = std::fs::read(path).map_err(|_| "a package go compiled is gone")?;
                let hash = hex::encode(Sha256::digest(bytes));
                let cached = cache.join(&hash[..2]).join(format!("{hash}-d"));
                if !cached.is_file() {
                    return Err("a package go compiled is not in its cache");
                }
                out.push_str(&format!("packagefile {package}={}\n", cached.display()));
            }
            _ => out.push_str(line),
        }
    }
    Ok(out.into_bytes())
}

fn signature(path: &Path) -> Option<crate::dev::deps::GraphSignature> {
    std::fs::read_to_string(path).ok().map(|source| crate::dev::deps::graph_signature(&source))
}

/// Where the git state that go stamps into a binary lives, for a main package directory.
fn git_state_files(main_dir: &Path) -> Option<Vec<PathBuf>> {
    let git = main_dir.ancestors().map(|dir| dir.join(".git")).find(|git| git.exists())?;
    // A worktree's `.git` is a file pointing elsewhere: not followed.
    if !git.is_dir() {
        return None;
    }
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let mut files = vec![git.join("HEAD"), git.join("packed-refs")];
    if let Some(reference) = head.trim().strip_prefix("ref: ") {
        files.push(git.join(reference));
    }
    Some(files)
}

/// go's build cache, from a `-x` line that shows go keeping a package there
/// (`cp $WORK/b002/_pkg_.a <GOCACHE>/xx/<output ID>-d # internal`).
fn cached_output_dir(line: &str) -> Option<PathBuf> {
    let rest = line.strip_prefix("cp $WORK/")?.strip_suffix(" # internal")?;
    let (_, to) = rest.split_once(' ')?;
    cache_holding(Path::new(to)).map(Path::to_path_buf)
}

/// go's build cache, from the path of an output it keeps there (`<GOCACHE>/xx/<sha256>-d`).
fn cache_holding(output: &Path) -> Option<&Path> {
    let name = output.file_name()?.to_str()?;
    (name.len() == 66 && name.ends_with("-d")).then(|| output.parent()?.parent()).flatten()
}

/// Whether go's build cache is files kodev can add to and remove from: not with a cache
/// program (`GOCACHEPROG`).
fn cache_is_files() -> bool {
    std::env::var_os("GOCACHEPROG").is_none_or(|p| p.is_empty())
}

/// The writes of a hashed text that name a file (`file NAME HASH`): their index, name and hash.
fn file_writes(text: &[Vec<u8>]) -> Vec<(usize, String, String)> {
    text.iter()
        .enumerate()
        .filter_map(|(index, write)| {
            let line = std::str::from_utf8(write.strip_prefix(b"file ")?).ok()?.strip_suffix('\n')?;
            let (name, hash) = line.rsplit_once(' ')?;
            Some((index, name.to_string(), hash.to_string()))
        })
        .collect()
}

/// The writes of a hashed text that name an imported package and its content ID
/// (`import PATH ID`), by index.
fn import_writes(text: &[Vec<u8>]) -> impl Iterator<Item = (usize, &str, &str)> {
    text.iter().enumerate().filter_map(|(index, write)| {
        let line = std::str::from_utf8(write.strip_prefix(b"import ")?).ok()?.strip_suffix('\n')?;
        // `import "PATH"` (quoted) is the package's own path, not a dependency.
        let (path, id) = line.split_once(' ').filter(|(path, _)| !path.starts_with('"'))?;
        Some((index, path, id))
    })
}

/// The directory go read a package's files from: the one directory holding every one of its
/// `file` writes (name and hash) among the files go hashed (see [`HashedDirs`]). Two packages
/// may have a file of the same name and content (an empty `doc.go`), not all their files.
fn package_dir(text: &[Vec<u8>], hashed: &HashedDirs) -> Option<PathBuf> {
    // Files embedded from a subdirectory are named with their path below the package's.
    let files: Vec<_> = file_writes(text).into_iter().filter(|(_, name, _)| !name.contains('/')).collect();
    let dirs_of = |(_, name, hash): &(usize, String, String)| hashed.get(&(hash.clone(), name.clone()));
    let mut candidates: Vec<&str> = dirs_of(files.first()?)?.clone();
    for file in &files[1..] {
        let dirs = dirs_of(file)?;
        candidates.retain(|dir| dirs.contains(dir));
    }
    match candidates[..] {
        [dir] => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// The directories of the files go hashed, by the (hash, name) go writes for a file in an
/// action's text.
type HashedDirs<'a> = HashMap<(String, String), Vec<&'a str>>;

/// [`HashedDirs`] of go's file hashes (absolute paths, with their SHA-256 in hex).
fn hashed_dirs<'a>(hashed_files: &[(&'a str, &str)]) -> HashedDirs<'a> {
    let mut out: HashedDirs = HashMap::new();
    for (path, digest) in hashed_files {
        let (Some(digest), Some((dir, name))) =
            (hex::decode(digest).ok().filter(|d| d.len() == 32), path.rsplit_once('/'))
        else {
            continue;
        };
        out.entry((hash_to_string(&digest), name.to_string())).or_default().push(dir);
    }
    out
}

/// The modules replaced by a local directory (`replace example.com/lib => ../lib`), from the
/// main package's build info (`modinfo`): a `dep` line followed by `=>` to a `(devel)` version.
fn modules_replaced_by_directories(compile_text: &[Vec<u8>]) -> HashSet<String> {
    let Some(modinfo) = compile_text.iter().find_map(|w| std::str::from_utf8(w.strip_prefix(b"modinfo ")?).ok()) else {
        return HashSet::new();
    };
    // A quoted Go string: its tabs and newlines are written `\t` and `\n`.
    let lines: Vec<Vec<&str>> = modinfo.split("\\n").map(|line| line.split("\\t").collect()).collect();
    lines
        .windows(2)
        .filter_map(|pair| match (&pair[0][..], &pair[1][..]) {
            (["dep", module, ..], ["=>", _, "(devel)", ..]) => Some(module.to_string()),
            _ => None,
        })
        .collect()
}

/// The packages besides main whose sources are the developer's, from a capturing build's
/// output, each after those it imports (see `ModulePackage`): those of the main module, of the
/// other modules of a go.work, and of modules replaced by a local directory. A package whose
/// recorded compile does not give the build ID go wrote is kept without it (its edits then go
/// through go).
#[allow(clippy::too_many_arguments)]
fn module_packages(
    lines: &[String],
    work: &str,
    main_import_path: &str,
    compile_text: &[Vec<u8>],
    link_text: &[Vec<u8>],
    main_dir: &Path,
    hashed: &HashedDirs,
    package_runs: &HashMap<String, Vec<ToolRun>>,
    gocache: &Path,
) -> Result<Vec<ModulePackage>, &'static str> {
    // go writes `module PATH@` (no version) for the main module's packages.
    let Some(module) = compile_text
        .iter()
        .find_map(|w| std::str::from_utf8(w.strip_prefix(b"module ")?).ok()?.strip_suffix("@\n").map(str::to_string))
    else {
        return Ok(Vec::new());
    };
    let Some(root) = main_dir.ancestors().find(|dir| dir.join("go.mod").is_file()) else { return Ok(Vec::new()) };
    let replaced_by_directories = modules_replaced_by_directories(compile_text);
    // `HASH[build NAME]: "module PATH@VERSION\n"`: no version for a main module (go.work has
    // several); a module replaced by a directory keeps the version it is required at.
    let mut names: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|line| {
            let (name, module_line) = line.strip_prefix("HASH[build ")?.split_once("]: \"module ")?;
            let (path, version) = module_line.strip_suffix("\\n\"")?.rsplit_once('@')?;
            (version.is_empty() || replaced_by_directories.contains(path)).then_some((name, path))
        })
        .filter(|(name, _)| *name != main_import_path)
        .collect();
    names.sort_unstable();
    names.dedup();
    let content_ids: HashMap<&str, &str> = link_text
        .iter()
        .filter_map(|w| std::str::from_utf8(w.strip_prefix(b"packagefile ")?).ok()?.strip_suffix('\n')?.split_once('='))
        .collect();
    // Which work directory compiled which package, when compiling was all go did there.
    let mut compiles: HashMap<&str, (&str, &ToolRun)> = HashMap::new();
    for (work_name, runs) in package_runs {
        let [run] = &runs[..] else { continue };
        if let Some(package) = compiled_package(run, work_name) {
            compiles.insert(package, (work_name.as_str(), run));
        }
    }
    let mut packages = Vec::new();
    for (name, package_module) in names {
        let (Some(text), Some(content_id)) = (hashed_text(lines, &format!("build {name}")), content_ids.get(name))
        else {
            continue;
        };
        let dir = if package_module == module {
            let Some(relative) = name.strip_prefix(module.as_str()).map(|r| r.trim_start_matches('/')) else {
                continue;
            };
            root.join(relative)
        } else {
            // Another module's directory is not the main module's to derive: go read it there.
            let Some(dir) = package_dir(&text, hashed) else { continue };
            dir
        };
        let file_lines = file_writes(&text);
        let editable = dir.is_dir()
            && !text.iter().any(|w| w.starts_with(b"cgo "))
            && file_lines.iter().all(|(_, file, _)| file.ends_with(".go") && !file.contains('/'));
        let mut files = Vec::new();
        let mut signatures = HashMap::new();
        for (index, file, hash) in &file_lines {
            let path = dir.join(file);
            let before = FileStamp::read(&path);
            if editable {
                let bytes = std::fs::read(&path).map_err(|_| "an input is gone")?;
                if hash_to_string(&Sha256::digest(&bytes)) != *hash {
                    return Err("an input changed while go ran");
                }
                let source = std::str::from_utf8(&bytes).map_err(|_| "a Go file that is not UTF-8")?;
                signatures.insert(file.clone(), crate::dev::deps::graph_signature(source));
            }
            files.push((*index, file.clone(), before));
        }
        let compile = compiles.get(name).and_then(|(work_name, run)| {
            let archive = Path::new(work).join(work_name).join("_pkg_.a");
            let id = go_build_id(&archive)?;
            let holds =
                id.split_once('/') == Some((text_id(&text).as_str(), content_id)) && content_id_holds(&archive, &id);
            if !holds {
                tracing::debug!(package = name, "a package's compile does not give go's build ID; not replayed");
                return None;
            }
            let (mut work_file_names, mut work_file_contents) = (Vec::new(), Vec::new());
            for entry in std::fs::read_dir(Path::new(work).join(work_name)).ok()? {
                let entry = entry.ok()?;
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().ok()?.is_file() && file_name != "_pkg_.a" {
                    let content = std::fs::read(entry.path()).ok()?;
                    work_file_contents.push(point_into_cache(&content, work, Some(gocache)).ok()?);
                    work_file_names.push(file_name);
                }
            }
            Some(PackageCompile {
                run: (*run).clone(),
                work: work_name.to_string(),
                work_file_names,
                work_file_contents,
            })
        });
        packages.push(ModulePackage {
            import_path: name.to_string(),
            dir_stamp: FileStamp::read(&dir),
            listing: if editable {
                listing(&dir, false).ok_or("a package directory cannot be read")?
            } else {
                BTreeSet::new()
            },
            dir,
            text,
            content_id: content_id.to_string(),
            editable,
            files,
            signatures,
            compile,
        });
    }
    Ok(in_dependency_order(packages))
}

/// The package a tool run compiles into `$WORK/<work_name>/_pkg_.a`, when it is a plain compile.
fn compiled_package<'a>(run: &'a ToolRun, work_name: &str) -> Option<&'a str> {
    let output = format!("$WORK/{work_name}/_pkg_.a");
    let is_compile = tool_name(&run.tool.to_string_lossy()) == Some("compile")
        && run.args.starts_with(&["-o".to_string(), output])
        && !run.args.iter().any(|a| a.starts_with("-toolexec"));
    let package = run.args.iter().position(|a| a == "-p").and_then(|i| run.args.get(i + 1));
    package.filter(|_| is_compile).map(String::as_str)
}

/// What a `go build -n` would do in one of its work directories: the tools it would run
/// there and the files it would write for them.
#[derive(Default)]
struct DryRunWork {
    runs: Vec<ToolRun>,
    files: HashMap<String, Vec<u8>>,
}

/// A `$WORK/<dir>/<name>` path of a file go writes: the directory and the name.
fn work_file(target: &str) -> Option<(&str, &str)> {
    let (dir, name) = target.strip_prefix("$WORK/")?.split_once('/')?;
    (!name.is_empty() && !name.contains('/')).then_some((dir, name))
}

/// What a `go build -n` run in `go_dir` printed, by work directory (`b001`, `b002`…). go
/// prints a file it would write in one of three forms (`echo -n >`, a one-line `echo`, or a
/// `cat` here-document ending in a line `EOF`); a directory with a file written otherwise is
/// `None`, as it cannot be redone from this.
fn dry_run_work(lines: &[String], go_dir: &Path) -> HashMap<String, Option<DryRunWork>> {
    let mut works: HashMap<String, Option<DryRunWork>> = HashMap::new();
    let mut record = |target: &str, text: Option<Vec<u8>>| {
        let Some((dir, name)) = work_file(target) else { return };
        let work = works.entry(dir.to_string()).or_insert_with(|| Some(DryRunWork::default()));
        match (work.as_mut(), text) {
            (Some(work), Some(text)) => {
                work.files.insert(name.to_string(), text);
            }
            _ => *work = None,
        }
    };
    let mut dir = go_dir.to_path_buf();
    let mut runs: Vec<(String, ToolRun)> = Vec::new();
    let mut lines = lines.iter();
    while let Some(line) = lines.next() {
        if let Some(cd) = line.strip_prefix("cd ") {
            dir = go_dir.join(cd);
        } else if let Some(target) = line.strip_prefix("cat >").and_then(|r| r.strip_suffix(" << 'EOF' # internal")) {
            let mut text = Vec::new();
            let mut closed = false;
            for content in lines.by_ref() {
                if content == "EOF" {
                    closed = true;
                    break;
                }
                text.extend_from_slice(content.as_bytes());
                text.push(b'\n');
            }
            record(target, closed.then_some(text));
        } else if let Some(target) = line.strip_prefix("echo -n > ").and_then(|r| r.strip_suffix(" # internal")) {
            record(target, Some(Vec::new()));
        } else if let Some((text, target)) =
            line.strip_prefix("echo '").and_then(|r| r.strip_suffix(" # internal")?.rsplit_once("' > "))
        {
            record(target, Some(format!("{text}\n").into_bytes()));
        } else if let (Some(work_name), Some(run)) = (work_dir_named(line), go_tool_run(line, &dir)) {
            runs.push((work_name, run));
        }
    }
    for (work_name, run) in runs {
        if let Some(work) = works.entry(work_name).or_insert_with(|| Some(DryRunWork::default())) {
            work.runs.push(run);
        }
    }
    works
}

/// A tool run as go would run it in any build: without the build ID it gives the tool, which
/// kodev works out itself, and the compiler's concurrency (`-c`, which follows the cores go
/// had and does not change what the compiler writes).
fn command_shape(run: &ToolRun) -> (&Path, &Path, &[(String, String)], Vec<&str>) {
    let mut args = Vec::with_capacity(run.args.len());
    let mut words = run.args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "-buildid" => {
                words.next();
            }
            w if w.starts_with("-c=") => {}
            w => args.push(w),
        }
    }
    (&run.tool, &run.dir, &run.env, args)
}

/// The compile a `go build -n` printed for `package` (see `dry_run_work`), its import
/// configuration naming the archives in `archives` (the link's): None unless it is a plain
/// compile of the package's own files and nothing but its import configuration is written.
fn dry_run_compile(
    works: &HashMap<String, Option<DryRunWork>>,
    package: &ModulePackage,
    archives: &HashMap<String, PathBuf>,
) -> Option<PackageCompile> {
    let (work_name, work, run) = works.iter().find_map(|(name, work)| {
        let work = work.as_ref()?;
        let [run] = &work.runs[..] else { return None };
        (compiled_package(run, name) == Some(package.import_path.as_str())).then_some((name, work, run))
    })?;
    let normal = |path: &Path| path.components().collect::<PathBuf>();
    let compiled: BTreeSet<PathBuf> =
        run.args.iter().skip_while(|a| *a != "-pack").skip(1).map(|file| normal(&run.dir.join(file))).collect();
    let expected: BTreeSet<PathBuf> =
        package.files.iter().map(|(_, name, _)| normal(&package.dir.join(name))).collect();
    let config = work.files.get("importcfg").filter(|_| work.files.len() == 1)?;
    let config = with_archives(config, archives);
    let every_archive_known = std::str::from_utf8(&config).ok()?.lines().all(|line| !line.contains("$WORK/"));
    (compiled == expected && every_archive_known).then(|| PackageCompile {
        run: run.clone(),
        work: work_name.clone(),
        work_file_names: vec!["importcfg".to_string()],
        work_file_contents: vec![config],
    })
}

/// `packages` ordered so that each comes after the packages of the list it imports.
fn in_dependency_order(packages: Vec<ModulePackage>) -> Vec<ModulePackage> {
    let index: HashMap<&str, usize> = packages.iter().enumerate().map(|(i, p)| (p.import_path.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = packages
        .iter()
        .map(|p| import_writes(&p.text).filter_map(|(_, path, _)| index.get(path).copied()).collect())
        .collect();
    let (mut order, mut placed) = (Vec::with_capacity(packages.len()), vec![false; packages.len()]);
    fn visit(i: usize, deps: &[Vec<usize>], placed: &mut [bool], order: &mut Vec<usize>) {
        if placed[i] {
            return;
        }
        placed[i] = true;
        for &d in &deps[i] {
            visit(d, deps, placed, order);
        }
        order.push(i);
    }
    for i in 0..packages.len() {
        visit(i, &deps, &mut placed, &mut order);
    }
    let mut slots: Vec<Option<ModulePackage>> = packages.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

impl Recipe {
    /// Read a recipe from a capturing `go build`'s output (`CAPTURE_FLAGS`, `CAPTURE_GODEBUG`),
    /// while its kept work directory still exists; `output` is the binary it built. Says why
    /// when this build cannot be replayed: go did not compile the main package (nothing
    /// changed), the package has assembly or cgo, an input changed while go ran, or the output
    /// is not what kodev expects — including build IDs that kodev's way of computing them does
    /// not give, so that a recipe is only kept when kodev can redo what go did.
    ///
    /// When go took main from its cache (an edit elsewhere left main's inputs as they were),
    /// `previous`, a recipe whose compile of main has the same text, gives the compile go
    /// would have run; without one the reason is `NOT_COMPILED`.
    pub fn capture(
        lines: &[String],
        go_dir: &Path,
        output: &Path,
        previous: Option<&Recipe>,
        settings: &BuildSettings,
    ) -> Result<Recipe, &'static str> {
        let work = lines.iter().find_map(|line| line.strip_prefix("WORK=")).ok_or("no work directory")?;
        let mut dir = go_dir.to_path_buf();
        let (mut compile, mut link) = (None, None);
        // The tools go ran for the other packages, by their directory in $WORK (`b002`…).
        let mut package_runs: HashMap<String, Vec<ToolRun>> = HashMap::new();
        for line in lines {
            if let Some(cd) = line.strip_prefix("cd ") {
                // Relative to go's own directory (`cd .` before the link).
                dir = go_dir.join(cd);
                continue;
            }
            let Some(work_name) = work_dir_named(line) else { continue };
            if work_name != "b001" {
                if let Some(run) = go_tool_run(line, &dir) {
                    package_runs.entry(work_name).or_default().push(run);
                }
                continue;
            }
            let Some(run) = tool_run(line, &dir) else { continue };
            match tool_name(&run.tool.to_string_lossy()) {
                Some("compile") if run.args.starts_with(&["-o".into(), "$WORK/b001/_pkg_.a".into()]) => {
                    compile = Some(run)
                }
                Some("link") if run.args.starts_with(&["-o".into(), "$WORK/b001/exe/a.out".into()]) => link = Some(run),
                // Assembly, cgo, coverage: more than kodev replays.
                Some(_) => return Err("the main package needs more tools than compile and link"),
                None => {}
            }
        }
        let mut link = match (&compile, link) {
            (_, Some(link)) => link,
            (None, None) => return Err(NOT_COMPILED),
            (Some(_), None) => return Err("go did not link"),
        };
        let main_import_path = lines
            .iter()
            .find_map(|l| l.strip_prefix("HASH[link ")?.strip_suffix(']'))
            .ok_or("no link hash")?
            .to_string();
        let compile_text = hashed_text(lines, &format!("build {main_import_path}")).ok_or("no compile hash text")?;
        let main_from_cache = match compile {
            Some(_) => None,
            None => Some(
                previous
                    .filter(|p| p.main_import_path == main_import_path && p.compile_text == compile_text)
                    .ok_or(NOT_COMPILED)?,
            ),
        };
        let compile = compile.or_else(|| main_from_cache.map(|p| p.compile.clone())).ok_or(NOT_COMPILED)?;
        if compile.args.iter().any(|a| a.starts_with("-toolexec")) {
            return Err("-toolexec");
        }
        let link_text = hashed_text(lines, &format!("link {main_import_path}")).ok_or("no link hash text")?;
        // The IDs go gave the tools must be the ones its text hashes to.
        let compile_id = text_id(&compile_text);
        let given = compile
            .args
            .iter()
            .position(|a| a == "-buildid")
            .and_then(|i| compile.args.get(i + 1))
            .ok_or("compile has no -buildid")?;
        let link_id = text_id(&link_text);
        let link_given =
            link.args.iter().find_map(|a| a.strip_prefix("-buildid=")).ok_or("link has no -buildid")?.to_string();
        if *given != format!("{compile_id}/{compile_id}")
            || !link_given.starts_with(&format!("{link_id}/{compile_id}/"))
        {
            return Err("the tools' build IDs are not what the hashed text gives");
        }
        let mut main_files = Vec::new();
        for (index, write) in compile_text.iter().enumerate() {
            let Some(line) = write.strip_prefix(b"file ") else { continue };
            let line = std::str::from_utf8(line).ok().and_then(|l| l.strip_suffix('\n')).ok_or("odd file line")?;
            main_files.push((index, line.rsplit_once(' ').ok_or("odd file line")?.0.to_string()));
        }
        // The main package's directory: where go read its first file (the file hashes name
        // absolute paths; the compile may run elsewhere, with relative ones).
        let hashed_files: Vec<(&str, &str)> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("HASH ")?.rsplit_once(": "))
            .filter(|(path, _)| path.starts_with('/'))
            .collect();
        let hashed = hashed_dirs(&hashed_files);
        let main_dir =
            package_dir(&compile_text, &hashed).ok_or("the main package's directory is not among go's inputs")?;
        // Files embedded from subdirectories: a new file there could join the embed.
        if main_files.iter().any(|(_, name)| name.contains('/')) {
            return Err("files embedded from subdirectories");
        }
        let listing_all = main_files.iter().any(|(_, name)| !name.ends_with(".go"));
        // A binary stamped with a clean git state would be stamped modified after an edit.
        let modinfo = compile_text.iter().find(|w| w.starts_with(b"modinfo "));
        let stamped = modinfo.is_some_and(|m| memchr::memmem::find(m, b"vcs=").is_some());
        if stamped && modinfo.is_some_and(|m| memchr::memmem::find(m, b"vcs=git").is_none()) {
            return Err("stamped by a version control system other than git");
        }
        if stamped && modinfo.is_some_and(|m| memchr::memmem::find(m, b"vcs.modified=true").is_none()) {
            return Err("stamped with a clean git tree, which an edit changes");
        }

        // With a cache program (GOCACHEPROG) go's cache is not files kodev can add to.
        let gocache = lines.iter().find_map(|line| cached_output_dir(line)).filter(|_| cache_is_files());
        let packages = match &gocache {
            Some(gocache) => module_packages(
                lines,
                work,
                &main_import_path,
                &compile_text,
                &link_text,
                &main_dir,
                &hashed,
                &package_runs,
                gocache,
            )?,
            None => Vec::new(),
        };
        let editable: Vec<&ModulePackage> = packages.iter().filter(|p| p.editable).collect();
        let editable_dirs: BTreeSet<&Path> = editable.iter().map(|p| p.dir.as_path()).collect();
        let goroot = compile.tool.ancestors().nth(4).ok_or("no GOROOT")?.to_path_buf();
        let mut followed: BTreeSet<PathBuf> = main_files.iter().map(|(_, name)| main_dir.join(name)).collect();
        followed.extend(editable.iter().flat_map(|p| p.files.iter().map(|(_, name, _)| p.dir.join(name))));
        let mut inputs = Vec::new();
        let mut dirs = BTreeSet::new();
        let hashed_paths: HashSet<PathBuf> = hashed_files.iter().map(|(path, _)| PathBuf::from(path)).collect();
        for (path, digest) in hashed_files {
            let path = PathBuf::from(path);
            if followed.contains(&path) {
                continue;
            }
            let before = FileStamp::read(&path).ok_or("an input is gone")?;
            // Outside GOROOT, the file must still be what go hashed (it may have changed while
            // go ran); GOROOT's sources do not change under a toolchain.
            if !path.starts_with(&goroot)
                && std::fs::read(&path).map(|b| hex::encode(Sha256::digest(b))).ok().as_deref() != Some(digest)
            {
                return Err("an input changed while go ran");
            }
            if let Some(parent) = path.parent().filter(|p| *p != main_dir && !editable_dirs.contains(p)) {
                dirs.insert(parent.to_path_buf());
            }
            inputs.push((path, Some(before)));
        }
        // The package directories whose files can change: not GOROOT's (fixed under a
        // toolchain) nor go's read-only module cache.
        let local_dirs: Vec<&Path> = std::iter::once(main_dir.as_path())
            .chain(editable_dirs.iter().copied())
            .chain(dirs.iter().map(PathBuf::as_path).filter(|dir| {
                !dir.starts_with(&goroot) && std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly())
            }))
            .collect();
        // The go.mod of every module they belong to: its `go` line is in their packages' action
        // IDs, and it can change in place, leaving sources and directories as they were.
        let module_go_mods: BTreeSet<PathBuf> = local_dirs
            .iter()
            .filter_map(|dir| dir.ancestors().map(|d| d.join("go.mod")).find(|go_mod| go_mod.is_file()))
            .collect();
        // The source files go left out of the packages by their build constraints: rewritten
        // in place, one can join its package with the directory as it was.
        let (goos, goarch) = compile_text
            .iter()
            .find_map(|w| std::str::from_utf8(w.strip_prefix(b"goos ")?).ok()?.trim_end().split_once(" goarch "))
            .ok_or("no goos line in main's compile")?;
        let target = GoTarget { goos, goarch, tags: &settings.tags };
        for dir in local_dirs {
            for name in listing(dir, false).ok_or("a package directory cannot be read")? {
                let path = dir.join(&name);
                // go never builds a test file into a binary, nor another system's file.
                if !name.ends_with("_test.go") && !hashed_paths.contains(&path) && !target.excludes_by_name(&name) {
                    let found = FileStamp::read(&path);
                    inputs.push((path, found));
                }
            }
        }
        for dir in dirs {
            let dir_stamp = FileStamp::read(&dir);
            inputs.push((dir, dir_stamp));
        }
        let mut watched: Vec<PathBuf> = vec![
            compile.tool.clone(),
            link.tool.clone(),
            crate::config::go_binary_path(),
            goroot.join("go.env"),
            // go builds with this profile when it appears (`-pgo=auto`).
            main_dir.join("default.pgo"),
        ];
        for dir in main_dir.ancestors() {
            watched.extend(["go.work", "go.work.sum"].map(|name| dir.join(name)));
            if dir.join("go.mod").is_file() {
                watched.extend(["go.mod", "go.sum", "vendor/modules.txt"].map(|name| dir.join(name)));
            }
        }
        // A workspace file GOWORK names, by any name: go reads it instead of a go.work.
        if let Some(workspace) = &settings.workspace_file {
            watched.extend([workspace.clone(), PathBuf::from(format!("{}.sum", workspace.display()))]);
        }
        let others: Vec<PathBuf> = module_go_mods.into_iter().filter(|go_mod| !watched.contains(go_mod)).collect();
        watched.extend(others);
        if let Some(env_file) = go_env_file(process_env) {
            watched.push(env_file);
        }
        if stamped {
            watched.extend(git_state_files(&main_dir).ok_or("no git directory")?);
        }
        inputs.extend(watched.into_iter().map(|path| {
            let found = FileStamp::read(&path);
            (path, found)
        }));

        let (mut work_file_names, mut work_file_contents) = (Vec::new(), Vec::new());
        let unreadable = "go's work directory cannot be read";
        let b001 = Path::new(work).join("b001");
        for entry in std::fs::read_dir(&b001).map_err(|_| unreadable)? {
            let entry = entry.map_err(|_| unreadable)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map_err(|_| unreadable)?.is_file() && name != "_pkg_.a" {
                let content = std::fs::read(entry.path()).map_err(|_| unreadable)?;
                work_file_contents.push(point_into_cache(&content, work, gocache.as_deref())?);
                work_file_names.push(name);
            }
        }
        let archive = match main_from_cache {
            None => b001.join("_pkg_.a"),
            Some(previous) => {
                let cache = gocache.as_deref().ok_or(NOT_COMPILED)?;
                let cached = gocache::output_of(cache, &action_hex_of(&compile_text)).ok_or(NOT_COMPILED)?;
                // This build's link read main from go's cache; a replay links the main it
                // compiles, as after a build that compiled main.
                let cached_name = cached.to_string_lossy().into_owned();
                let main_arg =
                    link.args.iter().rposition(|a| *a == cached_name).ok_or("the link reads main elsewhere")?;
                link.args[main_arg] = "$WORK/b001/_pkg_.a".to_string();
                let linked =
                    work_file_names.iter().position(|name| name == "importcfg.link").ok_or("no link config")?;
                let main_in_work = HashMap::from([(main_import_path.clone(), b001.join("_pkg_.a"))]);
                work_file_contents[linked] = with_archives(&work_file_contents[linked], &main_in_work);
                // go wrote only the link's files: the compile's come from the previous recipe,
                // naming the archives this build's link reads (the same contents, as main's
                // text says, but perhaps other files of go's cache).
                let archives: HashMap<String, PathBuf> = std::str::from_utf8(&work_file_contents[linked])
                    .map_err(|_| "odd link config")?
                    .lines()
                    .filter_map(packagefile)
                    .map(|(package, path)| (package.to_string(), PathBuf::from(path)))
                    .collect();
                for (name, content) in previous.work_file_names.iter().zip(&previous.work_file_contents) {
                    if !work_file_names.contains(name) {
                        work_file_contents.push(with_archives(content, &archives));
                        work_file_names.push(name.clone());
                    }
                }
                cached
            }
        };
        // The content IDs go stamped into the archive and the binary must be what kodev computes.
        let archive_id = go_build_id(&archive).ok_or("the archive has no build ID")?;
        if archive_id.rsplit_once('/').map(|(action, _)| action) != Some(compile_id.as_str())
            || !content_id_holds(&archive, &archive_id)
        {
            return Err("the archive's content ID is not what kodev computes");
        }
        let binary_id = go_build_id(output).ok_or("the binary has no build ID")?;
        let link_prefix = link_given.rsplit_once('/').map(|(prefix, _)| prefix).ok_or("odd link build ID")?;
        if binary_id.rsplit_once('/').map(|(prefix, _)| prefix) != Some(link_prefix)
            || !content_id_holds(output, &binary_id)
        {
            return Err("the binary's content ID is not what kodev computes");
        }
        let main_listing = listing(&main_dir, listing_all).ok_or("the main package's directory cannot be read")?;
        let mut main_signatures = HashMap::new();
        for (_, name) in &main_files {
            if name.ends_with(".go") {
                main_signatures
                    .insert(name.clone(), signature(&main_dir.join(name)).ok_or("a main file cannot be read")?);
            }
        }
        Ok(Recipe {
            format: recipe_format(),
            environment: go_environment(),
            go: crate::config::go_binary_path(),
            main_import_path,
            compile,
            link,
            work_file_names,
            work_file_contents,
            compile_text,
            link_text,
            main_files,
            inputs,
            main_dir,
            main_listing,
            main_signatures,
            listing_all,
            gocache,
            packages,
        })
    }

    /// The sources as they are now (see `Sources`), or None when something go would see
    /// differently has changed since the recipe was captured: a fixed input, a package's list
    /// of files, a file's package clause, imports or directives.
    pub fn current_sources(&self) -> Option<Sources> {
        if self.inputs.iter().any(|(path, before)| FileStamp::read(path) != *before) {
            return None;
        }
        let main_text = self.main_text_now()?;
        let mut edited = Vec::new();
        for (index, package) in self.packages.iter().enumerate().filter(|(_, p)| p.editable) {
            if let Some(text) = package.text_now()? {
                edited.push((index, text));
            }
        }
        Some(Sources { main_text, edited })
    }

    /// The compile text with the main package's files as they are now, if the package is
    /// still the one the recipe compiles (the same names, package clauses, imports and
    /// directives), whatever else changed.
    fn main_text_now(&self) -> Option<Vec<Vec<u8>>> {
        if listing(&self.main_dir, self.listing_all)? != self.main_listing {
            return None;
        }
        let mut text = self.compile_text.clone();
        for (index, name) in &self.main_files {
            let path = self.main_dir.join(name);
            let bytes = std::fs::read(&path).ok()?;
            if name.ends_with(".go") {
                let now = crate::dev::deps::graph_signature(std::str::from_utf8(&bytes).ok()?);
                if self.main_signatures.get(name) != Some(&now) {
                    return None;
                }
            }
            text[*index] = format!("file {name} {}\n", hash_to_string(&Sha256::digest(&bytes))).into_bytes();
        }
        Some(text)
    }

    /// The action IDs (hex), as go computes them now (`dry_run_lines`, a `go build -n` with
    /// `CAPTURE_GODEBUG`), of the packages whose action changed since this recipe was captured.
    pub fn packages_changed_since(&self, dry_run_lines: &[String]) -> Vec<String> {
        self.packages
            .iter()
            .filter_map(|package| {
                let now = package_action(dry_run_lines, &package.import_path)?;
                (now != action_hex_of(&package.text)).then_some(now)
            })
            .collect()
    }

    /// Whether a package of the main module that may be edited has no recorded compile (go
    /// took it from its cache in the builds this recipe comes from): its first edit runs go.
    pub fn lacks_compiles(&self) -> bool {
        self.packages.iter().any(|p| p.editable && p.compile.is_none())
    }

    /// Record the compiles this recipe lacks (see `lacks_compiles`) from a `go build -a -n` of
    /// the same binary run in `go_dir` (`dry_run_lines`): with `-a` go prints the compile it
    /// would run for every package, the same command it runs when it compiles one, and runs
    /// nothing. Taken only when it prints the main package's compile as the one go ran for this
    /// recipe. Returns how many were recorded.
    pub fn record_compiles_from_dry_run(
        &mut self,
        dry_run_lines: &[String],
        go_dir: &Path,
    ) -> Result<usize, &'static str> {
        let works = dry_run_work(dry_run_lines, go_dir);
        let main = works.get("b001").and_then(Option::as_ref).ok_or("the dry run has no main package")?;
        let main_compile = main
            .runs
            .iter()
            .find(|run| compiled_package(run, "b001").is_some())
            .ok_or("the dry run does not compile the main package")?;
        if command_shape(main_compile) != command_shape(&self.compile) {
            return Err("the dry run compiles the main package otherwise");
        }
        let link_config = self
            .work_file_names
            .iter()
            .position(|name| name == "importcfg.link")
            .and_then(|i| std::str::from_utf8(&self.work_file_contents[i]).ok())
            .ok_or("no link configuration")?;
        let archives: HashMap<String, PathBuf> = link_config
            .lines()
            .filter_map(packagefile)
            .filter(|(_, path)| !path.starts_with("$WORK/"))
            .map(|(package, path)| (package.to_string(), PathBuf::from(path)))
            .collect();
        let mut recorded = 0;
        for package in self.packages.iter_mut().filter(|p| p.editable && p.compile.is_none()) {
            match dry_run_compile(&works, package, &archives) {
                Some(compile) => {
                    package.compile = Some(compile);
                    recorded += 1;
                }
                None => tracing::debug!(package = package.import_path, "the dry run gives no compile to record"),
            }
        }
        Ok(recorded)
    }

    /// Take the recorded compiles of `previous` for the packages whose text is the same here
    /// and whose compile this recipe lacks (go took them from its cache this time): what go
    /// compiled for earlier edits keeps serving later ones.
    pub fn adopt_compiles(&mut self, previous: &Recipe) {
        if self.gocache != previous.gocache {
            return;
        }
        for package in self.packages.iter_mut().filter(|p| p.compile.is_none()) {
            let before =
                previous.packages.iter().find(|p| p.import_path == package.import_path && p.text == package.text);
            package.compile = before.and_then(|p| p.compile.clone());
        }
    }

    /// Whether the main package's files are, byte for byte, those `binary` (built by go or
    /// relinked with this recipe) was compiled from: its build ID names the main package's
    /// compile action. Then whatever made the recipe stale lies outside the main package (most
    /// often in a package it imports).
    fn main_package_unchanged(&self, binary: &Path) -> bool {
        let Some(build_id) = go_build_id(binary) else { return false };
        let Some(built_from) = build_id.split('/').nth(1) else { return false };
        self.main_text_now().is_some_and(|text| text_id(&text) == built_from)
    }
}

impl ModulePackage {
    /// The package's compile text with its files as they are now: None when it is no longer
    /// the package the recipe knows (another list of files, or a file's package clause, imports
    /// or directives changed); Some(None) when its files are those go hashed.
    fn text_now(&self) -> Option<Option<Vec<Vec<u8>>>> {
        if FileStamp::read(&self.dir) != self.dir_stamp && listing(&self.dir, false)? != self.listing {
            return None;
        }
        let mut text = None::<Vec<Vec<u8>>>;
        for (index, name, before) in &self.files {
            let path = self.dir.join(name);
            if FileStamp::read(&path) == *before {
                continue;
            }
            let bytes = std::fs::read(&path).ok()?;
            let now = crate::dev::deps::graph_signature(std::str::from_utf8(&bytes).ok()?);
            if self.signatures.get(name) != Some(&now) {
                return None;
            }
            let write = format!("file {name} {}\n", hash_to_string(&Sha256::digest(&bytes))).into_bytes();
            if write != self.text[*index] {
                text.get_or_insert_with(|| self.text.clone())[*index] = write;
            }
        }
        Some(text)
    }
}

/// The main module's sources as a recipe sees them now: the main package's compile text, and
/// the texts of the other packages whose files changed since the recipe was captured.
pub struct Sources {
    main_text: Vec<Vec<u8>>,
    /// (index in the recipe's packages, the package's text with its files as they are now).
    edited: Vec<(usize, Vec<Vec<u8>>)>,
}

impl Sources {
    /// Names these sources: the same sources, the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for text in std::iter::once(&self.main_text).chain(self.edited.iter().map(|(_, text)| text)) {
            for write in text {
                hasher.update(write);
            }
            hasher.update(b"\0");
        }
        hash_to_string(&hasher.finalize())
    }
}

/// What the recipe of a binary says of the sources as they are now.
pub enum Fit {
    /// It applies: the recipe, and the sources as they are.
    Usable(Arc<Recipe>, Sources),
    /// It no longer applies, and the main package is as it was: the edit is elsewhere (a
    /// package main imports, most often) and cannot be rebuilt without go (a package whose
    /// compile the recipe does not hold, a new import…). go may well take the main package from
    /// its cache, so a capturing build would record nothing. The recipe that no longer applies
    /// comes along: it tells which packages go compiled again (see `Recapture`), and holds
    /// main's compile for a capturing build that takes main from go's cache (see `capture`).
    EditedElsewhere(Arc<Recipe>),
    /// No recipe, or the main package changed too.
    Unknown,
}

/// Bumped when a saved recipe's meaning changes (3: the go.mod of every module its packages come
/// from, and the source files go left out of the packages, are inputs).
const RECIPE_FORMAT: u32 = 4;

fn recipe_format() -> String {
    format!("{RECIPE_FORMAT} kodev {}", env!("CARGO_PKG_VERSION"))
}

/// The variables of kodev's environment that can change what go builds, or where it finds its
/// tools and settings: a recipe saved by one process applies in another only if they agree.
fn go_environment() -> Vec<(String, String)> {
    build_environment(std::env::vars_os())
}

/// Of `vars`, those that count for a recipe (see `go_environment`), sorted.
fn build_environment(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Vec<(String, String)> {
    // Not PATH: it often differs between shells, and what it means to a build (which go runs)
    // is compared on its own.
    const NAMED: [&str; 9] =
        ["CC", "CXX", "FC", "AR", "PKG_CONFIG", "GCCGO", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"];
    // Settings of the Go runtime, which tune how go and its tools run, never what they build.
    // (GODEBUG still counts: some of its settings reach the go command's own decisions.)
    const RUNTIME_ONLY: [&str; 4] = ["GOGC", "GOMAXPROCS", "GOMEMLIMIT", "GOTRACEBACK"];
    let mut found: Vec<(String, String)> = vars
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            let counts = (name.starts_with("GO") && !RUNTIME_ONLY.contains(&name.as_str()))
                || name.starts_with("CGO_")
                || NAMED.contains(&name.as_str());
            counts.then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect();
    found.sort();
    found
}

/// go's per-user settings file (`go env -w`), whose changes reach every build, in the
/// environment `lookup` reads (which gives no empty values: go takes those as unset).
pub fn go_env_file(lookup: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(file) = lookup("GOENV") {
        return (file != "off").then(|| PathBuf::from(file));
    }
    // Where Go's os.UserConfigDir says.
    let config = if cfg!(target_os = "macos") {
        PathBuf::from(lookup("HOME")?).join("Library/Application Support")
    } else {
        match lookup("XDG_CONFIG_HOME") {
            Some(dir) => Some(PathBuf::from(dir)).filter(|d| d.is_absolute())?,
            None => PathBuf::from(lookup("HOME")?).join(".config"),
        }
    };
    Some(config.join("go").join("env"))
}

/// A setting of go's per-user settings file, read as go reads it: `NAME=value` lines, the last
/// one of a name winning, anything else ignored.
pub fn go_env_file_setting(lookup: impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(go_env_file(lookup)?).ok()?;
    text.split('\n')
        .rev()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_uppercase()))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// kodev's own environment as go reads it: an empty value is unset.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// What a relink did not get done: the build then runs go.
#[derive(Debug)]
pub struct RelinkFailed {
    pub why: String,
    /// The compiler refused the sources (a mistake in the edit): the recipe still holds, and
    /// go is run only to report the errors its usual way.
    pub compile_error: bool,
}

impl std::fmt::Display for RelinkFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

pub fn failed(what: impl std::fmt::Display) -> RelinkFailed {
    RelinkFailed { why: what.to_string(), compile_error: false }
}

/// Run a tool go ran, in `work` for `$WORK`; returns what it printed on its standard output.
async fn run_tool(run: &ToolRun, work: &Path, env: &[(String, String)]) -> Result<Vec<u8>, RelinkFailed> {
    let args: Vec<String> = run.args.iter().map(|a| a.replace("$WORK", &work.to_string_lossy())).collect();
    let output = tokio::process::Command::new(&run.tool)
        .args(&args)
        .current_dir(&run.dir)
        .envs(env.iter().cloned())
        .envs(run.env.iter().cloned())
        .env("GODEBUG", crate::pipeline::gobuild::go_godebug(env))
        .env("PWD", &run.dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {}: {e}", run.tool.display())))?;
    if !output.status.success() {
        return Err(RelinkFailed {
            // The compiler reports on stdout, the linker on stderr.
            why: format!(
                "{} failed: {}{}",
                run.tool.display(),
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            compile_error: tool_name(&run.tool.to_string_lossy()) == Some("compile"),
        });
    }
    Ok(output.stdout)
}

/// An ELF section's offset and size, by name; and whether the file is little-endian. None for
/// other files.
fn elf_section(file: &File, wanted: &[u8]) -> Option<(u64, u64, bool)> {
    let mut ident = [0u8; 64];
    file.read_exact_at(&mut ident, 0).ok()?;
    if ident[..4] != *b"\x7fELF" {
        return None;
    }
    let (wide, little) = (ident[4] == 2, ident[5] == 1);
    let read = |bytes: &[u8]| -> u64 {
        let mut value = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            let shift = if little { i } else { bytes.len() - 1 - i } * 8;
            value |= u64::from(*b) << shift;
        }
        value
    };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (read(&ident[0x28..0x30]), read(&ident[0x3a..0x3c]), read(&ident[0x3c..0x3e]), read(&ident[0x3e..0x40]))
    } else {
        (read(&ident[0x20..0x24]), read(&ident[0x2e..0x30]), read(&ident[0x30..0x32]), read(&ident[0x32..0x34]))
    };
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    file.read_exact_at(&mut table, shoff).ok()?;
    let section = |i: u64| -> Option<(u64, u64, u64)> {
        let entry = table.get((i * shentsize) as usize..((i + 1) * shentsize) as usize)?;
        let name = read(&entry[0..4]);
        Some(if wide {
            (name, read(&entry[0x18..0x20]), read(&entry[0x20..0x28]))
        } else {
            (name, read(&entry[0x10..0x14]), read(&entry[0x14..0x18]))
        })
    };
    let (_, names_at, names_len) = section(shstrndx)?;
    let mut names = vec![0u8; names_len as usize];
    file.read_exact_at(&mut names, names_at).ok()?;
    (0..shnum).filter_map(section).find_map(|(name, offset, size)| {
        let at = name as usize;
        (names.get(at..at + wanted.len()) == Some(wanted)).then_some((offset, size, little))
    })
}

/// Where an ELF file's GNU build ID note's ID stands (after its 16-byte header), which go
/// hashes as zeros; None for other files.
fn host_build_id(file: &File) -> Option<Range<u64>> {
    let (offset, size, _) = elf_section(file, b".note.gnu.build-id\0")?;
    (size >= 16).then(|| offset + 16..offset + size)
}

/// The go build ID of a binary (its `.note.go.buildid`) or of a package archive (the
/// `build id "…"` line of its header). It names the file's content: the same ID, the same bytes.
pub fn go_build_id(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    if let Some((offset, size, little)) = elf_section(&file, b".note.go.buildid\0") {
        let mut note = vec![0u8; size.min(4096) as usize];
        file.read_exact_at(&mut note, offset).ok()?;
        let field = |at: usize| -> Option<usize> {
            let bytes: [u8; 4] = note.get(at..at + 4)?.try_into().ok()?;
            Some(if little { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) } as usize)
        };
        let (name_len, id_len) = (field(0)?, field(4)?);
        if name_len != 4 || note.get(12..16) != Some(b"Go\0\0") {
            return None;
        }
        return String::from_utf8(note.get(16..16 + id_len)?.to_vec()).ok();
    }
    let mut head = vec![0u8; 4096];
    let n = file.read_at(&mut head, 0).ok()?;
    let head = &head[..n];
    const MARK: &[u8] = b"\nbuild id \"";
    let from = memchr::memmem::find(head, MARK)? + MARK.len();
    let len = memchr::memchr(b'"', &head[from..])?;
    String::from_utf8(head[from..from + len].to_vec()).ok()
}

/// Whether the last part of a file's build ID `id` is the hash go computes for it: the file's
/// SHA-256 with `id` (and a GNU build ID) read as zeros.
fn content_id_holds(path: &Path, id: &str) -> bool {
    let Some((_, content)) = id.rsplit_once('/') else { return false };
    File::open(path)
        .and_then(|file| find_and_hash(&file, id.as_bytes()))
        .is_ok_and(|(_, hash)| hash_to_string(&hash) == content)
}

/// go's `FindAndHash`: where `id` occurs in the file (left to right, not overlapping), and the
/// SHA-256 of the file with each occurrence, and its GNU build ID, read as zeros.
fn find_and_hash(file: &File, id: &[u8]) -> io::Result<(Vec<u64>, [u8; 32])> {
    const BLOCK: usize = 1 << 20;
    let len = file.metadata()?.len();
    let blanked = host_build_id(file);
    let finder = memchr::memmem::Finder::new(id);
    let zeros = vec![0u8; id.len()];
    let mut hasher = Sha256::new();
    let mut offsets = Vec::new();
    // buf[..carried] holds the end of the previous block, not hashed yet: an occurrence may
    // start there and end in the next block.
    let mut buf = vec![0u8; BLOCK + id.len()];
    let (mut carried, mut buf_offset, mut read) = (0usize, 0u64, 0u64);
    loop {
        let n = (len - read).min((buf.len() - carried) as u64) as usize;
        file.read_exact_at(&mut buf[carried..carried + n], read)?;
        if let Some(blank) = &blanked {
            let (from, to) = (blank.start.max(read), blank.end.min(read + n as u64));
            if from < to {
                buf[carried + (from - read) as usize..carried + (to - read) as usize].fill(0);
            }
        }
        read += n as u64;
        let filled = carried + n;
        let mut start = 0;
        while let Some(i) = finder.find(&buf[start..filled]) {
            hasher.update(&buf[start..start + i]);
            hasher.update(&zeros);
            offsets.push(buf_offset + (start + i) as u64);
            start += i + id.len();
        }
        if read == len {
            hasher.update(&buf[start..filled]);
            break;
        }
        let keep_from = start.max(filled.saturating_sub(id.len() - 1));
        hasher.update(&buf[start..keep_from]);
        buf.copy_within(keep_from..filled, 0);
        carried = filled - keep_from;
        buf_offset += keep_from as u64;
    }
    Ok((offsets, hasher.finalize().into()))
}

/// What go does after a tool writes its output: hash it with the placeholder ID read as zeros,
/// and write `placeholder` with its last part replaced by that hash at every place it stands.
/// Returns the new ID, and where it was written.
fn stamp_content_id(path: &Path, placeholder: &str) -> io::Result<(String, Vec<u64>)> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let (offsets, hash) = find_and_hash(&file, placeholder.as_bytes())?;
    let kept = placeholder.rfind('/').unwrap_or(0);
    let id = format!("{}/{}", &placeholder[..kept], hash_to_string(&hash));
    for &at in &offsets {
        file.write_all_at(id.as_bytes(), at)?;
    }
    Ok((id, offsets))
}

/// What the main module's packages come to for some sources (see `Recipe::resolve`).
struct Resolved {
    /// The packages whose content ID changed, with their new one.
    contents: HashMap<String, String>,
    /// The packages whose action changed, with their archive in go's cache.
    archives: HashMap<String, PathBuf>,
    /// The main package's compile text, with the new content IDs of what it imports.
    main_text: Vec<Vec<u8>>,
    /// The packages of `contents` whose export data is what it was when the recipe was
    /// captured: what imports them compiles to what it did then (see `earlier_compile`).
    exports_same: HashSet<String>,
}

/// The members of a package archive (`!<arch>`), by name.
fn archive_members(archive: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let mut rest = archive.strip_prefix(b"!<arch>\n")?;
    let mut members = Vec::new();
    while !rest.is_empty() {
        let (header, body) = (rest.get(..60)?, &rest[60..]);
        let name = std::str::from_utf8(&header[..16]).ok()?.trim_end();
        let size: usize = std::str::from_utf8(&header[48..58]).ok()?.trim_end().parse().ok()?;
        members.push((name, body.get(..size)?));
        rest = body.get(size + (size & 1)..).unwrap_or_default();
    }
    Some(members)
}

/// What a compile of an importing package reads of a package archive: its `__.PKGDEF` member
/// (the export data and its fingerprint), without the `build id` line, which names the archive
/// rather than what it exports.
fn export_data(archive: &[u8]) -> Option<Vec<u8>> {
    let (_, pkgdef) = archive_members(archive)?.into_iter().find(|(name, _)| *name == "__.PKGDEF")?;
    let first = memchr::memchr(b'\n', pkgdef)? + 1;
    let rest = &pkgdef[first..];
    let skip = if rest.starts_with(b"build id \"") { memchr::memchr(b'\n', rest)? + 1 } else { 0 };
    Some([&pkgdef[..first], &rest[skip..]].concat())
}

/// The archive go's cache holds for compile text `text`, when its build ID names that text.
fn archive_of(gocache: &Path, text: &[Vec<u8>]) -> Option<(PathBuf, String)> {
    let archive = gocache::output_of(gocache, &action_hex_of(text))?;
    let id =
        go_build_id(&archive).filter(|id| id.split_once('/').is_some_and(|(action, _)| action == text_id(text)))?;
    Some((archive, id))
}

/// Whether the package compiled from `baseline` (in go's cache) exports what `archive` does.
fn exports_as_before(gocache: &Path, baseline: &[Vec<u8>], archive: &Path) -> bool {
    let Some((before, _)) = archive_of(gocache, baseline) else { return false };
    let (Ok(before), Ok(now)) = (std::fs::read(before), std::fs::read(archive)) else { return false };
    export_data(&before).is_some_and(|before| export_data(&now).as_ref() == Some(&before))
}

/// Whether compile text `text` is `baseline` but for the content IDs of imports in
/// `exports_same`: then the compiler reads the same inputs and writes the same archive, but
/// for the build ID (go's action ID changes with those content IDs, and go compiles again).
fn only_same_exports_changed(text: &[Vec<u8>], baseline: &[Vec<u8>], exports_same: &HashSet<String>) -> bool {
    if text.len() != baseline.len() || exports_same.is_empty() {
        return false;
    }
    let same_exports: HashSet<usize> =
        import_writes(baseline).filter(|(_, path, _)| exports_same.contains(*path)).map(|(i, _, _)| i).collect();
    text.iter().zip(baseline).enumerate().all(|(i, (now, then))| now == then || same_exports.contains(&i))
}

/// A compile's outcome taken from an earlier compile (see `earlier_compile`).
struct EarlierCompile {
    build_id: String,
    archive: Vec<u8>,
    /// What the compiler printed, as go's cache keeps it beside the archive.
    printed: Vec<u8>,
}

/// The archive the compile of `text` gives, from the earlier compile of `baseline` in go's
/// cache when only imports that export the same changed between them: that archive with the
/// build ID `action/content` of `text` (its content ID is unchanged: go's content ID reads the
/// build ID as zeros). Only an archive of a plain compile qualifies (no assembly packed in).
fn earlier_compile(
    gocache: &Path,
    text: &[Vec<u8>],
    baseline: &[Vec<u8>],
    exports_same: &HashSet<String>,
) -> Option<EarlierCompile> {
    if !only_same_exports_changed(text, baseline, exports_same) {
        return None;
    }
    let (archive, id) = archive_of(gocache, baseline)?;
    let bytes = std::fs::read(archive).ok()?;
    let names: Vec<&str> = archive_members(&bytes)?.into_iter().map(|(name, _)| name).collect();
    if names != ["__.PKGDEF", "_go_.o"] {
        return None;
    }
    let (_, content) = id.split_once('/')?;
    let new_id = format!("{}/{content}", text_id(text));
    let places: Vec<usize> = memchr::memmem::find_iter(&bytes, id.as_bytes()).collect();
    if places.is_empty() || new_id.len() != id.len() {
        return None;
    }
    let mut archive = bytes;
    for at in places {
        archive[at..at + id.len()].copy_from_slice(new_id.as_bytes());
    }
    Some(EarlierCompile { build_id: new_id, archive, printed: earlier_stdout(gocache, baseline) })
}

/// `text` with the content IDs of the packages in `contents` replaced in its `import` writes.
fn with_imports(mut text: Vec<Vec<u8>>, contents: &HashMap<String, String>) -> Vec<Vec<u8>> {
    let replaced: Vec<(usize, Vec<u8>)> = import_writes(&text)
        .filter_map(|(index, path, _)| Some((index, format!("import {path} {}\n", contents.get(path)?).into_bytes())))
        .collect();
    for (index, write) in replaced {
        text[index] = write;
    }
    text
}

/// An import configuration with the archives of the packages in `archives` in place of the
/// ones it names.
fn with_archives(config: &[u8], archives: &HashMap<String, PathBuf>) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(config) else { return config.to_vec() };
    if archives.is_empty() {
        return config.to_vec();
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match packagefile(line.trim_end_matches('\n')).and_then(|(package, _)| Some((package, archives.get(package)?)))
        {
            Some((package, archive)) => out.push_str(&format!("packagefile {package}={}\n", archive.display())),
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// Write a work directory's files for a tool, with the archives in `archives` in place.
fn write_work_files(
    dir: &Path,
    names: &[String],
    contents: &[Vec<u8>],
    archives: &HashMap<String, PathBuf>,
) -> Result<(), RelinkFailed> {
    std::fs::create_dir_all(dir).map_err(failed)?;
    for (name, bytes) in names.iter().zip(contents) {
        std::fs::write(dir.join(name), with_archives(bytes, archives)).map_err(failed)?;
    }
    Ok(())
}

/// Record what a package of the main module came to: its archive, and its content ID when
/// that changed.
fn settle(
    package: &ModulePackage,
    id: &str,
    archive: PathBuf,
    contents: &mut HashMap<String, String>,
    archives: &mut HashMap<String, PathBuf>,
) -> Result<(), RelinkFailed> {
    let content = id.rsplit_once('/').map(|(_, c)| c.to_string()).ok_or_else(|| failed("odd build ID"))?;
    archives.insert(package.import_path.clone(), archive);
    if content != package.content_id {
        contents.insert(package.import_path.clone(), content);
    }
    Ok(())
}

/// Keep a compile's archive in go's cache as go does, with what the compiler printed beside it
/// (usually nothing). Returns the archive's path there.
fn keep_compile(gocache: &Path, action_hex: &str, archive: &[u8], printed: &[u8]) -> Result<PathBuf, RelinkFailed> {
    let kept = gocache::put(gocache, action_hex, archive).map_err(failed)?;
    if let Some(key) = gocache::subkey(action_hex, "stdout") {
        gocache::put(gocache, &key, printed).map_err(failed)?;
    }
    Ok(kept)
}

/// What the compiler printed when it compiled `text`, as go's cache keeps it.
fn earlier_stdout(gocache: &Path, text: &[Vec<u8>]) -> Vec<u8> {
    gocache::subkey(&action_hex_of(text), "stdout")
        .and_then(|key| gocache::output_of(gocache, &key))
        .and_then(|path| std::fs::read(path).ok())
        .unwrap_or_default()
}

/// Note a package whose archive (build ID `id`) has a new content but exports what the archive
/// the recipe captured does.
fn note_exports(gocache: &Path, package: &ModulePackage, id: &str, archive: &Path, exports_same: &mut HashSet<String>) {
    let changed = id.rsplit_once('/').is_some_and(|(_, content)| content != package.content_id);
    if changed && exports_as_before(gocache, &package.text, archive) {
        exports_same.insert(package.import_path.clone());
    }
}

/// Run go's recorded compile `run` for action `action` (`-buildid action/action`), then stamp
/// the content ID into its `archive` as go does. Returns the build ID and what the compiler
/// printed.
async fn compile_as(
    run: &ToolRun,
    action: &str,
    archive: &Path,
    scratch: &Path,
    env: &[(String, String)],
) -> Result<(String, Vec<u8>), RelinkFailed> {
    let mut run = run.clone();
    let at = run.args.iter().position(|a| a == "-buildid").ok_or_else(|| failed("no -buildid"))?;
    run.args[at + 1] = format!("{action}/{action}");
    let printed = run_tool(&run, scratch, env).await?;
    let (id, _) = stamp_content_id(archive, &run.args[at + 1]).map_err(failed)?;
    Ok((id, printed))
}

/// Compile a package of the main module with go's recorded command for `text` (whose action
/// ID is `action_hex`, `action` as go writes it), against the archives of the packages in
/// `archives`, and keep it in go's cache. Returns its build ID and its archive there.
#[allow(clippy::too_many_arguments)]
async fn compile_package(
    package: &ModulePackage,
    text: &[Vec<u8>],
    (action_hex, action): (&str, &str),
    gocache: &Path,
    scratch: &Path,
    env: &[(String, String)],
    archives: &HashMap<String, PathBuf>,
) -> Result<(String, PathBuf), RelinkFailed> {
    let recorded =
        package.compile.as_ref().ok_or_else(|| failed(format!("no recorded compile of {}", package.import_path)))?;
    let started = std::time::Instant::now();
    // A work directory of its own: compiles recorded from different go runs may name the same one.
    let root = scratch.join(format!("pkg-{}", &action_hex[..16]));
    let work = root.join(&recorded.work);
    write_work_files(&work, &recorded.work_file_names, &recorded.work_file_contents, archives)?;
    let built = work.join("_pkg_.a");
    let (id, printed) = compile_as(&recorded.run, action, &built, &root, env).await?;
    // A file saved again while the compiler read it would put other sources under this action
    // ID in go's cache, for every later build: the files must still be those the text hashes.
    for (_, name, hash) in file_writes(text) {
        let now = std::fs::read(package.dir.join(&name)).map(|bytes| hash_to_string(&Sha256::digest(bytes)));
        if now.ok().as_deref() != Some(hash.as_str()) {
            return Err(failed(format!("{name} changed while it was compiled")));
        }
    }
    let bytes = std::fs::read(&built).map_err(failed)?;
    let archive = keep_compile(gocache, action_hex, &bytes, &printed)?;
    tracing::debug!(package = package.import_path, ms = started.elapsed().as_millis() as u64, "package compiled");
    Ok((id, archive))
}

impl Recipe {
    /// The link's action ID when the main package's archive has build ID `main_id`
    /// (`action/content`) and the packages in `contents` have those content IDs.
    fn link_action(&self, main_id: &str, contents: &HashMap<String, String>) -> Option<String> {
        let (_, content) = main_id.split_once('/')?;
        let main_file_line = format!("packagefile {}=", self.main_import_path);
        let link_text: Vec<Vec<u8>> = self
            .link_text
            .iter()
            .map(|write| {
                let package = write
                    .strip_prefix(b"packagefile ")
                    .and_then(|rest| std::str::from_utf8(rest).ok()?.split_once('=').map(|(package, _)| package));
                if write.starts_with(main_file_line.as_bytes()) {
                    format!("{main_file_line}{content}\n").into_bytes()
                } else if write.starts_with(b"packagemain ") {
                    format!("packagemain {main_id}\n").into_bytes()
                } else if let Some(new) = package.and_then(|package| Some((package, contents.get(package)?))) {
                    format!("packagefile {}={}\n", new.0, new.1).into_bytes()
                } else {
                    write.clone()
                }
            })
            .collect();
        Some(text_id(&link_text))
    }

    /// Work out what the main module's packages come to for `sources`, dependencies first: a
    /// package whose action ID changes (its files, or the content of a package it imports) is
    /// taken from go's cache when go (or kodev) compiled it before, and otherwise compiled with
    /// go's recorded command into `scratch` and kept in go's cache the way go keeps it. Packages
    /// whose imports are settled are compiled side by side, as go does, up to one per core.
    /// Without `scratch`, a package that would need compiling is an error (`already_built`).
    async fn resolve(
        &self,
        sources: &Sources,
        scratch: Option<(&Path, &[(String, String)])>,
    ) -> Result<Resolved, RelinkFailed> {
        let (mut contents, mut archives, mut exports_same) = (HashMap::new(), HashMap::new(), HashSet::new());
        if sources.edited.is_empty() {
            return Ok(Resolved { contents, archives, main_text: sources.main_text.clone(), exports_same });
        }
        let gocache = self.gocache.as_deref().ok_or_else(|| failed("go's cache is not known"))?;
        let position: HashMap<&str, usize> =
            self.packages.iter().enumerate().map(|(i, p)| (p.import_path.as_str(), i)).collect();
        let imports: Vec<Vec<usize>> = self
            .packages
            .iter()
            .map(|p| import_writes(&p.text).filter_map(|(_, path, _)| position.get(path).copied()).collect())
            .collect();
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut settled = vec![false; self.packages.len()];
        loop {
            let ready: Vec<usize> =
                (0..self.packages.len()).filter(|&i| !settled[i] && imports[i].iter().all(|&d| settled[d])).collect();
            if ready.is_empty() {
                break;
            }
            let mut to_compile = Vec::new();
            for index in ready {
                settled[index] = true;
                let package = &self.packages[index];
                let text = sources.edited.iter().find(|(i, _)| *i == index).map_or(&package.text, |(_, text)| text);
                let text = with_imports(text.clone(), &contents);
                if text == package.text {
                    continue;
                }
                let action_hex = action_hex_of(&text);
                let action = text_id(&text);
                let cached = gocache::output_of(gocache, &action_hex)
                    .and_then(|archive| Some((go_build_id(&archive)?, archive)))
                    .filter(|(id, _)| id.split_once('/').is_some_and(|(a, _)| a == action));
                if let Some((id, archive)) = cached {
                    note_exports(gocache, package, &id, &archive, &mut exports_same);
                    settle(package, &id, archive, &mut contents, &mut archives)?;
                } else if let Some(earlier) = earlier_compile(gocache, &text, &package.text, &exports_same) {
                    let archive = match scratch {
                        Some(_) => keep_compile(gocache, &action_hex, &earlier.archive, &earlier.printed)?,
                        None => archive_of(gocache, &package.text).map(|(archive, _)| archive).unwrap_or_default(),
                    };
                    tracing::debug!(
                        package = package.import_path,
                        "package taken from its earlier compile: what it imports exports the same"
                    );
                    settle(package, &earlier.build_id, archive, &mut contents, &mut archives)?;
                } else if scratch.is_some() {
                    to_compile.push((package, text, action_hex, action));
                } else {
                    return Err(failed(format!("{} would be compiled", package.import_path)));
                }
            }
            let Some((scratch, env)) = scratch else { continue };
            let archives_now = &archives;
            // Boxed: the compiles borrow from this frame, which a `Send` future cannot name otherwise.
            let compiles: Vec<futures::future::BoxFuture<'_, _>> = to_compile
                .into_iter()
                .map(|(package, text, action_hex, action)| {
                    async move {
                        let ids = (action_hex.as_str(), action.as_str());
                        let built = compile_package(package, &text, ids, gocache, scratch, env, archives_now).await;
                        built.map(|(id, archive)| (package, id, archive))
                    }
                    .boxed()
                })
                .collect();
            let compiled: Vec<_> = futures::stream::iter(compiles).buffer_unordered(parallel).collect().await;
            for result in compiled {
                let (package, id, archive) = result?;
                note_exports(gocache, package, &id, &archive, &mut exports_same);
                settle(package, &id, archive, &mut contents, &mut archives)?;
            }
        }
        let main_text = with_imports(sources.main_text.clone(), &contents);
        Ok(Resolved { contents, archives, main_text, exports_same })
    }

    /// Whether `output` is already the binary this recipe gives for `sources`, the way go
    /// tells a binary is up to date: its build ID names the same main package action and the
    /// link action that follows from it.
    pub async fn already_built(&self, sources: &Sources, output: &Path) -> bool {
        let Some(id) = go_build_id(output) else { return false };
        let parts: Vec<&str> = id.split('/').collect();
        let [link_action, main_action, main_content, _] = parts[..] else { return false };
        let Ok(resolved) = self.resolve(sources, None).await else { return false };
        main_action == text_id(&resolved.main_text)
            && self.link_action(&format!("{main_action}/{main_content}"), &resolved.contents).as_deref()
                == Some(link_action)
    }

    /// Rebuild `output` (replaced atomically) for `sources` (`current_sources`) the way go
    /// would: the edited packages and those whose action IDs change with them (see
    /// `resolve`), the main package, and the link. `scratch` holds the work directory; `env`
    /// is the build's environment on top of kodev's. `linking` hears when the linker starts,
    /// `linked` of the linker's output as the linker closes it. Returns the sources'
    /// fingerprint.
    pub async fn relink(
        &self,
        sources: &Sources,
        output: &Path,
        scratch: &Path,
        env: &[(String, String)],
        linking: Option<tokio::sync::oneshot::Sender<()>>,
        linked: Option<tokio::sync::oneshot::Sender<crate::pipeline::gobuild::LinkerOutput>>,
    ) -> Result<String, RelinkFailed> {
        let started = std::time::Instant::now();
        let resolved = self.resolve(sources, Some((scratch, env))).await?;
        let b001 = scratch.join("b001");
        write_work_files(&b001, &self.work_file_names, &self.work_file_contents, &resolved.archives)?;
        std::fs::create_dir_all(b001.join("exe")).map_err(failed)?;
        let action = text_id(&resolved.main_text);
        let archive = b001.join("_pkg_.a");
        // Main's compile is in go's cache when only its imports' archives changed, not their
        // content (go compiled it before with these inputs).
        let action_hex = action_hex_of(&resolved.main_text);
        let cached = self.gocache.as_deref().and_then(|cache| gocache::output_of(cache, &action_hex));
        let earlier = || {
            let gocache = self.gocache.as_deref()?;
            earlier_compile(gocache, &resolved.main_text, &sources.main_text, &resolved.exports_same)
        };
        // What go keeps of a compile of main this build made: its archive and what go printed.
        let mut to_keep = None;
        let in_cache = cached.is_some_and(|cached| std::fs::copy(cached, &archive).is_ok());
        let (main_id, from) = match (in_cache, if in_cache { None } else { earlier() }) {
            (true, _) => {
                let id = go_build_id(&archive)
                    .filter(|id| id.split_once('/').is_some_and(|(a, _)| a == action))
                    .ok_or_else(|| failed("go's cached main package has another build ID"))?;
                (id, "go's cache")
            }
            (false, Some(earlier)) => {
                std::fs::write(&archive, &earlier.archive).map_err(failed)?;
                to_keep = Some((earlier.archive, earlier.printed));
                (earlier.build_id, "its earlier compile: what it imports exports the same")
            }
            (false, None) => {
                let (id, printed) = compile_as(&self.compile, &action, &archive, scratch, env).await?;
                to_keep = Some((std::fs::read(&archive).map_err(failed)?, printed));
                (id, "compiled")
            }
        };
        tracing::debug!(ms = started.elapsed().as_millis() as u64, from, "main package ready");
        if let Some(linking) = linking {
            let _ = linking.send(());
        }

        let link_action = self.link_action(&main_id, &resolved.contents).ok_or_else(|| failed("bad build ID"))?;
        let placeholder = format!("{link_action}/{main_id}/{link_action}");
        let mut link = self.link.clone();
        for arg in &mut link.args {
            if arg.starts_with("-buildid=") {
                *arg = format!("-buildid={placeholder}");
            }
        }
        // go keeps main's compile in its cache too: a later edit of a package main imports that
        // exports the same then takes main from it (see `earlier_compile`). Kept while the
        // linker runs.
        let keeping = to_keep.zip(self.gocache.clone()).map(|((bytes, printed), gocache)| {
            tokio::task::spawn_blocking(move || keep_compile(&gocache, &action_hex, &bytes, &printed))
        });
        run_tool(&link, scratch, env).await?;
        if let Some(keeping) = keeping {
            if let Err(error) = keeping.await.map_err(failed).and_then(|kept| kept) {
                tracing::debug!(%error, "main's compile not kept in go's cache");
            }
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "linked");
        let linker_output = b001.join("exe").join("a.out");
        // The linker has exited: its output is final but for the content ID written next.
        let (stamped, stamp_known) = tokio::sync::oneshot::channel();
        if let Some(linked) = linked {
            let path = linker_output.clone();
            let _ = linked.send(crate::pipeline::gobuild::LinkerOutput { path, stamped: Some(stamp_known) });
        }
        let stamping = linker_output.clone();
        let (id, offsets) = tokio::task::spawn_blocking(move || stamp_content_id(&stamping, &placeholder))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        let _ = stamped.send((offsets, id.len()));
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "content ID stamped");
        replace_in_background(&linker_output, output).map_err(failed)?;
        Ok(sources.fingerprint())
    }
}

/// Rename `from` over `to`, leaving the release of the file `to` held before (its blocks: tens
/// of megabytes for a large binary, a few milliseconds of the file system's time) to a thread
/// of its own rather than to the rename, which the layer waits for.
fn replace_in_background(from: &Path, to: &Path) -> io::Result<()> {
    let replaced = File::open(to).ok();
    match std::fs::rename(from, to) {
        // The user's GOTMPDIR on another file system than kodev's cache.
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => copy_over(from, to)?,
        moved => moved?,
    }
    if let Some(replaced) = replaced {
        std::thread::spawn(move || drop(replaced));
    }
    Ok(())
}

/// `from` copied over `to` through a file beside it and a rename (a reader never sees half a
/// binary), then removed.
fn copy_over(from: &Path, to: &Path) -> io::Result<()> {
    crate::pipeline::base::write_atomically_with(to, |out| io::copy(&mut File::open(from)?, out).map(drop))?;
    std::fs::remove_file(from)
}

/// Recipes of the binaries kodev builds, by output path. Each is also saved beside its binary,
/// so that the next process (another `kodev build`, a new `kodev dev` session) starts with it.
#[derive(Default)]
pub struct Relinker {
    recipes: Mutex<HashMap<PathBuf, Arc<Recipe>>>,
    /// Set when go once disagreed with a relinked binary: no more relinking.
    off: std::sync::atomic::AtomicBool,
    /// `kodev dev` confirms each relinked binary with go once it is pushed. A one-shot build
    /// does not: that would cost what relinking saves. It trusts a recipe whose build IDs
    /// kodev recomputed when it was captured.
    check_with_go: bool,
    /// Relinked binaries to confirm with go once their image is pushed.
    unchecked: Mutex<Vec<Check>>,
    /// Recipes still being read from go's output, by the binary they are for: a one-shot build
    /// waits for them, so that the next process finds them saved, and so does the next build
    /// of that binary (its own build, cancelled by the edit, may have stopped waiting).
    capturing: Mutex<Vec<(PathBuf, CaptureDone)>>,
    /// Binaries go built without compiling their main package, to record a recipe for once
    /// their image is pushed (see `Recapture`).
    recaptures: Mutex<Vec<Recapture>>,
    /// Those background builds while they run: the next build stops them.
    recapturing: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Recipes to complete with the compiles they lack once their image is pushed (see
    /// `RecordCompiles`).
    compiles_to_record: Mutex<Vec<RecordCompiles>>,
    /// Those being recorded: a build that starts stops them, and they wait for the next push.
    recording_compiles: Mutex<Vec<(tokio::task::AbortHandle, RecordCompiles)>>,
}

/// A binary whose recipe lacks the compiles of some of the main module's packages (go took
/// them from its cache), so that the first edit of one would run go. In `kodev dev`, once the
/// image is pushed, a `go build -a -n` in the background prints the compile go would run for
/// each, and the recipe records them (`Recipe::record_compiles_from_dry_run`).
#[derive(Clone)]
pub struct RecordCompiles {
    pub artifact: crate::config::Artifact,
    pub debug: bool,
    pub env: Vec<(String, String)>,
    pub output: PathBuf,
}

/// A binary whose go build printed no compile of the main package (go had it in its cache:
/// the user built these sources before), or that go built without capturing (an edit outside
/// the main package, see `Fit::EditedElsewhere`), so no recipe, and the next edit of the main
/// package would run go. In `kodev dev` one go build in the background, once the image is
/// pushed, records the recipe: kodev removes the main package's entry from go's cache
/// (`main_action`, see `main_action_in_cache`), and go compiles it again, the same bytes, and
/// links a copy. Without `main_action`, a `go build -n` first tells it.
pub struct Recapture {
    pub artifact: crate::config::Artifact,
    pub platform: crate::platform::Platform,
    pub debug: bool,
    pub env: Vec<(String, String)>,
    pub output: PathBuf,
    pub main_action: Option<String>,
    /// The recipe that applied before the edit: the packages whose action IDs changed since
    /// are compiled again too, so the recipe records their compiles.
    pub previous: Option<Arc<Recipe>>,
}

/// A `go build -n` that tells whether go would relink a binary kodev relinked.
struct Check {
    /// The artifact's image, as in skaffold.yaml.
    image: String,
    recipe: Arc<Recipe>,
    /// The fingerprint of the sources the binary was relinked from (`Sources::fingerprint`).
    action: String,
    platform: String,
    work_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn saved_recipe_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.relink.json"))
}

/// The recipe saved for `output`, if it was written by this kodev for the same environment.
fn load_recipe(output: &Path) -> Option<Recipe> {
    let bytes = std::fs::read(saved_recipe_path(output)).ok()?;
    let recipe: Recipe = serde_json::from_slice(&bytes)
        .map_err(|e| tracing::debug!(error = %e, "a saved recipe cannot be read"))
        .ok()?;
    let applies = recipe.format == recipe_format()
        && recipe.environment == go_environment()
        && recipe.go == crate::config::go_binary_path();
    if !applies {
        tracing::debug!(output = %output.display(), "the saved recipe is for another kodev or environment");
    }
    applies.then_some(recipe)
}

/// Written whole or not at all: a reader never sees half a recipe.
fn save_recipe(output: &Path, recipe: &Recipe) -> io::Result<()> {
    let path = saved_recipe_path(output);
    let mut file = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(Path::new(".")))?;
    serde_json::to_writer(io::BufWriter::new(&mut file), recipe)?;
    file.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// Written when go disagrees with a relinked binary: relinking stays off with this toolchain.
fn disagreement_marker() -> PathBuf {
    crate::pipeline::base::cache_dir().join("relink-disagreed")
}

fn toolchain_identity() -> String {
    let go = crate::config::go_binary_path();
    format!("{} {:?}", go.display(), FileStamp::read(&go))
}

impl Relinker {
    /// `check_with_go`: confirm each relinked binary with `go build -n` after its push.
    pub fn new(check_with_go: bool) -> Relinker {
        let disagreed = std::fs::read_to_string(disagreement_marker()).is_ok_and(|t| t == toolchain_identity());
        if disagreed {
            tracing::debug!(marker = %disagreement_marker().display(), "go once disagreed with a relinked binary: relinking is off");
        }
        Relinker { off: disagreed.into(), check_with_go, ..Relinker::default() }
    }

    /// Whether the recipe for `output` applies to the sources as they are now (see `Fit`). A
    /// recipe that no longer applies is dropped.
    pub fn fit(&self, output: &Path) -> Fit {
        if self.off.load(std::sync::atomic::Ordering::Relaxed) {
            return Fit::Unknown;
        }
        let mut recipes = self.recipes.lock().unwrap_or_else(|e| e.into_inner());
        let mut recipe = match recipes.get(output) {
            Some(recipe) => recipe.clone(),
            None => {
                let Some(loaded) = load_recipe(output) else { return Fit::Unknown };
                let loaded = Arc::new(loaded);
                recipes.insert(output.to_path_buf(), loaded.clone());
                loaded
            }
        };
        let mut sources = recipe.current_sources();
        let lacking = |recipe: &Recipe, sources: &Option<Sources>| {
            sources
                .as_ref()
                .is_some_and(|s| s.edited.iter().any(|(index, _)| recipe.packages[*index].compile.is_none()))
        };
        if lacking(&recipe, &sources) {
            // Another binary's recipe may hold the compile (the same package for the same
            // platform, built by go for that binary).
            let mut adopted = (*recipe).clone();
            for other in recipes.values() {
                adopted.adopt_compiles(other);
            }
            if !lacking(&adopted, &sources) {
                tracing::debug!(output = %output.display(), "package compiles taken from another binary's recipe");
                recipe = Arc::new(adopted);
                recipes.insert(output.to_path_buf(), recipe.clone());
                sources = recipe.current_sources();
            }
        }
        // An edited package the recipe cannot compile needs go; it records the compile then.
        let replayable = !lacking(&recipe, &sources);
        match sources {
            Some(sources) if replayable => Fit::Usable(recipe, sources),
            _ => {
                recipes.remove(output);
                let _ = std::fs::remove_file(saved_recipe_path(output));
                if recipe.main_package_unchanged(output) {
                    Fit::EditedElsewhere(recipe)
                } else {
                    Fit::Unknown
                }
            }
        }
    }

    pub fn keep(&self, output: &Path, recipe: Recipe) {
        if let Err(e) = save_recipe(output, &recipe) {
            tracing::debug!(error = %e, "the recipe is not saved for the next process");
        }
        self.recipes.lock().unwrap_or_else(|e| e.into_inner()).insert(output.to_path_buf(), Arc::new(recipe));
    }

    pub fn forget(&self, output: &Path) {
        self.recipes.lock().unwrap_or_else(|e| e.into_inner()).remove(output);
        let _ = std::fs::remove_file(saved_recipe_path(output));
    }

    /// Hold on to a recipe being read (see `settle`).
    pub fn capturing(&self, output: &Path, task: tokio::task::JoinHandle<()>) {
        let done: CaptureDone = task.map(|_| ()).boxed().shared();
        self.capturing.lock().unwrap_or_else(|e| e.into_inner()).push((output.to_path_buf(), done));
    }

    /// Wait until every recipe being read is kept (or refused).
    pub async fn settle(&self) {
        self.settle_where(|_| true).await
    }

    /// Wait until the recipe being read for `output`, if any, is kept (or refused).
    pub async fn settle_for(&self, output: &Path) {
        self.settle_where(|of| of == output).await
    }

    async fn settle_where(&self, wanted: impl Fn(&Path) -> bool) {
        let waits: Vec<CaptureDone> = {
            let capturing = self.capturing.lock().unwrap_or_else(|e| e.into_inner());
            capturing.iter().filter(|(of, _)| wanted(of)).map(|(_, done)| done.clone()).collect()
        };
        futures::future::join_all(waits).await;
        self.capturing.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, done)| done.peek().is_none());
    }

    /// Whether this process records recipes in the background after a push (`kodev dev`); a
    /// one-shot build exits after its push and records only what its own go build prints.
    pub fn records_in_background(&self) -> bool {
        self.check_with_go
    }

    /// Whether binaries built by go without a recipe get one in the background (`kodev dev`).
    pub fn recaptures_wanted(&self, output: &Path) -> bool {
        self.check_with_go
            && !self.off.load(std::sync::atomic::Ordering::Relaxed)
            && !self.recipes.lock().unwrap_or_else(|e| e.into_inner()).contains_key(output)
    }

    /// Record a recipe for a binary once its image is pushed (see `Recapture`).
    pub fn to_recapture(&self, job: Recapture) {
        let mut jobs = self.recaptures.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|queued| queued.output != job.output);
        jobs.push(job);
    }

    /// Keep the recipe of a background build (see `Recapture`) that linked `copy`, if that
    /// is `output` byte for byte (the sources did not change meanwhile).
    pub fn keep_recaptured(
        &self,
        lines: &[String],
        go_dir: &Path,
        copy: &Path,
        output: &Path,
        previous: Option<&Recipe>,
        settings: &BuildSettings,
    ) -> Result<(), &'static str> {
        let mut recipe = Recipe::capture(lines, go_dir, copy, None, settings)?;
        if let Some(previous) = previous {
            recipe.adopt_compiles(previous);
        }
        let copied = go_build_id(copy);
        if copied.is_none() || copied != go_build_id(output) {
            return Err("the binary changed meanwhile");
        }
        self.keep(output, recipe);
        Ok(())
    }

    /// Complete the recipe of `output` once its image is pushed (see `RecordCompiles`).
    pub fn to_record_compiles(&self, job: RecordCompiles) {
        let mut jobs = self.compiles_to_record.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|queued| queued.output != job.output);
        jobs.push(job);
    }

    /// Whether the recipe kept for `output` lacks compiles (see `Recipe::lacks_compiles`).
    pub fn lacks_compiles(&self, output: &Path) -> bool {
        self.recipes.lock().unwrap_or_else(|e| e.into_inner()).get(output).is_some_and(|r| r.lacks_compiles())
    }

    /// Start recording what a recipe lacks (see `RecordCompiles`) in the background.
    pub fn start_recording_compiles(self: &Arc<Self>, job: RecordCompiles) {
        let running = tokio::spawn(crate::pipeline::gobuild::record_compiles(job.clone(), self.clone()));
        let mut recording = self.recording_compiles.lock().unwrap_or_else(|e| e.into_inner());
        recording.retain(|(handle, _)| !handle.is_finished());
        recording.push((running.abort_handle(), job));
    }

    /// Record the compiles the recipe of `output` lacks from a `go build -a -n` of it
    /// (`dry_run_lines`, run in `go_dir`), unless another recipe replaced it meanwhile.
    /// Returns how many were recorded.
    pub fn record_compiles(
        &self,
        output: &Path,
        dry_run_lines: &[String],
        go_dir: &Path,
    ) -> Result<usize, &'static str> {
        let current = self.recipes.lock().unwrap_or_else(|e| e.into_inner()).get(output).cloned();
        let current = current.ok_or("no recipe")?;
        let mut completed = (*current).clone();
        let recorded = completed.record_compiles_from_dry_run(dry_run_lines, go_dir)?;
        if recorded == 0 {
            return Ok(0);
        }
        let mut recipes = self.recipes.lock().unwrap_or_else(|e| e.into_inner());
        if !recipes.get(output).is_some_and(|now| Arc::ptr_eq(now, &current)) {
            return Err("another recipe was kept meanwhile");
        }
        if let Err(e) = save_recipe(output, &completed) {
            tracing::debug!(error = %e, "the recipe is not saved for the next process");
        }
        recipes.insert(output.to_path_buf(), Arc::new(completed));
        Ok(recorded)
    }

    /// A build is starting: background builds that record recipes give it the machine (it
    /// records a recipe itself if it compiles the main package).
    pub fn stop_recaptures(&self) {
        for running in self.recapturing.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            running.abort();
        }
        let recording = std::mem::take(&mut *self.recording_compiles.lock().unwrap_or_else(|e| e.into_inner()));
        for (running, job) in recording.into_iter().filter(|(running, _)| !running.is_finished()) {
            running.abort();
            self.to_record_compiles(job);
        }
    }

    /// Remember to confirm a binary relinked with `recipe` and `action` (see `check_pushed`).
    #[allow(clippy::too_many_arguments)]
    pub fn to_check(
        &self,
        recipe: Arc<Recipe>,
        action: String,
        artifact: &crate::config::Artifact,
        platform: &crate::platform::Platform,
        debug: bool,
        output: &Path,
        env: &[(String, String)],
    ) {
        if !self.check_with_go {
            return;
        }
        let mut args = crate::pipeline::gobuild::build_args(artifact, debug, output);
        args.insert(1, "-n".to_string());
        let (platform, work_dir, env) = (platform.to_string(), artifact.work_dir.clone(), env.to_vec());
        let check = Check { image: artifact.image.clone(), recipe, action, platform, work_dir, args, env };
        self.unchecked.lock().unwrap_or_else(|e| e.into_inner()).push(check);
    }

    /// `image` (as in skaffold.yaml) was pushed. Ask go, in the background, whether each of its
    /// binaries relinked since is the one it would build: `relink_checked` says so; if go
    /// disagrees, relinking stops for the session. Record the recipes it lacks (`Recapture`).
    /// Other artifacts' binaries wait for their own push.
    pub fn check_pushed(self: &Arc<Self>, image: &str, events: &crate::event::EventSink) {
        let jobs = take_where(&self.recaptures, |job| job.artifact.image == image);
        for job in jobs {
            let running = tokio::spawn(crate::pipeline::gobuild::recapture(job, self.clone(), events.clone()));
            self.recapturing.lock().unwrap_or_else(|e| e.into_inner()).push(running.abort_handle());
        }
        for job in take_where(&self.compiles_to_record, |job| job.artifact.image == image) {
            self.start_recording_compiles(job);
        }
        let checks = take_where(&self.unchecked, |check| check.image == image);
        for check in checks {
            let (relinker, events) = (self.clone(), events.clone());
            tokio::spawn(async move {
                let output = tokio::process::Command::new(crate::config::go_binary())
                    .args(&check.args)
                    .current_dir(&check.work_dir)
                    .envs(check.env)
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await;
                let Some(output) = output.ok().filter(|o| o.status.success()) else {
                    tracing::debug!("go build -n failed; the relinked binary is not confirmed");
                    return;
                };
                let lines: Vec<String> = String::from_utf8_lossy(&output.stderr).lines().map(str::to_string).collect();
                let same_as_go = go_agrees(&lines);
                // go reads the sources as they are now: after a newer edit it would relink,
                // which says nothing of the binary being checked.
                let sources_moved =
                    check.recipe.current_sources().map(|sources| sources.fingerprint()) != Some(check.action.clone());
                if !same_as_go && sources_moved {
                    tracing::debug!(platform = check.platform, "sources changed before go's check; not conclusive");
                    return;
                }
                if !same_as_go {
                    relinker.turn_off();
                    events.send(crate::event::EventKind::Error {
                        message: format!(
                            "the binary kodev relinked for {} is not the one go build makes; relinking is off \
                             with this Go toolchain (delete {} to turn it back on) and the next build runs go \
                             (please report this)",
                            check.platform,
                            disagreement_marker().display()
                        ),
                    });
                }
                events.send(crate::event::EventKind::RelinkChecked { platform: check.platform, same_as_go });
            });
        }
    }

    /// No more relinking with this toolchain, in this process or the next (go disagreed).
    pub fn turn_off(&self) {
        self.off.store(true, std::sync::atomic::Ordering::Relaxed);
        for (output, _) in self.recipes.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = std::fs::remove_file(saved_recipe_path(&output));
        }
        let _ = std::fs::write(disagreement_marker(), toolchain_identity());
    }
}

/// Take the items `wanted` picks out of `list`, leaving the others.
fn take_where<T>(list: &Mutex<Vec<T>>, wanted: impl Fn(&T) -> bool) -> Vec<T> {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    let (taken, left) = std::mem::take(&mut *list).into_iter().partition(|item| wanted(item));
    *list = left;
    taken
}

/// The end of a recipe's capture, which several builds may wait for.
type CaptureDone = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// Whether `go build -n` (`dry_run_lines`) would leave the binary as it is: it prints a link
/// when go would relink.
pub fn go_agrees(dry_run_lines: &[String]) -> bool {
    !dry_run_lines.iter().any(|line| line.split(' ').any(|word| tool_name(word) == Some("link")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_counts_what_go_builds_with_not_how_its_runtime_is_tuned() {
        let vars = [
            ("GOFLAGS", "-tags=extra"),
            ("CGO_ENABLED", "0"),
            ("CC", "clang"),
            ("GODEBUG", "gotypesalias=1"),
            ("GOMAXPROCS", "1"),
            ("GOGC", "400"),
            ("GOMEMLIMIT", "1GiB"),
            ("GOTRACEBACK", "all"),
            ("PATH", "/usr/bin"),
            ("TERM", "xterm"),
        ]
        .map(|(name, value)| (name.into(), value.into()));
        let names: Vec<String> = build_environment(vars.into_iter()).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["CC", "CGO_ENABLED", "GODEBUG", "GOFLAGS"]);
    }

    #[test]
    fn go_quoted_strings_are_read_back() {
        assert_eq!(go_unquote(r#""a\tb\n\"c\"\\""#).unwrap(), b"a\tb\n\"c\"\\");
        assert_eq!(go_unquote(r#""0w\xaf\f""#).unwrap(), b"0w\xaf\x0c");
        assert_eq!(go_unquote(r#""\u00e9""#).unwrap(), "é".as_bytes());
        assert!(go_unquote(r#""\q""#).is_none());
    }

    #[test]
    fn command_lines_are_split_like_go_joined_them() {
        let words = split_command(r#"/g/pkg/tool/linux_amd64/compile -o $WORK/b001/_pkg_.a -trimpath "/src/a b=>x;$WORK/b001=>" -p main ./main.go"#).unwrap();
        assert_eq!(words[4], "/src/a b=>x;$WORK/b001=>");
        assert_eq!(words.last().unwrap(), "./main.go");
        let run = tool_run("GOROOT='' /g/pkg/tool/linux_amd64/link -o $WORK/b001/exe/a.out", Path::new("/d")).unwrap();
        assert_eq!(run.env, vec![("GOROOT".to_string(), String::new())]);
        assert_eq!(tool_name(&run.tool.to_string_lossy()), Some("link"));
        assert_eq!(tool_name("/usr/bin/link"), None);
    }

    #[test]
    fn only_modules_replaced_by_a_directory_are_taken_from_the_build_info() {
        let modinfo = br#"modinfo "path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\texample.com/lib\tv0.0.0\n=>\t../lib\t(devel)\t\ndep\texample.com/other\tv1.0.0\n=>\texample.com/fork\tv1.0.1\th1:abc=\ndep\texample.com/plain\tv1.2.0\th1:def=\n"
"#;
        let text = vec![b"compile\n".to_vec(), modinfo.to_vec()];
        let replaced = modules_replaced_by_directories(&text);
        assert_eq!(replaced, HashSet::from(["example.com/lib".to_string()]));
    }

    #[test]
    fn a_package_directory_is_the_one_holding_all_its_files() {
        let hash = |content: &[u8]| hex::encode(Sha256::digest(content));
        let (doc, a) = (hash(b"package p\n"), hash(b"package p\nvar A = 1\n"));
        // Two packages with the same doc.go; only one has a.go.
        let hashed_files = [("/x/doc.go", doc.as_str()), ("/y/doc.go", doc.as_str()), ("/y/a.go", a.as_str())];
        let hashed = hashed_dirs(&hashed_files);
        let write = |name: &str, content: &[u8]| {
            format!("file {name} {}\n", hash_to_string(&Sha256::digest(content))).into_bytes()
        };
        let both = vec![write("doc.go", b"package p\n"), write("a.go", b"package p\nvar A = 1\n")];
        assert_eq!(package_dir(&both, &hashed), Some(PathBuf::from("/y")));
        let doc_only = vec![write("doc.go", b"package p\n")];
        assert_eq!(package_dir(&doc_only, &hashed), None, "two directories could be it");
    }

    #[test]
    fn hash_to_string_matches_go() {
        // HashToString of SHA-256("") in go: the first 15 bytes, URL-safe base64.
        assert_eq!(hash_to_string(&Sha256::digest(b"")), "47DEQpj8HBSa-_TImW-5");
    }

    #[test]
    fn hashed_text_must_hash_to_what_go_printed() {
        let digest = hex::encode(Sha256::digest(b"go1.x\ncompile\n"));
        let lines: Vec<String> = vec![
            "HASH[build m]".into(),
            r#"HASH[build m]: "go1.x\n""#.into(),
            r#"HASH[build other]: "noise""#.into(),
            r#"HASH[build m]: "compile\n""#.into(),
            format!("HASH[build m]: {digest}"),
        ];
        assert_eq!(hashed_text(&lines, "build m").unwrap(), vec![b"go1.x\n".to_vec(), b"compile\n".to_vec()]);
        let mut wrong = lines.clone();
        wrong[4] = format!("HASH[build m]: {}", hex::encode(Sha256::digest(b"other")));
        assert!(hashed_text(&wrong, "build m").is_none());
    }

    /// An archive the way go stamps one: its content ID is the hash of the file with the whole
    /// build ID (every place it stands) read as zeros.
    #[test]
    fn an_archives_build_id_is_read_and_its_content_id_checked() {
        let action = "d3977FiM4DZHr4WF5Lhl";
        let zeros = "\0".repeat(action.len() + 1 + 20);
        let body = |id: &str| {
            format!("!<arch>\n__.PKGDEF       0     `\ngo object linux amd64\nbuild id \"{id}\"\nmain\n\0\0{id}\0code")
        };
        let content = hash_to_string(&Sha256::digest(body(&zeros)));
        let id = format!("{action}/{content}");
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("_pkg_.a");
        std::fs::write(&archive, body(&id)).unwrap();
        assert_eq!(go_build_id(&archive).as_deref(), Some(id.as_str()));
        assert!(content_id_holds(&archive, &id));
        std::fs::write(&archive, body(&id).replace("code", "kode")).unwrap();
        assert!(!content_id_holds(&archive, &id), "another content, another ID");
    }

    fn package(import_path: &str, imports: &[&str]) -> ModulePackage {
        let mut text = vec![format!("import \"{import_path}\"\n").into_bytes(), b"file a.go 0123\n".to_vec()];
        text.extend(imports.iter().map(|dep| format!("import {dep} OLD\n").into_bytes()));
        ModulePackage {
            import_path: import_path.to_string(),
            dir: PathBuf::from("/m").join(import_path),
            text,
            content_id: "C".into(),
            editable: true,
            files: Vec::new(),
            dir_stamp: None,
            listing: BTreeSet::new(),
            signatures: HashMap::new(),
            compile: None,
        }
    }

    #[test]
    fn packages_come_after_what_they_import() {
        let packages =
            vec![package("m/top", &["m/mid", "fmt"]), package("m/mid", &["m/low"]), package("m/low", &["strings"])];
        let order: Vec<String> = in_dependency_order(packages).into_iter().map(|p| p.import_path).collect();
        assert_eq!(order, ["m/low", "m/mid", "m/top"]);
    }

    #[test]
    fn texts_and_import_configurations_take_the_new_content_ids_and_archives() {
        let text = package("m/top", &["m/mid", "fmt"]).text;
        // The package's own quoted path is not one of its imports.
        let imported: Vec<&str> = import_writes(&text).map(|(_, path, _)| path).collect();
        assert_eq!(imported, ["m/mid", "fmt"]);
        assert_eq!(file_writes(&text), vec![(1, "a.go".to_string(), "0123".to_string())]);
        let contents = HashMap::from([("m/mid".to_string(), "NEW".to_string())]);
        let updated = with_imports(text.clone(), &contents);
        assert_eq!(updated[2], b"import m/mid NEW\n");
        assert_eq!((&updated[..2], &updated[3]), (&text[..2], &text[3]));

        let config = b"# import config\npackagefile m/mid=/c/aa/old-d\npackagefile fmt=/c/bb/fmt-d\n";
        let archives = HashMap::from([("m/mid".to_string(), PathBuf::from("/c/cc/new-d"))]);
        assert_eq!(
            with_archives(config, &archives),
            b"# import config\npackagefile m/mid=/c/cc/new-d\npackagefile fmt=/c/bb/fmt-d\n"
        );
    }

    /// What `go build -a -n` prints, as go 1.26 does, for a module at /m.
    fn dry_run_lines() -> Vec<String> {
        let tool = "/go/pkg/tool/linux_amd64";
        let lines = format!(
            "mkdir -p $WORK/b002/\n\
             echo '# import config' > $WORK/b002/importcfg # internal\n\
             cd /m\n\
             {tool}/compile -o $WORK/b002/_pkg_.a -trimpath \"/m/low=>m/low;$WORK/b002=>\" -p m/low -lang=go1.22 -complete -buildid aa/aa -goversion go1.26.8 -c=2 -nolocalimports -importcfg $WORK/b002/importcfg -pack ./low/a.go\n\
             go tool buildid -w $WORK/b002/_pkg_.a # internal\n\
             cat >$WORK/b003/importcfg << 'EOF' # internal\n\
             # import config\n\
             packagefile m/low=$WORK/b002/_pkg_.a\n\
             packagefile fmt=$WORK/b004/_pkg_.a\n\
             EOF\n\
             {tool}/compile -o $WORK/b003/_pkg_.a -trimpath \"/m/mid=>m/mid;$WORK/b003=>\" -p m/mid -lang=go1.22 -complete -buildid bb/bb -goversion go1.26.8 -c=2 -nolocalimports -importcfg $WORK/b003/importcfg -pack ./mid/a.go\n\
             echo -n > $WORK/b005/empty # internal\n\
             cat >$WORK/b006/importcfg << 'EOF' # internal\n\
             packagefile fmt=$WORK/b004/_pkg_.a"
        );
        lines.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_dry_run_gives_each_work_directory_its_tools_and_files() {
        let works = dry_run_work(&dry_run_lines(), Path::new("/m"));
        let low = works["b002"].as_ref().expect("b002 is read");
        assert_eq!(low.files["importcfg"], b"# import config\n");
        assert_eq!(low.runs.len(), 1, "only go's tools count, not its own steps");
        assert_eq!(low.runs[0].dir, Path::new("/m"));
        assert_eq!(compiled_package(&low.runs[0], "b002"), Some("m/low"));
        assert_eq!(compiled_package(&low.runs[0], "b003"), None, "it writes into its own directory");
        let mid = works["b003"].as_ref().expect("b003 is read");
        assert_eq!(
            mid.files["importcfg"],
            b"# import config\npackagefile m/low=$WORK/b002/_pkg_.a\npackagefile fmt=$WORK/b004/_pkg_.a\n"
        );
        assert_eq!(works["b005"].as_ref().expect("b005 is read").files["empty"], b"");
        assert!(works["b006"].is_none(), "a here-document that never ends is not taken");
    }

    #[test]
    fn a_packages_compile_is_taken_from_a_dry_run_with_the_archives_the_link_read() {
        let works = dry_run_work(&dry_run_lines(), Path::new("/m"));
        let mut mid = package("m/mid", &["m/low", "fmt"]);
        mid.dir = PathBuf::from("/m/mid");
        mid.files = vec![(1, "a.go".to_string(), None)];
        let archives = HashMap::from([
            ("m/low".to_string(), PathBuf::from("/c/11/low-d")),
            ("fmt".to_string(), PathBuf::from("/c/22/fmt-d")),
        ]);
        let compile = dry_run_compile(&works, &mid, &archives).expect("mid's compile");
        assert_eq!(compile.work, "b003");
        assert_eq!(compile.work_file_names, ["importcfg"]);
        assert_eq!(
            compile.work_file_contents[0],
            b"# import config\npackagefile m/low=/c/11/low-d\npackagefile fmt=/c/22/fmt-d\n"
        );
        let without_fmt = HashMap::from([("m/low".to_string(), PathBuf::from("/c/11/low-d"))]);
        assert!(dry_run_compile(&works, &mid, &without_fmt).is_none(), "an archive the link did not read");
        mid.files.push((2, "b.go".to_string(), None));
        assert!(dry_run_compile(&works, &mid, &archives).is_none(), "other files than the package's");

        let mut other = compile.run.clone();
        let at = other.args.iter().position(|a| a == "-buildid").unwrap();
        other.args[at + 1] = "cc/cc".to_string();
        for arg in other.args.iter_mut().filter(|a| a.starts_with("-c=")) {
            *arg = "-c=4".to_string();
        }
        assert_eq!(command_shape(&other), command_shape(&compile.run), "build IDs and -c do not count");
        other.args.push("-race".to_string());
        assert_ne!(command_shape(&other), command_shape(&compile.run));
    }

    #[test]
    fn go_s_cache_is_found_where_go_copies_a_package_into_it() {
        let output = "ab".repeat(32);
        let line = format!("cp $WORK/b002/_pkg_.a /home/u/.cache/go-build/ab/{output}-d # internal");
        assert_eq!(cached_output_dir(&line), Some(PathBuf::from("/home/u/.cache/go-build")));
        assert_eq!(cached_output_dir("cp $WORK/b002/_pkg_.a /tmp/x # internal"), None);
        assert_eq!(cached_output_dir("mkdir -p $WORK/b002/"), None);
    }

    #[test]
    fn a_dry_run_that_links_means_go_disagrees() {
        assert!(go_agrees(&["touch /c/bin/app".to_string()]));
        assert!(!go_agrees(&["/usr/local/go/pkg/tool/linux_amd64/link -o $WORK/b001/exe/a.out".to_string()]));
    }

    fn member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 644, body.len()).into_bytes();
        out.extend_from_slice(body);
        if body.len() % 2 == 1 {
            out.push(b'\n');
        }
        out
    }

    fn archive(id: &str, exports: &str, code: &str) -> Vec<u8> {
        let pkgdef = format!("go object linux amd64 go1.26\nbuild id \"{id}\"\n\n$$B\n{exports}$$\n");
        let object = format!("go object linux amd64 go1.26\nbuild id \"{id}\"\n!\n{code}");
        [b"!<arch>\n".to_vec(), member("__.PKGDEF", pkgdef.as_bytes()), member("_go_.o", object.as_bytes())].concat()
    }

    #[test]
    fn export_data_leaves_out_the_build_id_and_the_code() {
        let one = archive("aaaa/cccc", "func F()", "code one");
        let other = archive("bbbb/dddd", "func F()", "code two, longer");
        let changed = archive("aaaa/cccc", "func F(); func G()", "code one");
        assert_eq!(export_data(&one), export_data(&other));
        assert_ne!(export_data(&one), export_data(&changed));
        assert!(export_data(&one).unwrap().starts_with(b"go object linux amd64 go1.26\n\n$$B\nfunc F()"));
        let names: Vec<&str> = archive_members(&one).unwrap().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["__.PKGDEF", "_go_.o"]);
        assert_eq!(export_data(b"not an archive"), None);
    }

    #[test]
    fn only_imports_that_export_the_same_may_differ() {
        let write = |s: &str| s.as_bytes().to_vec();
        let baseline = vec![write("compile\n"), write("import example.com/a AAAA\n"), write("file a.go HASH\n")];
        let same: HashSet<String> = ["example.com/a".to_string()].into();
        let import_changed = vec![baseline[0].clone(), write("import example.com/a BBBB\n"), baseline[2].clone()];
        assert!(only_same_exports_changed(&import_changed, &baseline, &same));
        assert!(!only_same_exports_changed(&import_changed, &baseline, &HashSet::new()), "a's exports changed");
        let file_changed = vec![baseline[0].clone(), baseline[1].clone(), write("file a.go OTHER\n")];
        assert!(!only_same_exports_changed(&file_changed, &baseline, &same), "its own file changed");
    }
}
