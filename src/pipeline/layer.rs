//! ko's two layers — kodata and the binary — built as deterministic gzip'd tarballs,
//! hashed (uncompressed diff_id and compressed digest) in the same streaming pass.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::tarball::{EntryHeader, EntryKind, TarWriter};
use crate::error::{KodevError, Result};

/// Where ko puts kodata inside the image.
pub const KODATA_ROOT: &str = "/var/run/ko";
/// Where ko puts the binary inside the image.
pub const APP_DIR: &str = "/ko-app";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Base,
    Kodata,
    Binary,
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerKind::Base => "base",
            LayerKind::Kodata => "kodata",
            LayerKind::Binary => "binary",
        })
    }
}

/// A compressed layer with both of its digests.
#[derive(Debug, Clone)]
pub struct Layer {
    pub kind: LayerKind,
    /// `sha256:` of the gzip'd bytes (the blob digest).
    pub digest: String,
    /// `sha256:` of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    pub size: u64,
    pub data: LayerBytes,
}

/// Where a layer's compressed bytes are.
#[derive(Debug, Clone)]
pub enum LayerBytes {
    Memory(Bytes),
    /// Not made this time: the binary was built before and its layer is already where it goes.
    /// Made again from the binary (same bytes, checked) if it is needed after all.
    FromBinary {
        path: PathBuf,
        name: String,
    },
}

impl Layer {
    fn in_memory(kind: LayerKind, digest: String, diff_id: String, data: impl Into<Bytes>) -> Layer {
        let data = data.into();
        Layer { kind, digest, diff_id, size: data.len() as u64, data: LayerBytes::Memory(data) }
    }

    /// The compressed bytes, compressing the binary again when they were not kept.
    pub fn bytes(&self) -> Result<Bytes> {
        match &self.data {
            LayerBytes::Memory(data) => Ok(data.clone()),
            LayerBytes::FromBinary { path, name } => {
                let again = binary_layer(path, name)?;
                if again.digest != self.digest {
                    return Err(KodevError::build(format!(
                        "the binary {} changed while its image was being published; build again",
                        path.display()
                    )));
                }
                again.bytes()
            }
        }
    }
}

/// What a binary's layer came to, remembered by the binary's Go build ID: a binary go did not
/// need to relink has the same build ID, so its layer need not be compressed or uploaded again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// Changes whenever the same binary would give different layer bytes (compressor, chunking, tar).
const LAYER_FORMAT: &str = "libdeflate-1/128KiB/probe-8KiB/v1";

/// The Go build ID of a little-endian ELF binary (the `Go` note near its start), if it has one.
/// It names the binary's content: the same ID means the same bytes.
pub fn go_build_id(binary: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(32 << 10);
    File::open(binary).ok()?.take(32 << 10).read_to_end(&mut head).ok()?;
    if !head.starts_with(b"\x7fELF") || head.get(5) != Some(&1) {
        return None;
    }
    // namesz 4, descsz, type 4, "Go\0\0", then the ID.
    const TAIL: &[u8] = b"\x04\x00\x00\x00Go\x00\x00";
    let at = head.windows(TAIL.len()).position(|w| w == TAIL)?;
    if at < 8 || head[at - 8..at - 4] != [4, 0, 0, 0] {
        return None;
    }
    let len = u32::from_le_bytes(head[at - 4..at].try_into().ok()?) as usize;
    let id = head.get(at + TAIL.len()..at + TAIL.len() + len)?;
    let id = std::str::from_utf8(id).ok()?;
    (id.contains('/') && id.chars().all(|c| c.is_ascii_graphic())).then(|| id.to_string())
}

fn record_path(cache: &Path, build_id: &str, name: &str) -> PathBuf {
    let key = hex::encode(Sha256::digest(format!("{LAYER_FORMAT}\0{name}\0{build_id}")));
    cache.join("layers").join(&key[..2]).join(key)
}

pub fn load_record(cache: &Path, build_id: &str, name: &str) -> Option<LayerRecord> {
    serde_json::from_slice(&std::fs::read(record_path(cache, build_id, name)).ok()?).ok()
}

/// Best effort: a record that cannot be written only costs a compression next time.
pub fn save_record(cache: &Path, build_id: &str, name: &str, layer: &Layer) {
    let record = LayerRecord { digest: layer.digest.clone(), diff_id: layer.diff_id.clone(), size: layer.size };
    let path = record_path(cache, build_id, name);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let bytes = serde_json::to_vec(&record).expect("records serialize");
    let _ = super::base::write_atomically(&path, &bytes);
}

/// The binary layer as a record says it is, without its bytes.
pub fn recorded_binary_layer(record: LayerRecord, binary: &Path, name: &str) -> Layer {
    Layer {
        kind: LayerKind::Binary,
        digest: record.digest,
        diff_id: record.diff_id,
        size: record.size,
        data: LayerBytes::FromBinary { path: binary.to_path_buf(), name: name.to_string() },
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Layers larger than this are compressed in parallel chunks.
const PARALLEL_THRESHOLD: usize = 2 << 20;
/// Each chunk becomes one gzip member; concatenated members are one valid gzip stream. Small
/// enough that the cores finish together and each chunk is judged on its own (below).
const CHUNK_SIZE: usize = 128 << 10;
/// A chunk whose first bytes do not shrink is stored, not compressed: Go binaries carry their
/// DWARF already zlib-compressed (a quarter of a typical binary), and deflating it again costs
/// time for nothing. The probe is part of the input, so the decision is reproducible.
const PROBE_SIZE: usize = 8 << 10;

fn compressor(level: i32) -> io::Result<libdeflater::Compressor> {
    let level = libdeflater::CompressionLvl::new(level).map_err(|e| io::Error::other(format!("{e:?}")))?;
    Ok(libdeflater::Compressor::new(level))
}

/// The two compressors a worker needs, made once per worker (each holds sizeable state).
struct Compressors {
    fast: libdeflater::Compressor,
    stored: libdeflater::Compressor,
}

impl Compressors {
    fn new() -> io::Result<Self> {
        Ok(Compressors { fast: compressor(1)?, stored: compressor(0)? })
    }

    /// One gzip member; a piece whose first bytes do not shrink is stored (see `PROBE_SIZE`).
    fn gzip(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let incompressible = data.len() > 2 * PROBE_SIZE && {
            let mut probe = vec![0u8; self.fast.gzip_compress_bound(PROBE_SIZE)];
            let probed = self.fast.gzip_compress(&data[..PROBE_SIZE], &mut probe).map_err(gzip_error)?;
            probed * 100 > PROBE_SIZE * 95
        };
        gzip_with(if incompressible { &mut self.stored } else { &mut self.fast }, data)
    }
}

fn gzip_error(e: libdeflater::CompressionError) -> io::Error {
    io::Error::other(format!("gzip: {e:?}"))
}

/// One gzip member. libdeflate at level 1 runs as fast as zlib's level 1 here and makes
/// 10–30% smaller Go binary layers (less to upload); its header is fixed (no name, mtime 0),
/// so the same input always gives the same bytes.
fn gzip_with(compressor: &mut libdeflater::Compressor, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; compressor.gzip_compress_bound(data.len())];
    let written = compressor.gzip_compress(data, &mut out).map_err(gzip_error)?;
    out.truncate(written);
    // Pieces are kept in the chunk memo: hold what was written, not the worst-case bound.
    out.shrink_to_fit();
    Ok(out)
}

/// One gzip member of a whole small layer, compressed throughout.
fn gzip_whole(data: &[u8]) -> io::Result<Vec<u8>> {
    gzip_with(&mut compressor(1)?, data)
}

/// An uncompressed tar, readable at any offset: in memory, or a header, a file and a trailer.
pub trait TarBytes: Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl TarBytes for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// A one-file tar without copying the file: header bytes, the file, padding and trailer.
struct FileTar {
    prefix: Vec<u8>,
    file: File,
    file_len: u64,
    suffix: Vec<u8>,
}

impl TarBytes for FileTar {
    fn len(&self) -> u64 {
        self.prefix.len() as u64 + self.file_len + self.suffix.len() as u64
    }
    fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let prefix_len = self.prefix.len() as u64;
        while !buf.is_empty() {
            let n = if offset < prefix_len {
                let part = &self.prefix[offset as usize..];
                let n = part.len().min(buf.len());
                buf[..n].copy_from_slice(&part[..n]);
                n
            } else if offset < prefix_len + self.file_len {
                let in_file = offset - prefix_len;
                let n = ((self.file_len - in_file) as usize).min(buf.len());
                self.file.read_exact_at(&mut buf[..n], in_file)?;
                n
            } else {
                let part = &self.suffix[(offset - prefix_len - self.file_len) as usize..];
                let n = part.len().min(buf.len());
                buf[..n].copy_from_slice(&part[..n]);
                n
            };
            offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

/// The input hash of one chunk.
type ChunkKey = [u8; 32];

/// Compressed chunks of recent layers, by the BLAKE3 hash of their input. An edit changes a
/// few chunks of a binary (often only the build ID near its start), and the others need not be
/// compressed again. Each chunk is its own gzip member, compressed without any context from
/// the others, so a reused member is byte for byte what compressing again would give: the
/// digest does not depend on what was remembered. Only the chunks of the latest layer of each
/// slot (artifact × platform × mode) are kept, and chunks made ahead of time from the linker's
/// output (see `precompress_binary`) until the layer is made.
#[derive(Default)]
pub struct ChunkMemo {
    inner: Mutex<MemoInner>,
    /// Wakes those waiting for a chunk someone else is compressing.
    finished: Condvar,
}

#[derive(Default)]
struct MemoInner {
    members: HashMap<ChunkKey, Bytes>,
    /// Chunks being compressed right now.
    in_progress: HashSet<ChunkKey>,
    slots: HashMap<String, Vec<ChunkKey>>,
}

/// A chunk, either already compressed or now the caller's to compress (and then `fulfil`).
enum Claim<'a> {
    Ready(Bytes),
    Mine(ClaimGuard<'a>),
}

/// The duty to compress one chunk; given up (others may take it) if dropped unfulfilled.
struct ClaimGuard<'a> {
    memo: &'a ChunkMemo,
    key: ChunkKey,
    done: bool,
}

impl ClaimGuard<'_> {
    fn fulfil(mut self, member: Bytes) {
        self.done = true;
        let mut inner = self.memo.lock();
        inner.in_progress.remove(&self.key);
        inner.members.insert(self.key, member);
        self.memo.finished.notify_all();
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.memo.lock().in_progress.remove(&self.key);
            self.memo.finished.notify_all();
        }
    }
}

impl ChunkMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compressed chunk for `key`: remembered, or waited for while another thread
    /// compresses it, or else claimed for the caller to compress.
    fn claim(&self, key: ChunkKey) -> Claim<'_> {
        let mut inner = self.lock();
        loop {
            if let Some(member) = inner.members.get(&key) {
                return Claim::Ready(member.clone());
            }
            if inner.in_progress.insert(key) {
                return Claim::Mine(ClaimGuard { memo: self, key, done: false });
            }
            inner = self.finished.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The chunk for `key` to compress, unless it is remembered or being compressed already.
    fn claim_if_unknown(&self, key: ChunkKey) -> Option<ClaimGuard<'_>> {
        let mut inner = self.lock();
        let unknown = !inner.members.contains_key(&key) && inner.in_progress.insert(key);
        // Made only when claimed: a guard dropped unfulfilled gives its key up (and locks).
        if unknown {
            Some(ClaimGuard { memo: self, key, done: false })
        } else {
            None
        }
    }

    /// Whether a chunk is remembered or being compressed.
    #[cfg(test)]
    fn knows(&self, key: &ChunkKey) -> bool {
        let inner = self.lock();
        inner.members.contains_key(key) || inner.in_progress.contains(key)
    }

    /// `slot`'s latest layer is made of `keys`: keep those, drop what no slot uses any more.
    fn settle(&self, slot: &str, keys: Vec<ChunkKey>) {
        let mut inner = self.lock();
        inner.slots.insert(slot.to_string(), keys);
        let MemoInner { members, slots, .. } = &mut *inner;
        let live: HashSet<&ChunkKey> = slots.values().flatten().collect();
        members.retain(|k, _| live.contains(k));
    }

    /// Bytes of compressed chunks held.
    pub fn held_bytes(&self) -> usize {
        self.lock().members.values().map(Bytes::len).sum()
    }
}

/// Receives a layer's compressed bytes in order while it is being compressed, so they can be
/// uploaded meanwhile; returning false stops the compression (nobody wants the layer any more).
pub type ChunkSink<'a> = &'a mut (dyn FnMut(&Bytes) -> bool + Send);

/// Compress an uncompressed tar into a layer.
pub fn compress_layer(kind: LayerKind, tar: impl TarBytes) -> io::Result<Layer> {
    compress_layer_streaming(kind, tar, &mut |_| true, None)
}

/// Compress an uncompressed tar into a layer, handing each compressed piece to `sink` in order.
/// Large layers are split into fixed 1 MiB chunks compressed on every core while another core
/// hashes the tar: the same input always gives the same bytes, whatever the core count, and no
/// more than a chunk per core is held uncompressed. The compressed digest is hashed as the
/// pieces come out, so it is ready when the last one is.
pub fn compress_layer_streaming(
    kind: LayerKind,
    tar: impl TarBytes,
    sink: ChunkSink,
    memo: Option<(&ChunkMemo, &str)>,
) -> io::Result<Layer> {
    let total = tar.len();
    if total <= PARALLEL_THRESHOLD as u64 {
        let mut all = vec![0u8; total as usize];
        tar.read_at(0, &mut all)?;
        let compressed = Bytes::from(gzip_whole(&all)?);
        if !sink(&compressed) {
            return Err(cancelled());
        }
        return Ok(Layer::in_memory(kind, sha256_digest(&compressed), sha256_digest(&all), compressed));
    }
    let chunk_count = total.div_ceil(CHUNK_SIZE as u64) as usize;
    let chunk_range = |i: usize| chunk_range(total, i);
    let workers = compression_workers();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done = Condvar::new();
    let results: Mutex<Vec<Option<io::Result<Bytes>>>> = Mutex::new((0..chunk_count).map(|_| None).collect());
    let keys: Mutex<Vec<ChunkKey>> = Mutex::new(vec![[0; 32]; chunk_count]);
    let tar = &tar;
    let (diff_id, compressed, digest) = std::thread::scope(|scope| {
        let diff = scope.spawn(|| -> io::Result<String> {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK_SIZE];
            for i in 0..chunk_count {
                if stop.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
                let (start, len) = chunk_range(i);
                tar.read_at(start, &mut buf[..len])?;
                hasher.update(&buf[..len]);
            }
            Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
        });
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![0u8; CHUNK_SIZE];
                let mut compressors = Compressors::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunk_count || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (start, len) = chunk_range(i);
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        tar.read_at(start, &mut buf[..len])?;
                        let Some((memo, _)) = memo else {
                            let compressors =
                                compressors.as_mut().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
                            return compressors.gzip(&buf[..len]).map(Bytes::from);
                        };
                        let key: ChunkKey = *blake3::hash(&buf[..len]).as_bytes();
                        keys.lock().unwrap_or_else(|e| e.into_inner())[i] = key;
                        match memo.claim(key) {
                            Claim::Ready(member) => Ok(member),
                            Claim::Mine(claim) => {
                                let compressors =
                                    compressors.as_mut().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
                                let member = Bytes::from(compressors.gzip(&buf[..len])?);
                                claim.fulfil(member.clone());
                                Ok(member)
                            }
                        }
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("compressing a chunk failed")));
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(out);
                    done.notify_all();
                }
            });
        }
        // This thread hands the pieces out in order as they are finished.
        let emitted = (|| -> io::Result<(Vec<u8>, String)> {
            let mut compressed = Vec::new();
            let mut hasher = Sha256::new();
            for i in 0..chunk_count {
                let part = {
                    let mut slots = results.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(part) = slots[i].take() {
                            break part;
                        }
                        slots = done.wait(slots).unwrap_or_else(|e| e.into_inner());
                    }
                }?;
                hasher.update(&part);
                if !sink(&part) {
                    return Err(cancelled());
                }
                compressed.extend_from_slice(&part);
            }
            Ok((compressed, format!("sha256:{}", hex::encode(hasher.finalize()))))
        })();
        if emitted.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let diff_id = diff.join().unwrap_or_else(|_| Err(io::Error::other("hashing the layer failed")));
        emitted.and_then(|(compressed, digest)| Ok((diff_id?, compressed, digest)))
    })?;
    if let Some((memo, slot)) = memo {
        memo.settle(slot, keys.into_inner().unwrap_or_else(|e| e.into_inner()));
    }
    Ok(Layer::in_memory(kind, digest, diff_id, compressed))
}

fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "layer no longer wanted")
}

fn new_tar() -> TarWriter<Vec<u8>> {
    TarWriter::new(Vec::new())
}

fn finish_layer(kind: LayerKind, tar: TarWriter<Vec<u8>>) -> io::Result<Layer> {
    compress_layer(kind, tar.finish()?)
}

/// The binary layer: `ko-app/` and `/ko-app/<name>`, mode 0555, mtime 0.
pub fn binary_layer(binary: &Path, name: &str) -> Result<Layer> {
    binary_layer_streaming(binary, name, &mut |_| true, None)
}

/// The binary layer, its compressed bytes handed to `sink` as they are made, reusing the
/// chunks `memo` holds (for its slot) from earlier builds.
pub fn binary_layer_streaming(
    binary: &Path,
    name: &str,
    sink: ChunkSink,
    memo: Option<(&ChunkMemo, &str)>,
) -> Result<Layer> {
    binary_tar(binary, name)
        .and_then(|tar| compress_layer_streaming(LayerKind::Binary, tar, sink, memo))
        .map_err(|e| KodevError::build(format!("cannot archive the binary {}: {e}", binary.display())))
}

/// The binary layer's tar, read from the binary as needed.
fn binary_tar(binary: &Path, name: &str) -> io::Result<FileTar> {
    let file = File::open(binary)?;
    let size = file.metadata()?.len();
    let path = format!("{APP_DIR}/{name}");
    let mut header = TarWriter::new(Vec::with_capacity(1024));
    header.append_header(&EntryHeader::ko("ko-app", EntryKind::Directory, 0, 0))?;
    header.append_header(&EntryHeader::ko(&path, EntryKind::File, size, 0))?;
    let prefix = header.into_inner();
    // Padding of the file to a 512-byte block, then the two-block trailer.
    let padding = (512 - (size % 512) as usize) % 512;
    let suffix = vec![0u8; padding + 1024];
    Ok(FileTar { prefix, file, file_len: size, suffix })
}

/// Compress the chunks of a binary's layer into `memo` ahead of time, from the linker's output
/// while go still hashes it and writes its final build ID into it. Whatever this pass read is
/// only a guess: the layer itself is made from the finished binary, and takes from the memo
/// only chunks whose input is byte for byte the same (the build ID's chunk is compressed
/// again). Stops taking new chunks once `wanted` is false (the layer itself is being made).
/// Returns how many chunks it compressed.
pub fn precompress_binary(binary: &Path, name: &str, memo: &ChunkMemo, wanted: &AtomicBool) -> io::Result<usize> {
    let tar = binary_tar(binary, name)?;
    let total = tar.len();
    if total <= PARALLEL_THRESHOLD as u64 {
        return Ok(0);
    }
    let chunk_count = total.div_ceil(CHUNK_SIZE as u64) as usize;
    let next = AtomicUsize::new(0);
    let made = AtomicUsize::new(0);
    let tar = &tar;
    std::thread::scope(|scope| {
        // One core fewer than the layer itself uses: go is still busy with the binary.
        let workers: Vec<_> = (0..compression_workers().saturating_sub(1).max(1))
            .map(|_| {
                scope.spawn(|| -> io::Result<()> {
                    let mut buf = vec![0u8; CHUNK_SIZE];
                    let mut compressors = Compressors::new()?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunk_count || !wanted.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let (start, len) = chunk_range(total, i);
                        tar.read_at(start, &mut buf[..len])?;
                        // Someone has it or is on it: no waiting here.
                        if let Some(claim) = memo.claim_if_unknown(*blake3::hash(&buf[..len]).as_bytes()) {
                            claim.fulfil(Bytes::from(compressors.gzip(&buf[..len])?));
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("compressing a chunk failed"))))
    })?;
    Ok(made.into_inner())
}

/// Where chunk `i` of a `total`-byte tar starts, and its length.
fn chunk_range(total: u64, i: usize) -> (u64, usize) {
    let start = i as u64 * CHUNK_SIZE as u64;
    (start, (total - start).min(CHUNK_SIZE as u64) as usize)
}

/// Threads that compress one layer's chunks.
fn compression_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8)
}

/// Inputs of the kodata layer.
#[derive(Debug, Clone)]
pub struct KodataSource {
    /// `<main package dir>/kodata`; it may not exist.
    pub dir: PathBuf,
    /// Symlinks must resolve inside this directory.
    pub allowed_root: PathBuf,
    /// mtime of every entry (`KO_DATA_DATE_EPOCH`, else 0).
    pub mtime: u64,
}

/// The kodata layer: `/var`, `/var/run`, `/var/run/ko`, then the kodata tree.
pub fn kodata_layer(source: &KodataSource) -> Result<Layer> {
    let mut tar = new_tar();
    let io_err = |e: io::Error| KodevError::build(format!("cannot archive kodata {}: {e}", source.dir.display()));
    for dir in ["/var", "/var/run", KODATA_ROOT] {
        tar.append_header(&EntryHeader::ko(dir, EntryKind::Directory, 0, source.mtime)).map_err(io_err)?;
    }
    if source.dir.is_dir() {
        let allowed = source.allowed_root.canonicalize().unwrap_or_else(|_| source.allowed_root.clone());
        walk(&mut tar, &source.dir, KODATA_ROOT, source, &allowed, &mut Vec::new())?;
    }
    finish_layer(LayerKind::Kodata, tar).map_err(io_err)
}

fn walk(
    tar: &mut TarWriter<Vec<u8>>,
    host_dir: &Path,
    image_dir: &str,
    source: &KodataSource,
    allowed_root: &Path,
    visiting: &mut Vec<PathBuf>,
) -> Result<()> {
    let io_err =
        |path: &Path, e: io::Error| KodevError::build(format!("cannot archive kodata {}: {e}", path.display()));
    let canonical = host_dir.canonicalize().map_err(|e| io_err(host_dir, e))?;
    if visiting.contains(&canonical) {
        return Err(KodevError::build(format!("kodata symlink loop at {}", host_dir.display())));
    }
    visiting.push(canonical);
    let mut entries: Vec<_> = std::fs::read_dir(host_dir)
        .map_err(|e| io_err(host_dir, e))?
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| io_err(host_dir, e))?;
    // Lexical order, as Go's filepath.Walk visits them.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let host_path = entry.path();
        let file_name = entry.file_name();
        let image_path = format!("{image_dir}/{}", file_name.to_string_lossy());
        let link_meta = std::fs::symlink_metadata(&host_path).map_err(|e| io_err(&host_path, e))?;
        let target = if link_meta.file_type().is_symlink() {
            let resolved = host_path.canonicalize().map_err(|e| io_err(&host_path, e))?;
            if !resolved.starts_with(allowed_root) {
                return Err(KodevError::build(format!(
                    "kodata symlink {} resolves to {}, outside {}; refusing to copy it into the image (set KO_DATA_PATH_ALLOWED_ROOT to widen the allowed root)",
                    host_path.display(),
                    resolved.display(),
                    allowed_root.display()
                )));
            }
            resolved
        } else {
            host_path.clone()
        };
        let meta = std::fs::metadata(&target).map_err(|e| io_err(&target, e))?;
        if meta.is_dir() {
            tar.append_header(&EntryHeader::ko(&image_path, EntryKind::Directory, 0, source.mtime))
                .map_err(|e| io_err(&host_path, e))?;
            walk(tar, &target, &image_path, source, allowed_root, visiting)?;
        } else if meta.is_file() {
            let file = File::open(&target).map_err(|e| io_err(&target, e))?;
            tar.append_file(&EntryHeader::ko(&image_path, EntryKind::File, meta.len(), source.mtime), file)
                .map_err(|e| io_err(&target, e))?;
        }
        // Sockets, fifos and devices are skipped, as ko does.
    }
    visiting.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_layer_without_copying_equals_the_plain_tar() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&binary, &data).unwrap();
        let streamed = binary_layer(&binary, "app").unwrap();
        let mut tar = TarWriter::new(Vec::new());
        tar.append_header(&EntryHeader::ko("ko-app", EntryKind::Directory, 0, 0)).unwrap();
        tar.append_file(&EntryHeader::ko("/ko-app/app", EntryKind::File, data.len() as u64, 0), &data[..]).unwrap();
        let plain = compress_layer(LayerKind::Binary, tar.finish().unwrap()).unwrap();
        assert_eq!(streamed.diff_id, plain.diff_id);
        assert_eq!(streamed.digest, plain.digest);
    }

    /// `n` pseudo-random bytes (xorshift), each mapped by `byte`: never repeating, so no two chunks are alike.
    fn noise(n: usize, seed: u64, byte: impl Fn(u64) -> u8) -> Vec<u8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                byte(state)
            })
            .collect()
    }

    fn decoded(layer: &Layer) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&layer.bytes().unwrap()[..]), &mut out)
            .unwrap();
        out
    }

    /// A little-endian ELF head carrying a Go build-ID note, then `body`.
    fn fake_go_binary(build_id: &str, body: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x7fELF\x02\x01\x01\x00".to_vec();
        bytes.resize(0xf78, 0);
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&(build_id.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(b"Go\0\0");
        bytes.extend_from_slice(build_id.as_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_recorded_layer_is_made_again_only_from_the_same_binary() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 13) as u8).collect();
        std::fs::write(&binary, fake_go_binary("aaaa/bbbb/cccc/dddd", &body)).unwrap();
        assert_eq!(go_build_id(&binary).as_deref(), Some("aaaa/bbbb/cccc/dddd"));

        let made = binary_layer(&binary, "app").unwrap();
        let cache = dir.path().join("cache");
        assert_eq!(load_record(&cache, "aaaa/bbbb/cccc/dddd", "app"), None);
        save_record(&cache, "aaaa/bbbb/cccc/dddd", "app", &made);
        let record = load_record(&cache, "aaaa/bbbb/cccc/dddd", "app").unwrap();
        assert_eq!(record, LayerRecord { digest: made.digest.clone(), diff_id: made.diff_id.clone(), size: made.size });
        // Another name is another layer (the path inside the image differs).
        assert_eq!(load_record(&cache, "aaaa/bbbb/cccc/dddd", "other"), None);

        let recorded = recorded_binary_layer(record, &binary, "app");
        assert_eq!(recorded.bytes().unwrap(), made.bytes().unwrap());
        std::fs::write(&binary, fake_go_binary("aaaa/bbbb/cccc/eeee", &body)).unwrap();
        let err = recorded.bytes().unwrap_err().to_string();
        assert!(err.contains("changed while its image was being published"), "{err}");
    }

    #[test]
    fn build_ids_are_read_only_from_go_elf_notes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"#!/bin/sh\necho not a binary\n").unwrap();
        assert_eq!(go_build_id(&path), None);
        let mut big_endian = fake_go_binary("a/b", b"");
        big_endian[5] = 2;
        std::fs::write(&path, big_endian).unwrap();
        assert_eq!(go_build_id(&path), None);
        std::fs::write(&path, fake_go_binary("no slash", b"")).unwrap();
        assert_eq!(go_build_id(&path), None);
        assert_eq!(go_build_id(&dir.path().join("missing")), None);
    }

    #[test]
    fn incompressible_and_compressible_chunks_round_trip() {
        // Pseudo-random bytes (already-compressed DWARF looks like this) then a compressible run.
        let mut data = noise(600_000, 0x2545_f491_4f6c_dd1d, |s| s as u8);
        data.extend((0..3_000_000u32).map(|i| (i % 7) as u8));
        let layer = compress_layer(LayerKind::Binary, data.clone()).unwrap();
        // Random bytes cannot shrink (stored, they cost their size and a few header bytes); the run nearly vanishes.
        assert!(layer.size > 600_000 && layer.size < 700_000, "{}", layer.size);
        assert_eq!(decoded(&layer), data);
    }

    #[test]
    fn remembered_chunks_give_the_same_bytes_and_only_the_latest_are_kept() {
        let memo = ChunkMemo::default();
        // No two chunks alike (the memo would hold a repeated chunk once), but compressible.
        let first = noise(3_000_000, 0x9e37_79b9_7f4a_7c15, |s| b'a' + (s % 16) as u8);
        let mut second = first.clone();
        second[10] ^= 0xff; // an edit in the first chunk only, like a new build ID
        let memo_layer = |data: &Vec<u8>| {
            compress_layer_streaming(LayerKind::Binary, data.clone(), &mut |_| true, Some((&memo, "app/amd64")))
                .unwrap()
        };
        let one = memo_layer(&first);
        let held_after_one = memo.held_bytes();
        assert_eq!(held_after_one as u64, one.size, "the memo holds exactly the latest layer's chunks");
        let two = memo_layer(&second);
        let fresh = compress_layer(LayerKind::Binary, second.clone()).unwrap();
        assert_eq!(two.digest, fresh.digest, "reused chunks change nothing in the bytes");
        assert_eq!(two.diff_id, fresh.diff_id);
        assert_eq!(two.bytes().unwrap(), fresh.bytes().unwrap());
        // The first layer's changed chunk is gone; the memo still holds one layer's worth.
        assert_eq!(memo.held_bytes() as u64, two.size);
        // Another slot keeps its own chunks beside it.
        let other: Vec<u8> = first.iter().map(|b| b.wrapping_add(1)).collect();
        let three =
            compress_layer_streaming(LayerKind::Binary, other, &mut |_| true, Some((&memo, "app/arm64"))).unwrap();
        assert_eq!(memo.held_bytes() as u64, two.size + three.size);
    }

    #[test]
    fn chunks_compressed_ahead_are_reused_only_where_the_binary_did_not_change_after() {
        let dir = tempfile::tempdir().unwrap();
        let linker_output = dir.path().join("a.out");
        let body = noise(3_000_000, 0x1234_5678_9abc_def1, |s| b'a' + (s % 16) as u8);
        let placeholder = fake_go_binary("aaaa/aaaa", &body);
        std::fs::write(&linker_output, &placeholder).unwrap();
        let memo = ChunkMemo::default();
        let made = precompress_binary(&linker_output, "app", &memo, &AtomicBool::new(true)).unwrap();
        let chunks = (placeholder.len() + 1024 + 1024).div_ceil(CHUNK_SIZE);
        assert!(made >= chunks - 1, "nearly every chunk is made ahead ({made} of {chunks})");

        // go then writes the final build ID into the binary (and, here, a byte in the middle changes too).
        let mut finished = fake_go_binary("aaaa/bbbb", &body);
        finished[1_500_000] ^= 0x55;
        std::fs::write(&linker_output, &finished).unwrap();
        let tar = binary_tar(&linker_output, "app").unwrap();
        let mut reusable = 0;
        let mut buf = vec![0u8; CHUNK_SIZE];
        for i in 0..chunks {
            let (start, len) = chunk_range(tar.len(), i);
            tar.read_at(start, &mut buf[..len]).unwrap();
            reusable += usize::from(memo.knows(blake3::hash(&buf[..len]).as_bytes()));
        }
        assert_eq!(reusable, chunks - 2, "all but the build ID's chunk and the changed one are ready");

        let layer = binary_layer_streaming(&linker_output, "app", &mut |_| true, Some((&memo, "app/amd64"))).unwrap();
        let fresh = binary_layer(&linker_output, "app").unwrap();
        assert_eq!(layer.digest, fresh.digest, "what was guessed ahead never reaches the layer");
        assert_eq!(layer.bytes().unwrap(), fresh.bytes().unwrap());
        assert_eq!(memo.held_bytes() as u64, layer.size, "guesses the layer did not use are dropped");

        // No longer wanted before it starts, nothing is made.
        let stopped =
            precompress_binary(&linker_output, "app", &ChunkMemo::default(), &AtomicBool::new(false)).unwrap();
        assert_eq!(stopped, 0);
    }

    #[test]
    fn a_chunk_being_compressed_is_waited_for_and_an_abandoned_one_taken_over() {
        let memo = ChunkMemo::default();
        let key = [7u8; 32];
        let Claim::Mine(first) = memo.claim(key) else { panic!("nobody had the chunk") };
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| match memo.claim(key) {
                Claim::Ready(member) => member,
                Claim::Mine(_) => panic!("the chunk was being compressed: wait for it"),
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            first.fulfil(Bytes::from_static(b"member"));
            assert_eq!(waiter.join().unwrap(), Bytes::from_static(b"member"));
        });
        // Ahead of time, a chunk being compressed is skipped, and stays the holder's.
        let held = [9u8; 32];
        let Claim::Mine(holder) = memo.claim(held) else { panic!("nobody had the chunk") };
        assert!(memo.claim_if_unknown(held).is_none());
        assert!(memo.knows(&held), "skipping a chunk does not give up its holder's claim");
        assert!(memo.claim_if_unknown(key).is_none(), "a remembered chunk is not made again");
        holder.fulfil(Bytes::from_static(b"held"));
        let other = [8u8; 32];
        let Claim::Mine(abandoned) = memo.claim(other) else { panic!("nobody had the chunk") };
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| matches!(memo.claim(other), Claim::Mine(_)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(abandoned);
            assert!(waiter.join().unwrap(), "a chunk given up is the waiter's to compress");
        });
        assert!(!memo.knows(&other));
    }

    #[test]
    fn parallel_compression_is_deterministic_and_decodes() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 7).collect();
        let one = compress_layer(LayerKind::Binary, data.clone()).unwrap();
        let two = compress_layer(LayerKind::Binary, data.clone()).unwrap();
        assert_eq!(one.digest, two.digest);
        assert_eq!(one.diff_id, sha256_digest(&data));
        assert_eq!(decoded(&one), data);
    }

    #[test]
    fn kodata_is_reproducible_and_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let kodata = root.path().join("app/kodata");
        std::fs::create_dir_all(kodata.join("sub")).unwrap();
        std::fs::write(kodata.join("b.txt"), "b").unwrap();
        std::fs::write(kodata.join("sub/a.txt"), "a").unwrap();
        let source = KodataSource { dir: kodata.clone(), allowed_root: root.path().to_path_buf(), mtime: 0 };
        let one = kodata_layer(&source).unwrap();
        let two = kodata_layer(&source).unwrap();
        assert_eq!(one.digest, two.digest);
        assert_eq!(one.diff_id, two.diff_id);

        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), kodata.join("leak")).unwrap();
        let err = kodata_layer(&source).unwrap_err().to_string();
        assert!(err.contains("leak") && err.contains("outside"), "{err}");
    }
}
