//! Reading and writing go's build cache (`GOCACHE`) the way the go command does, for packages
//! kodev compiles itself (see `relink`): the next `go build` then finds them where it would have
//! put them, and `go build -n` agrees that the binary is up to date.
//!
//! An action's entry is `<dir>/<first two hex digits>/<action ID hex>-a`, one line
//! `v1 <action ID hex> <output ID hex> <size, 20 wide> <unix nanoseconds, 20 wide>\n`; its output
//! is `<dir>/<xx>/<output ID hex>-d`, where the output ID is the SHA-256 of the output's bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Length of an entry line (`cmd/go/internal/cache`'s `entrySize`).
const ENTRY_SIZE: usize = 2 + 1 + 64 + 1 + 64 + 1 + 20 + 1 + 20 + 1;

fn file_in(cache: &Path, id_hex: &str, kind: &str) -> PathBuf {
    cache.join(id_hex.get(..2).unwrap_or_default()).join(format!("{id_hex}-{kind}"))
}

/// Where go keeps the entry of action `action_hex`: without it, go runs the action again.
pub fn entry_path(cache: &Path, action_hex: &str) -> PathBuf {
    file_in(cache, action_hex, "a")
}

/// The file go keeps as the output of action `action_hex`, if its entry is there and its
/// output has the size the entry names.
pub fn output_of(cache: &Path, action_hex: &str) -> Option<PathBuf> {
    let entry = std::fs::read(entry_path(cache, action_hex)).ok()?;
    if entry.len() != ENTRY_SIZE || !entry.starts_with(b"v1 ") || entry[ENTRY_SIZE - 1] != b'\n' {
        return None;
    }
    let text = std::str::from_utf8(&entry).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let (_, action, output, size) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    if action != action_hex {
        return None;
    }
    let size: u64 = size.parse().ok()?;
    let path = file_in(cache, output, "d");
    (std::fs::metadata(&path).ok()?.len() == size).then_some(path)
}

/// go's `cache.Subkey(parent, desc)`: the action ID under which go keeps a side output of an
/// action (a compile's `stdout`).
pub fn subkey(parent_hex: &str, desc: &str) -> Option<String> {
    let parent = hex::decode(parent_hex).ok().filter(|p| p.len() == 32)?;
    let mut hasher = Sha256::new();
    hasher.update(b"subkey:");
    hasher.update(&parent);
    hasher.update(desc.as_bytes());
    Some(hex::encode(hasher.finalize()))
}

/// Write `bytes` to `path` through a temporary file beside it: a go command reading the cache at
/// the same time sees the whole file or none.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// go's `Cache.Put`: keep `bytes` as the output of action `action_hex`. Returns the output's path.
pub fn put(cache: &Path, action_hex: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let output = hex::encode(Sha256::digest(bytes));
    let path = file_in(cache, &output, "d");
    // Outputs are named by their content: one already there is the same bytes.
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        write_whole(&path, bytes)?;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let entry = format!("v1 {action_hex} {output} {:>20} {:>20}\n", bytes.len(), now);
    if entry.len() != ENTRY_SIZE {
        return Err(std::io::Error::other("an action ID that is not a SHA-256"));
    }
    write_whole(&entry_path(cache, action_hex), entry.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_put_is_found_under_its_action() {
        let cache = tempfile::tempdir().unwrap();
        let action = hex::encode(Sha256::digest(b"some action"));
        assert_eq!(output_of(cache.path(), &action), None);
        let kept = put(cache.path(), &action, b"archive bytes").unwrap();
        assert_eq!(output_of(cache.path(), &action), Some(kept.clone()));
        assert_eq!(std::fs::read(&kept).unwrap(), b"archive bytes");
        let output = hex::encode(Sha256::digest(b"archive bytes"));
        assert_eq!(kept, cache.path().join(&output[..2]).join(format!("{output}-d")));
        let entry = std::fs::read_to_string(cache.path().join(&action[..2]).join(format!("{action}-a"))).unwrap();
        assert_eq!(entry.len(), ENTRY_SIZE);
        assert!(entry.starts_with(&format!("v1 {action} {output}                   13 ")), "{entry:?}");
        // A truncated output is no output.
        std::fs::write(&kept, b"archive").unwrap();
        assert_eq!(output_of(cache.path(), &action), None);
    }
}
