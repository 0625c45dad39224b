//! What tells, without reading a file, that it is as it was.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A file's or directory's length, modification and change times, and inode. A rewrite moves
/// the change time, which no tool sets back, even when it keeps the length and puts the old
/// modification time back (`cp -p`, `touch -r`, a sync tool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    len: u64,
    modified_ns: i64,
    changed_ns: i64,
    inode: u64,
}

impl FileStamp {
    pub fn of(metadata: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            len: metadata.len(),
            modified_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            changed_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
            inode: metadata.ino(),
        }
    }

    /// None when there is nothing at `path` (or it cannot be read).
    pub fn read(path: &Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }

    /// Whether the file was last modified before `ns` (nanoseconds since the Unix epoch).
    pub fn modified_before(&self, ns: i64) -> bool {
        self.modified_ns < ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_same_length_rewrite_with_its_old_modification_time_put_back_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.go");
        std::fs::write(&path, "package a").unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let before = FileStamp::read(&path).unwrap();
        // The change time moves with the clock's tick: wait for one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, b"package b").unwrap();
        file.set_modified(modified).unwrap();
        let after = FileStamp::read(&path).unwrap();
        assert_eq!((after.len, after.modified_ns, after.inode), (before.len, before.modified_ns, before.inode));
        assert_ne!(after, before, "the change time tells");
        assert_eq!(FileStamp::read(&dir.path().join("missing")), None);
    }
}
