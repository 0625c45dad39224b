//! Trimming kodev's cache the way go trims its own build cache: what was not used for five
//! days goes, and the cache is looked through at most once a day.
//!
//! Only what kodev keeps per image grows without bound: a binary and its relink recipe per
//! artifact × platform × debug (`bin/`, tens of megabytes each for a large program), the
//! compressed pieces of its last layer (`chunks/`), and a small record per binary layer
//! (`layers/`). Each is marked used when a build uses it. Base images (by digest) and go's
//! scratch space are left to their own rules.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entries unused this long are removed (go's build cache uses the same).
const UNUSED_FOR: Duration = Duration::from_secs(5 * 24 * 3600);
/// How often the cache is looked through.
const TRIM_EVERY: Duration = Duration::from_secs(24 * 3600);
/// A used entry's modification time is moved forward only once it is this old, so that using
/// it costs a write at most once an hour.
const MARK_AFTER: Duration = Duration::from_secs(3600);

/// Say that `path` (a file or directory in the cache) was used now. Best effort.
pub fn mark_used(path: &Path) {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else { return };
    if modified.elapsed().is_ok_and(|age| age > MARK_AFTER) {
        if let Ok(file) = std::fs::File::open(path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }
}

/// Remove the entries of `bin/`, `chunks/` and `layers/` not used for five days, unless the
/// cache was looked through less than a day before `now` (`trim.txt` holds when). Returns
/// how many entries went.
pub fn trim(cache: &Path, now: SystemTime) -> usize {
    if !cache.is_dir() {
        return 0;
    }
    let stamp = cache.join("trim.txt");
    let last = std::fs::read_to_string(&stamp).ok().and_then(|t| t.trim().parse::<u64>().ok());
    if last.is_some_and(|secs| now.duration_since(UNIX_EPOCH + Duration::from_secs(secs)).is_ok_and(|d| d < TRIM_EVERY))
    {
        return 0;
    }
    // Written first, so that processes starting together do not all look through the cache.
    let Ok(now_secs) = now.duration_since(UNIX_EPOCH) else { return 0 };
    if std::fs::write(&stamp, format!("{}\n", now_secs.as_secs())).is_err() {
        return 0;
    }
    let unused = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| now.duration_since(modified).is_ok_and(|age| age > UNUSED_FOR))
    };
    let mut removed = 0;
    for binary_dir in entries(&cache.join("bin")) {
        if binary_dir.is_dir() && unused(&binary_dir) && std::fs::remove_dir_all(&binary_dir).is_ok() {
            removed += 1;
        }
    }
    let records = entries(&cache.join("layers")).into_iter().filter(|d| d.is_dir()).flat_map(|d| entries(&d));
    for file in entries(&cache.join("chunks")).into_iter().chain(records) {
        if file.is_file() && unused(&file) && std::fs::remove_file(&file).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|read| read.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn aged(path: &Path, age: Duration) {
        std::fs::File::open(path).unwrap().set_modified(SystemTime::now() - age).unwrap();
    }

    fn make(path: &Path, dir: bool, age: Duration) {
        std::fs::create_dir_all(if dir { path } else { path.parent().unwrap() }).unwrap();
        if dir {
            std::fs::write(path.join("app"), b"binary").unwrap();
        } else {
            std::fs::write(path, b"entry").unwrap();
        }
        aged(path, age);
    }

    #[test]
    fn entries_unused_for_five_days_go_at_most_once_a_day() {
        let cache = tempfile::tempdir().unwrap();
        let at = |rel: &str| cache.path().join(rel);
        make(&at("bin/old"), true, 6 * DAY);
        make(&at("bin/recent"), true, 4 * DAY);
        make(&at("chunks/old"), false, 6 * DAY);
        make(&at("chunks/recent"), false, Duration::ZERO);
        make(&at("layers/ab/old"), false, 6 * DAY);
        make(&at("layers/ab/recent"), false, DAY);
        make(&at("blobs/sha256/old"), false, 30 * DAY);

        assert_eq!(trim(cache.path(), SystemTime::now()), 3);
        assert!(!at("bin/old").exists() && !at("chunks/old").exists() && !at("layers/ab/old").exists());
        assert!(at("bin/recent/app").exists() && at("chunks/recent").exists() && at("layers/ab/recent").exists());
        assert!(at("blobs/sha256/old").exists(), "base images are not kodev's to trim this way");

        make(&at("bin/another"), true, 6 * DAY);
        assert_eq!(trim(cache.path(), SystemTime::now() + DAY / 2), 0, "looked through less than a day ago");
        assert_eq!(trim(cache.path(), SystemTime::now() + DAY + DAY / 2), 2, "a day later: another, and recent");
        assert!(!at("bin/another").exists() && !at("bin/recent").exists());
    }

    #[test]
    fn using_an_entry_keeps_it() {
        let cache = tempfile::tempdir().unwrap();
        let binary_dir = cache.path().join("bin/key");
        make(&binary_dir, true, 6 * DAY);
        mark_used(&binary_dir);
        assert_eq!(trim(cache.path(), SystemTime::now()), 0);
        assert!(binary_dir.join("app").exists());
    }

    #[test]
    fn no_cache_no_stamp() {
        let parent = tempfile::tempdir().unwrap();
        let cache = parent.path().join("kodev");
        assert_eq!(trim(&cache, SystemTime::now()), 0);
        assert!(!cache.exists(), "trimming does not make the cache");
    }
}
