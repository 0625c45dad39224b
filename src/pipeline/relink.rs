//! Relinking after an edit of the main package's files alone, without the go command.
//!
//! Before it compiles anything, `go build` loads the package graph and hashes the sources of
//! every package to check its cache: 70–110 ms for hello on two cores, more for a large module,
//! all of it before the edit's compile starts. Most edits touch only the main package. For
//! those, kodev replays what go itself did the last time — the main package's compile and the
//! link, with go's own recorded arguments — after working out the build IDs go would give, the
//! same way go does. The binary is byte for byte the one `go build` makes.
//!
//! The recipe is captured from a `go build -x -work` run with `GODEBUG=gocachehash=1`, which
//! prints the exact text go hashes into each action ID. Only the main package's file hashes
//! and, from them, its content ID change after an edit; everything else in the text stays as
//! go wrote it. A recipe is used only while every other input go read is as it was (the same
//! size, modification time and inode), the main package's directory lists the same files, and
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

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `GODEBUG` setting that makes go print what it hashes into action IDs.
pub const CAPTURE_GODEBUG: &str = "gocachehash=1";
/// The `go build` flags that make it print its commands and keep its work directory.
pub const CAPTURE_FLAGS: [&str; 2] = ["-x", "-work"];

/// Why a go build gave no recipe when the main package came from go's cache.
pub const NOT_COMPILED: &str = "go did not compile the main package";

/// What identifies a file or directory as unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    modified_ns: i64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: metadata.len(),
        modified_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        inode: metadata.ino(),
    })
}

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
#[derive(Debug, Serialize, Deserialize)]
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
    inputs: Vec<(PathBuf, Option<Stamp>)>,
    main_dir: PathBuf,
    /// The main package directory's names that can join the package.
    main_listing: BTreeSet<String>,
    main_signatures: HashMap<String, crate::dev::deps::GraphSignature>,
    /// Whether the listing counts every file (the package embeds some) or only source files.
    listing_all: bool,
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
                let digest = hex::encode(Sha256::digest(current.concat()));
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

/// The full action ID (hex) of the package `import_path`'s compile, from a `gocachehash`
/// output (a `go build -n` too: it hashes what it would build, even when the binary is up to
/// date and it has nothing to link).
pub fn package_action(lines: &[String], import_path: &str) -> Option<String> {
    let text = hashed_text(lines, &format!("build {import_path}"))?;
    Some(hex::encode(Sha256::digest(text.concat())))
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
fn point_into_cache(config: &[u8], work: &str) -> Result<Vec<u8>, &'static str> {
    let Ok(text) = std::str::from_utf8(config) else { return Ok(config.to_vec()) };
    let (in_work, main_archive) = (format!("{work}/"), format!("{work}/b001/"));
    let from_this_run = |path: &str| path.starts_with(&in_work) && !path.starts_with(&main_archive);
    // go's cache, from a package this run did not compile: `<cache>/xx/<sha256>-d`.
    let cache = text
        .lines()
        .filter_map(packagefile)
        .find_map(|(_, path)| path.ends_with("-d").then(|| Path::new(path).parent()?.parent()).flatten());
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

impl Recipe {
    /// Read a recipe from a capturing `go build`'s output (`CAPTURE_FLAGS`, `CAPTURE_GODEBUG`),
    /// while its kept work directory still exists; `output` is the binary it built. Says why
    /// when this build cannot be replayed: go did not compile the main package (nothing
    /// changed), the package has assembly or cgo, an input changed while go ran, or the output
    /// is not what kodev expects — including build IDs that kodev's way of computing them does
    /// not give, so that a recipe is only kept when kodev can redo what go did.
    pub fn capture(lines: &[String], go_dir: &Path, output: &Path) -> Result<Recipe, &'static str> {
        let work = lines.iter().find_map(|line| line.strip_prefix("WORK=")).ok_or("no work directory")?;
        let mut dir = go_dir.to_path_buf();
        let (mut compile, mut link) = (None, None);
        for line in lines {
            if let Some(cd) = line.strip_prefix("cd ") {
                // Relative to go's own directory (`cd .` before the link).
                dir = go_dir.join(cd);
                continue;
            }
            if !line.contains("$WORK/b001/") {
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
        let (compile, link) = (compile.ok_or(NOT_COMPILED)?, link.ok_or("go did not link")?);
        if compile.args.iter().any(|a| a.starts_with("-toolexec")) {
            return Err("-toolexec");
        }
        let main_import_path = lines
            .iter()
            .find_map(|l| l.strip_prefix("HASH[link ")?.strip_suffix(']'))
            .ok_or("no link hash")?
            .to_string();
        let compile_text = hashed_text(lines, &format!("build {main_import_path}")).ok_or("no compile hash text")?;
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
        let link_given = link.args.iter().find_map(|a| a.strip_prefix("-buildid=")).ok_or("link has no -buildid")?;
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
        let (first_index, first_name) = main_files.first().ok_or("no main package files")?;
        let first_hash =
            std::str::from_utf8(&compile_text[*first_index]).ok().and_then(|l| l.trim_end().rsplit_once(' '));
        let main_dir = hashed_files
            .iter()
            .find_map(|(path, digest)| {
                let dir = path.strip_suffix(first_name.as_str())?.strip_suffix('/')?;
                let b64 = hash_to_string(&hex::decode(digest).ok().filter(|d| d.len() == 32)?);
                (Some(b64.as_str()) == first_hash.map(|(_, h)| h)).then(|| PathBuf::from(dir))
            })
            .ok_or("the main package's directory is not among go's inputs")?;
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

        let goroot = compile.tool.ancestors().nth(4).ok_or("no GOROOT")?.to_path_buf();
        let main_paths: BTreeSet<PathBuf> = main_files.iter().map(|(_, name)| main_dir.join(name)).collect();
        let mut inputs = Vec::new();
        let mut dirs = BTreeSet::new();
        for (path, digest) in hashed_files {
            let path = PathBuf::from(path);
            if main_paths.contains(&path) {
                continue;
            }
            let before = stamp(&path).ok_or("an input is gone")?;
            // Outside GOROOT, the file must still be what go hashed (it may have changed while
            // go ran); GOROOT's sources do not change under a toolchain.
            if !path.starts_with(&goroot)
                && std::fs::read(&path).map(|b| hex::encode(Sha256::digest(b))).ok().as_deref() != Some(digest)
            {
                return Err("an input changed while go ran");
            }
            if let Some(parent) = path.parent().filter(|p| *p != main_dir) {
                dirs.insert(parent.to_path_buf());
            }
            inputs.push((path, Some(before)));
        }
        for dir in dirs {
            let dir_stamp = stamp(&dir);
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
        if let Some(env_file) = go_env_file() {
            watched.push(env_file);
        }
        if stamped {
            watched.extend(git_state_files(&main_dir).ok_or("no git directory")?);
        }
        inputs.extend(watched.into_iter().map(|path| {
            let found = stamp(&path);
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
                work_file_contents.push(point_into_cache(&content, work)?);
                work_file_names.push(name);
            }
        }
        // The content IDs go stamped into the archive and the binary must be what kodev computes.
        let archive_id = go_build_id(&b001.join("_pkg_.a")).ok_or("the archive has no build ID")?;
        if archive_id.rsplit_once('/').map(|(action, _)| action) != Some(compile_id.as_str())
            || !content_id_holds(&b001.join("_pkg_.a"), &archive_id)
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
        })
    }

    /// The main package's compile text for the files as they are now, or None when something
    /// go would see differently has changed since the recipe was captured.
    pub fn current_compile_text(&self) -> Option<Vec<Vec<u8>>> {
        if self.inputs.iter().any(|(path, before)| stamp(path) != *before) {
            return None;
        }
        self.main_text_now()
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

/// What the recipe of a binary says of the sources as they are now.
pub enum Fit {
    /// It applies: the recipe, and the main package's compile text for the files as they are.
    Usable(Arc<Recipe>, Vec<Vec<u8>>),
    /// It no longer applies, and the main package is as it was: the edit is elsewhere (a
    /// package main imports, most often), and go may well take the main package from its
    /// cache, so a capturing build would record nothing.
    EditedElsewhere,
    /// No recipe, or the main package changed too.
    Unknown,
}

/// Bumped when a saved recipe's meaning changes.
const RECIPE_FORMAT: u32 = 1;

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

/// go's per-user settings file (`go env -w`), whose changes reach every build.
fn go_env_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("GOENV") {
        return (!file.is_empty() && file != "off").then(|| PathBuf::from(file));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("go").join("env"))
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

async fn run_tool(run: &ToolRun, work: &Path, env: &[(String, String)]) -> Result<(), RelinkFailed> {
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
    Ok(())
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
/// Returns the new ID.
fn stamp_content_id(path: &Path, placeholder: &str) -> io::Result<String> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let (offsets, hash) = find_and_hash(&file, placeholder.as_bytes())?;
    let kept = placeholder.rfind('/').unwrap_or(0);
    let id = format!("{}/{}", &placeholder[..kept], hash_to_string(&hash));
    for at in offsets {
        file.write_all_at(id.as_bytes(), at)?;
    }
    Ok(id)
}

impl Recipe {
    /// The link's action ID when the main package's archive has build ID `main_id`
    /// (`action/content`).
    fn link_action(&self, main_id: &str) -> Option<String> {
        let (_, content) = main_id.split_once('/')?;
        let main_file_line = format!("packagefile {}=", self.main_import_path);
        let link_text: Vec<Vec<u8>> = self
            .link_text
            .iter()
            .map(|write| {
                if write.starts_with(main_file_line.as_bytes()) {
                    format!("{main_file_line}{content}\n").into_bytes()
                } else if write.starts_with(b"packagemain ") {
                    format!("packagemain {main_id}\n").into_bytes()
                } else {
                    write.clone()
                }
            })
            .collect();
        Some(text_id(&link_text))
    }

    /// Whether `output` is already the binary this recipe gives for `compile_text`, the way go
    /// tells a binary is up to date: its build ID names the same main package action and the
    /// link action that follows from it.
    pub fn already_built(&self, compile_text: &[Vec<u8>], output: &Path) -> bool {
        let Some(id) = go_build_id(output) else { return false };
        let parts: Vec<&str> = id.split('/').collect();
        let [link_action, main_action, main_content, _] = parts[..] else { return false };
        main_action == text_id(compile_text)
            && self.link_action(&format!("{main_action}/{main_content}")).as_deref() == Some(link_action)
    }

    /// Compile the main package from `compile_text` (`current_compile_text`) and link it into
    /// `output` (replaced atomically), the way go would. `scratch` holds the work directory;
    /// `env` is the build's environment on top of kodev's. `linking` hears when the linker
    /// starts, `linked` of the linker's output as the linker closes it. Returns the compile's
    /// action ID.
    pub async fn relink(
        &self,
        compile_text: &[Vec<u8>],
        output: &Path,
        scratch: &Path,
        env: &[(String, String)],
        linking: Option<tokio::sync::oneshot::Sender<()>>,
        linked: Option<tokio::sync::oneshot::Sender<PathBuf>>,
    ) -> Result<String, RelinkFailed> {
        let started = std::time::Instant::now();
        let b001 = scratch.join("b001");
        std::fs::create_dir_all(b001.join("exe")).map_err(failed)?;
        for (name, bytes) in self.work_file_names.iter().zip(&self.work_file_contents) {
            std::fs::write(b001.join(name), bytes).map_err(failed)?;
        }
        let action = text_id(compile_text);
        let mut compile = self.compile.clone();
        let at = compile.args.iter().position(|a| a == "-buildid").ok_or_else(|| failed("no -buildid"))?;
        compile.args[at + 1] = format!("{action}/{action}");
        run_tool(&compile, scratch, env).await?;
        let archive = b001.join("_pkg_.a");
        let main_id = stamp_content_id(&archive, &compile.args[at + 1]).map_err(failed)?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "main package compiled");
        if let Some(linking) = linking {
            let _ = linking.send(());
        }

        let link_action = self.link_action(&main_id).ok_or_else(|| failed("bad build ID"))?;
        let placeholder = format!("{link_action}/{main_id}/{link_action}");
        let mut link = self.link.clone();
        for arg in &mut link.args {
            if arg.starts_with("-buildid=") {
                *arg = format!("-buildid={placeholder}");
            }
        }
        run_tool(&link, scratch, env).await?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "linked");
        let linker_output = b001.join("exe").join("a.out");
        if let Some(linked) = linked {
            let _ = linked.send(linker_output.clone());
        }
        let stamping = linker_output.clone();
        tokio::task::spawn_blocking(move || stamp_content_id(&stamping, &placeholder))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        std::fs::rename(&linker_output, output).map_err(failed)?;
        Ok(action)
    }
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
    /// Recipes still being read from go's output: a one-shot build waits for them, so that the
    /// next process finds them saved.
    capturing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Binaries go built without compiling their main package, to record a recipe for once
    /// their image is pushed (see `Recapture`).
    recaptures: Mutex<Vec<Recapture>>,
    /// Those background builds while they run: the next build stops them.
    recapturing: Mutex<Vec<tokio::task::AbortHandle>>,
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
}

/// A `go build -n` that tells whether go would relink a binary kodev relinked.
struct Check {
    /// The artifact's image, as in skaffold.yaml.
    image: String,
    recipe: Arc<Recipe>,
    /// The main package's action ID the binary was relinked with.
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
    format!("{} {:?}", go.display(), stamp(&go))
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
        let recipe = match recipes.get(output) {
            Some(recipe) => recipe.clone(),
            None => {
                let Some(loaded) = load_recipe(output) else { return Fit::Unknown };
                let loaded = Arc::new(loaded);
                recipes.insert(output.to_path_buf(), loaded.clone());
                loaded
            }
        };
        match recipe.current_compile_text() {
            Some(text) => Fit::Usable(recipe, text),
            None => {
                recipes.remove(output);
                let _ = std::fs::remove_file(saved_recipe_path(output));
                if recipe.main_package_unchanged(output) {
                    Fit::EditedElsewhere
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
    pub fn capturing(&self, task: tokio::task::JoinHandle<()>) {
        self.capturing.lock().unwrap_or_else(|e| e.into_inner()).push(task);
    }

    /// Wait until every recipe being read is kept (or refused).
    pub async fn settle(&self) {
        let tasks = std::mem::take(&mut *self.capturing.lock().unwrap_or_else(|e| e.into_inner()));
        futures::future::join_all(tasks).await;
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
    ) -> Result<(), &'static str> {
        let recipe = Recipe::capture(lines, go_dir, copy)?;
        let copied = go_build_id(copy);
        if copied.is_none() || copied != go_build_id(output) {
            return Err("the binary changed meanwhile");
        }
        self.keep(output, recipe);
        Ok(())
    }

    /// A build is starting: background builds that record recipes give it the machine (it
    /// records a recipe itself if it compiles the main package).
    pub fn stop_recaptures(&self) {
        for running in self.recapturing.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            running.abort();
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
                    check.recipe.current_compile_text().map(|text| text_id(&text)) != Some(check.action.clone());
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

    #[test]
    fn a_dry_run_that_links_means_go_disagrees() {
        assert!(go_agrees(&["touch /c/bin/app".to_string()]));
        assert!(!go_agrees(&["/usr/local/go/pkg/tool/linux_amd64/link -o $WORK/b001/exe/a.out".to_string()]));
    }
}
