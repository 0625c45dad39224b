//! Skaffold's tag policies (REFERENCE §1). The default `gitCommit` tagger tags with the git
//! tag or abbreviated commit, plus `-dirty` for a dirty tree; when a tagger fails, `latest`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::globs::DependencyGlobs;
use super::gopkg::LocalModules;
use super::skaffold::TagPolicy;
use super::template;
use crate::stamp::FileStamp;

pub const FALLBACK_TAG: &str = "latest";

pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).current_dir(dir).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `git describe --tags --always` (Skaffold's `Tags` variant) plus `-dirty` when the context has changes.
pub fn git_commit_tag(context: &Path, variant: &str, prefix: &str, ignore_changes: bool) -> Result<String, String> {
    let base = match variant {
        "Tags" => git(context, &["describe", "--tags", "--always"]),
        "CommitSha" => git(context, &["rev-parse", "HEAD"]),
        "AbbrevCommitSha" => git(context, &["rev-parse", "--short", "HEAD"]),
        "TreeSha" => git(context, &["rev-parse", "HEAD:./"]),
        "AbbrevTreeSha" => git(context, &["rev-parse", "--short", "HEAD:./"]),
        other => {
            return Err(format!(
                "unknown gitCommit variant {other:?}: use Tags, CommitSha, AbbrevCommitSha, TreeSha or AbbrevTreeSha"
            ))
        }
    };
    let Some(base) = base.filter(|b| !b.is_empty()) else { return Ok(FALLBACK_TAG.to_string()) };
    let mut tag = format!("{prefix}{base}");
    // kodev's own OCI layout (`.kodev/` beside skaffold.yaml) is not a change to the sources.
    let status = git(context, &["status", "--porcelain", "--", ".", ":(exclude,glob)**/.kodev/**"]);
    if !ignore_changes && status.is_some_and(|s| !s.is_empty()) {
        tag.push_str("-dirty");
    }
    Ok(tag)
}

/// Translate a Go time layout (`2006-01-02_15-04-05.999_MST`) into a chrono format string.
pub fn go_layout_to_chrono(layout: &str) -> String {
    const TOKENS: &[(&str, &str)] = &[
        ("2006", "%Y"),
        (".000000000", "%.9f"),
        (".999999999", "%.9f"),
        (".000000", "%.6f"),
        (".999999", "%.6f"),
        (".000", "%.3f"),
        (".999", "%.3f"),
        ("January", "%B"),
        ("Jan", "%b"),
        ("Monday", "%A"),
        ("Mon", "%a"),
        ("MST", "%Z"),
        ("-0700", "%z"),
        ("01", "%m"),
        ("02", "%d"),
        ("15", "%H"),
        ("03", "%I"),
        ("04", "%M"),
        ("05", "%S"),
        ("PM", "%p"),
        ("06", "%y"),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        for (go, chrono) in TOKENS {
            if let Some(r) = rest.strip_prefix(go) {
                out.push_str(chrono);
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What the inputDigest tagger hashes for one artifact.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub context: PathBuf,
    /// The artifact's `ko.dependencies` globs: only the files they name count. None: every
    /// file under the context (but VCS and kodev output) counts, so that nothing the build may
    /// read (embedded files, cgo sources, kodata) changes without the tag.
    pub dependencies: Option<DependencyGlobs>,
    /// The artifact's build settings as one text (see `BuildSettings::digest_text`).
    pub settings: String,
    /// What the build takes from beside the main module (see `gopkg::local_modules`): the
    /// files of those modules count as the context's do, `dependencies` read from each
    /// module's directory; the workspace file counts whatever they name.
    pub modules: LocalModules,
}

/// A digest of the artifact's inputs: its settings and its files (see [`Inputs`]).
pub fn input_digest(inputs: &Inputs) -> String {
    input_digest_reading(inputs).0
}

/// The digests of files read before, with their stamps: `kodev dev` works an inputDigest tag
/// out again for each build and reads again only what changed.
static KEPT_DIGESTS: Mutex<Option<KeptDigests>> = Mutex::new(None);

type KeptDigests = HashMap<PathBuf, (FileStamp, [u8; 32])>;

/// The digest, and how many files it read (the others' digests were kept).
fn input_digest_reading(inputs: &Inputs) -> (String, usize) {
    let context = inputs.context.as_path();
    // Each file with the name it is hashed under: its path from the context (`../lib/x.go`
    // for a local module beside it), the same on every machine with the same layout.
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for root in std::iter::once(context).chain(inputs.modules.dirs.iter().map(PathBuf::as_path)) {
        let prefix = relative_path(context, root);
        for (relative, path) in files_under(root) {
            let counts = inputs.dependencies.as_ref().is_none_or(|globs| globs.matches(&relative));
            if counts && seen.insert(path.clone()) {
                files.push((format!("{prefix}{}", relative.to_string_lossy()), path));
            }
        }
    }
    for file in &inputs.modules.workspace_files {
        if seen.insert(file.clone()) {
            files.push((relative_path(context, file).trim_end_matches('/').to_string(), file.clone()));
        }
    }
    // A file modified in the last two seconds may change again within its stamp's precision
    // (a coarse clock, a second write of the same length): read each time, never kept.
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let settled_before = now_ns - 2_000_000_000;
    let mut kept_guard = KEPT_DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
    let kept = kept_guard.get_or_insert_with(HashMap::new);
    let mut read = 0;
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(inputs.settings.as_bytes()));
    for (name, file) in files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        let stamp = FileStamp::read(&file);
        let known = stamp.and_then(|stamp| kept.get(&file).filter(|(was, _)| *was == stamp).map(|(_, digest)| *digest));
        let digest = match known {
            Some(digest) => Some(digest),
            None => {
                read += 1;
                let digest: Option<[u8; 32]> = std::fs::read(&file).ok().map(|bytes| Sha256::digest(&bytes).into());
                match (stamp, digest) {
                    (Some(stamp), Some(digest)) if stamp.modified_before(settled_before) => {
                        kept.insert(file.clone(), (stamp, digest));
                    }
                    _ => {
                        kept.remove(&file);
                    }
                }
                digest
            }
        };
        if let Some(digest) = digest {
            hasher.update(digest);
        }
    }
    (hex::encode(hasher.finalize()), read)
}

/// The files under `root` (but VCS and kodev output), by their paths relative to it, sorted.
fn files_under(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == ".git" || name == ".kodev" {
                continue;
            }
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => files.push((path.strip_prefix(root).unwrap_or(&path).to_path_buf(), path)),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// How to reach `dir` from `from` (both absolute): `""` for `from` itself, else a path with a
/// trailing `/` (`../lib/`).
fn relative_path(from: &Path, dir: &Path) -> String {
    let (from, dir): (Vec<_>, Vec<_>) = (from.components().collect(), dir.components().collect());
    let common = from.iter().zip(&dir).take_while(|(a, b)| a == b).count();
    let ups = std::iter::repeat_n("..".to_string(), from.len() - common);
    let downs = dir[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned());
    ups.chain(downs).map(|part| part + "/").collect()
}

/// How an artifact's tag is worked out again for each build of `kodev dev`, when its tagger
/// reads the tree or the clock (gitCommit, the default, with its `-dirty`; inputDigest;
/// dateTime; envTemplate, whose template may read `.Git`): Skaffold tags each iteration anew,
/// so an image with uncommitted edits is never pushed under a clean commit's tag.
#[derive(Debug, Clone)]
pub struct Retag {
    policy: Option<TagPolicy>,
    inputs: Inputs,
    /// `IMAGE_REPO` and `IMAGE_NAME`, which templates see besides the environment.
    image_vars: BTreeMap<String, String>,
}

impl Retag {
    /// None when the policy gives the same tag whatever the tree holds (sha256: `latest`).
    pub fn new(policy: Option<&TagPolicy>, inputs: Inputs, image_vars: BTreeMap<String, String>) -> Option<Retag> {
        if policy.is_some_and(|p| p.sha256.is_some()) {
            return None;
        }
        Some(Retag { policy: policy.cloned(), inputs, image_vars })
    }

    /// The tag as the tagger gives it now.
    pub fn current(&self) -> Result<String, String> {
        let uses_git = self
            .policy
            .as_ref()
            .and_then(|p| p.env_template.as_ref())
            .is_some_and(|t| template::reads_git(&t.template));
        let mut vars = super::template_vars(&self.inputs.context, uses_git, None);
        vars.extend(self.image_vars.clone());
        let tag = resolve(self.policy.as_ref(), &self.inputs, &vars)?;
        super::naming::validate_tag(&tag)?;
        Ok(tag)
    }
}

/// Resolve `build.tagPolicy` for one artifact. Errors are configuration errors.
pub fn resolve(policy: Option<&TagPolicy>, inputs: &Inputs, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let context = inputs.context.as_path();
    let Some(policy) = policy else { return git_commit_tag(context, "Tags", "", false) };
    let set = [
        policy.git_commit.is_some(),
        policy.sha256.is_some(),
        policy.input_digest.is_some(),
        policy.env_template.is_some(),
        policy.date_time.is_some(),
        policy.custom_template.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err("tagPolicy names more than one tagger: keep exactly one".to_string());
    }
    if let Some(g) = &policy.git_commit {
        return git_commit_tag(
            context,
            g.variant.as_deref().unwrap_or("Tags"),
            g.prefix.as_deref().unwrap_or(""),
            g.ignore_changes,
        );
    }
    if policy.sha256.is_some() {
        return Ok(FALLBACK_TAG.to_string());
    }
    if policy.input_digest.is_some() {
        return Ok(input_digest(inputs));
    }
    if let Some(t) = &policy.env_template {
        return template::expand(&t.template, vars);
    }
    if let Some(d) = &policy.date_time {
        let layout = d.format.as_deref().unwrap_or("2006-01-02_15-04-05.999_MST");
        let format = go_layout_to_chrono(layout);
        let now = chrono::Utc::now();
        return Ok(match d.timezone.as_deref() {
            None | Some("UTC") | Some("Local") | Some("") => now.format(&format).to_string(),
            Some(other) => {
                return Err(format!("dateTime timezone {other:?} is not supported: use UTC or Local"));
            }
        });
    }
    if let Some(custom) = &policy.custom_template {
        return custom_template_tag(custom, inputs, vars);
    }
    git_commit_tag(context, "Tags", "", false)
}

/// Skaffold's customTemplate: the template sees its components by name, and three of its own
/// unless a component takes the name: `GIT` (gitCommit's default), `DATE` (dateTime's
/// default) and `SHA` (sha256's `latest`). Nothing else: a name it does not know is an error.
fn custom_template_tag(
    custom: &super::skaffold::CustomTemplateTagger,
    inputs: &Inputs,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut components: BTreeMap<String, String> = BTreeMap::new();
    let builtin = |policy: TagPolicy| resolve(Some(&policy), inputs, vars);
    // A built-in the template does not name is not worked out (git runs twice for GIT).
    let builtin_wanted =
        |name: &str| !custom.components.iter().any(|c| c.name == name) && custom.template.contains(&format!(".{name}"));
    if builtin_wanted("GIT") {
        components
            .insert("GIT".into(), builtin(TagPolicy { git_commit: Some(Default::default()), ..Default::default() })?);
    }
    if builtin_wanted("DATE") {
        components
            .insert("DATE".into(), builtin(TagPolicy { date_time: Some(Default::default()), ..Default::default() })?);
    }
    if builtin_wanted("SHA") {
        components.insert("SHA".into(), FALLBACK_TAG.to_string());
    }
    for component in &custom.components {
        if component.custom_template.is_some() {
            return Err(format!(
                "customTemplate component {:?} is a customTemplate itself: use another tagger",
                component.name
            ));
        }
        let policy = component.policy();
        let tag = resolve(Some(&policy), inputs, vars)
            .map_err(|e| format!("customTemplate component {:?}: {e}", component.name))?;
        components.insert(component.name.clone(), tag);
    }
    template::expand(&custom.template, &components).map_err(|e| format!("customTemplate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `context` counts, and no settings.
    fn every_file(context: &Path) -> Inputs {
        Inputs {
            context: context.to_path_buf(),
            dependencies: None,
            settings: String::new(),
            modules: LocalModules::default(),
        }
    }

    #[test]
    fn a_custom_template_sees_its_components_and_skaffolds_own_three() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.go"), "package main\n").unwrap();
        let yaml = r#"
template: "{{.VERSION}}-{{.YEAR}}-{{.SHA}}-{{.DIGEST}}"
components:
  - name: VERSION
    envTemplate: {template: "v{{.MAJOR}}"}
  - name: YEAR
    dateTime: {format: "2006"}
  - name: DIGEST
    inputDigest: {}
"#;
        let custom: super::super::skaffold::CustomTemplateTagger = serde_yaml_ng::from_str(yaml).unwrap();
        let policy = TagPolicy { custom_template: Some(custom), ..Default::default() };
        assert!(policy.reads_input_digest());
        let vars: BTreeMap<String, String> = [("MAJOR".to_string(), "3".to_string())].into();
        let inputs = every_file(dir.path());
        let tag = resolve(Some(&policy), &inputs, &vars).unwrap();
        let year = chrono::Utc::now().format("%Y").to_string();
        assert_eq!(tag, format!("v3-{year}-latest-{}", input_digest(&inputs)));

        // A name it does not know, and a component that is a customTemplate, are errors.
        let unknown: super::super::skaffold::CustomTemplateTagger =
            serde_yaml_ng::from_str("template: \"{{.NOPE}}\"").unwrap();
        let policy = TagPolicy { custom_template: Some(unknown), ..Default::default() };
        let e = resolve(Some(&policy), &inputs, &vars).unwrap_err();
        assert!(e.contains("\"NOPE\" is not set"), "{e}");
        let nested: super::super::skaffold::CustomTemplateTagger =
            serde_yaml_ng::from_str("template: x\ncomponents: [{name: A, customTemplate: {template: y}}]").unwrap();
        let policy = TagPolicy { custom_template: Some(nested), ..Default::default() };
        assert!(resolve(Some(&policy), &inputs, &vars).unwrap_err().contains("\"A\" is a customTemplate"));
    }

    #[test]
    fn the_input_digest_reads_again_only_files_that_changed_and_follows_every_edit() {
        let dir = tempfile::tempdir().unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for name in ["a.go", "b.go", "c.txt"] {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(long_ago).unwrap();
        }
        let (first, read) = input_digest_reading(&every_file(dir.path()));
        assert_eq!(read, 3);
        assert_eq!(input_digest_reading(&every_file(dir.path())), (first.clone(), 0), "nothing changed, nothing read");

        // Same length, and its old modification time put back: the change time tells.
        let b = dir.path().join("b.go");
        std::fs::write(&b, "B.go").unwrap();
        std::fs::File::options().write(true).open(&b).unwrap().set_modified(long_ago).unwrap();
        let (second, read) = input_digest_reading(&every_file(dir.path()));
        assert_eq!(read, 1);
        assert_ne!(second, first);
        // Just written (not settled): read at each digest, and each edit is seen.
        std::fs::write(&b, "b.go").unwrap();
        let (third, read) = input_digest_reading(&every_file(dir.path()));
        assert_eq!((third.as_str(), read), (first.as_str(), 1), "back to the first contents");
        std::fs::write(&b, "x.go").unwrap();
        let (fourth, read) = input_digest_reading(&every_file(dir.path()));
        assert_eq!(read, 1);
        assert_ne!(fourth, first);
        let fresh = {
            let mut hasher = Sha256::new();
            hasher.update(Sha256::digest(b""));
            for name in ["a.go", "b.go", "c.txt"] {
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(Sha256::digest(std::fs::read(dir.path().join(name)).unwrap()));
            }
            hex::encode(hasher.finalize())
        };
        assert_eq!(fourth, fresh, "the digest of what the files hold now");
    }

    #[test]
    fn the_input_digest_counts_the_settings_and_only_the_files_the_dependencies_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cmd")).unwrap();
        std::fs::write(dir.path().join("cmd/main.go"), "package main").unwrap();
        std::fs::write(dir.path().join("README.md"), "# app").unwrap();
        let globs = DependencyGlobs::new(&["**/*.go".to_string()], &[]).unwrap();
        let go_files = |settings: &str| Inputs {
            context: dir.path().to_path_buf(),
            dependencies: Some(globs.clone()),
            settings: settings.to_string(),
            modules: LocalModules::default(),
        };
        let first = input_digest(&go_files("-ldflags=-X main.v=1"));
        let everything = input_digest(&every_file(dir.path()));

        std::fs::write(dir.path().join("README.md"), "# the app").unwrap();
        assert_eq!(input_digest(&go_files("-ldflags=-X main.v=1")), first, "README.md is not a dependency");
        assert_ne!(input_digest(&every_file(dir.path())), everything, "without globs every file counts");
        assert_ne!(input_digest(&go_files("-ldflags=-X main.v=2")), first, "the settings count");
        std::fs::write(dir.path().join("cmd/main.go"), "package main // edited").unwrap();
        assert_ne!(input_digest(&go_files("-ldflags=-X main.v=1")), first, "a Go file counts");
    }

    #[test]
    fn go_layouts_translate() {
        assert_eq!(go_layout_to_chrono("2006-01-02_15-04-05.999_MST"), "%Y-%m-%d_%H-%M-%S%.3f_%Z");
        assert_eq!(go_layout_to_chrono("20060102"), "%Y%m%d");
    }

    #[test]
    fn policies() {
        let dir = tempfile::tempdir().unwrap();
        let vars: BTreeMap<String, String> = [("VERSION".to_string(), "1.2.3".to_string())].into();
        let inputs = every_file(dir.path());
        let env: TagPolicy = serde_yaml_ng::from_str("envTemplate: {template: 'v{{.VERSION}}'}").unwrap();
        assert_eq!(resolve(Some(&env), &inputs, &vars).unwrap(), "v1.2.3");
        let sha: TagPolicy = serde_yaml_ng::from_str("sha256: {}").unwrap();
        assert_eq!(resolve(Some(&sha), &inputs, &vars).unwrap(), "latest");
        // Outside git the gitCommit tagger falls back to latest.
        assert_eq!(resolve(None, &inputs, &vars).unwrap(), "latest");
        std::fs::write(dir.path().join("a.go"), "package a").unwrap();
        let digest: TagPolicy = serde_yaml_ng::from_str("inputDigest: {}").unwrap();
        let one = resolve(Some(&digest), &inputs, &vars).unwrap();
        std::fs::write(dir.path().join("a.go"), "package b").unwrap();
        assert_ne!(one, resolve(Some(&digest), &inputs, &vars).unwrap());
        let two: TagPolicy = serde_yaml_ng::from_str("sha256: {}\ninputDigest: {}").unwrap();
        assert!(resolve(Some(&two), &inputs, &vars).is_err());
        let bad: TagPolicy = serde_yaml_ng::from_str("gitCommit: {variant: Nope}").unwrap();
        assert!(resolve(Some(&bad), &inputs, &vars).unwrap_err().contains("Nope"));
    }
}
