//! `skaffold.env`: as Skaffold does, `KEY=value` lines in the directory kodev runs in are put
//! in the process environment before the flags are read, without replacing a variable that is
//! already set. So they reach templates, and flags through their `SKAFFOLD_` variables.
//!
//! The format is godotenv's, which Skaffold reads it with: `#` comments, an optional `export `,
//! values bare (a ` #` ends them), in single quotes (taken as written) or in double quotes
//! (with `\n`, `\t`, `\"` and `\\`); `${VAR}` and `$VAR` outside single quotes name a variable
//! of the environment or of an earlier line. Where Skaffold only warns about a line it cannot
//! read and then loads nothing, kodev stops with the file and line.

use std::collections::HashMap;
use std::path::Path;

use crate::error::KodevError;

pub const SKAFFOLD_ENV_FILE: &str = "skaffold.env";

/// The variables `path` sets, in order; an empty list when there is no such file.
pub fn read(path: &Path, environment: impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, KodevError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(path, None, format!("cannot read it: {e}"))),
    };
    let mut set: Vec<(String, String)> = Vec::new();
    let mut earlier: HashMap<String, String> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = |message: String| error(path, Some(index + 1), message);
        let statement = trimmed.strip_prefix("export ").map(str::trim_start).unwrap_or(trimmed);
        let Some((key, raw)) = statement.split_once('=') else {
            return Err(at(format!("expected KEY=value, got {trimmed:?}")));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(at(format!("{key:?} is not a variable name")));
        }
        let lookup = |name: &str| earlier.get(name).cloned().or_else(|| environment(name)).unwrap_or_default();
        let value = parse_value(raw.trim(), &lookup).map_err(at)?;
        earlier.insert(key.to_string(), value.clone());
        set.push((key.to_string(), value));
    }
    Ok(set)
}

/// Put the variables of `skaffold.env` in the current directory into this process's
/// environment, leaving those already set. Call before any thread starts.
pub fn load_into_process() -> Result<(), KodevError> {
    for (key, value) in read(Path::new(SKAFFOLD_ENV_FILE), |name| std::env::var(name).ok())? {
        if std::env::var_os(&key).is_none() {
            std::env::set_var(key, value);
        }
    }
    Ok(())
}

/// Forget the `SKAFFOLD_` variables that are set but empty, as a CI job's unset input leaves
/// them: an empty string flag is Skaffold's default (an empty `SKAFFOLD_TAG` means the tag
/// policy's tag), where clap would take the empty value. Call before any thread starts.
pub fn forget_empty_flag_variables() {
    for (name, value) in std::env::vars_os() {
        if value.is_empty() && name.to_str().is_some_and(|n| n.starts_with("SKAFFOLD_")) {
            std::env::remove_var(name);
        }
    }
}

fn error(path: &Path, line: Option<usize>, message: String) -> KodevError {
    KodevError::Config { file: path.to_path_buf(), line, column: None, field: None, message }
}

fn parse_value(raw: &str, lookup: &dyn Fn(&str) -> String) -> Result<String, String> {
    if let Some(rest) = raw.strip_prefix('\'') {
        let end = rest.find('\'').ok_or("a single quote is not closed")?;
        return after_quotes(&rest[end + 1..]).map(|()| rest[..end].to_string());
    }
    if let Some(rest) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    after_quotes(&rest[i + 1..])?;
                    return Ok(expand(&out, lookup));
                }
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(other) => out.push(other),
                    None => break,
                },
                _ => out.push(c),
            }
        }
        return Err("a double quote is not closed".to_string());
    }
    // Bare: a `#` after white space starts a comment.
    let bare = match raw.find(" #").or_else(|| raw.find("\t#")) {
        Some(comment) => raw[..comment].trim_end(),
        None => raw,
    };
    Ok(expand(bare, lookup))
}

/// What may follow a closing quote: white space, then nothing or a comment.
fn after_quotes(rest: &str) -> Result<(), String> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected {rest:?} after the closing quote"))
    }
}

/// `${NAME}` and `$NAME` replaced by their values (empty when unset); `\$` is a dollar.
fn expand(value: &str, lookup: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        if rest[..at].ends_with('\\') {
            out.push_str(&rest[..at - 1]);
            out.push('$');
            rest = &rest[at + 1..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) =
            match after.strip_prefix('{').and_then(|braced| braced.find('}').map(|end| (braced, end))) {
                Some((braced, end)) => (&braced[..end], end + 2),
                None => {
                    let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                    (&after[..len], len)
                }
            };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&lookup(name));
            rest = &after[consumed..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skaffold.env");
        std::fs::write(&path, text).unwrap();
        read(&path, |name| (name == "HOME_DIR").then(|| "/home/dev".to_string())).map_err(|e| e.to_string())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_what_godotenv_reads() {
        let text = "# a comment\n\nPLAIN=value\nexport EXPORTED = spaced  # a comment\nSINGLE='no $HOME_DIR # here'\nDOUBLE=\"line\\nnext \\\"q\\\" ${PLAIN}\"\nREF=$HOME_DIR/x and ${EXPORTED}\nEMPTY=\nHASH=a#b\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("PLAIN", "value"),
                ("EXPORTED", "spaced"),
                ("SINGLE", "no $HOME_DIR # here"),
                ("DOUBLE", "line\nnext \"q\" value"),
                ("REF", "/home/dev/x and spaced"),
                ("EMPTY", ""),
                ("HASH", "a#b"),
            ])
        );
    }

    #[test]
    fn a_line_it_cannot_read_names_the_file_and_line() {
        let e = parse("OK=1\nthis is not a setting\n").unwrap_err();
        assert!(e.contains("skaffold.env:2") && e.contains("expected KEY=value"), "{e}");
        let e = parse("A=\"open\n").unwrap_err();
        assert!(e.contains("skaffold.env:1") && e.contains("not closed"), "{e}");
        let e = parse("BAD KEY=1\n").unwrap_err();
        assert!(e.contains("is not a variable name"), "{e}");
    }

    #[test]
    fn no_file_sets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("skaffold.env"), |_| None).unwrap().is_empty());
    }
}
