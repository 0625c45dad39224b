//! ko's two layers — kodata and the binary — built as deterministic gzip'd tarballs,
//! hashed (uncompressed diff_id and compressed digest) in the same streaming pass.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use super::relink::go_build_id;
use super::tarball::{EntryHeader, EntryKind, TarWriter};
use crate::error::{KodevError, Result};

/// Where ko puts kodata inside the image.
pub const KODATA_ROOT: &str = "/var/run/ko";
/// Where ko puts the binary inside the image.
pub const APP_DIR: &str = "/ko-app";

/// The binary's file in the image: `/ko-app/<name>`, with the `security.capability` attribute
/// `.ko.yaml`'s `linux_capabilities` asks for (see `pipeline::caps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFile {
    pub name: String,
    pub capabilities: Option<Vec<u8>>,
}

impl AppFile {
    pub fn named(name: &str) -> AppFile {
        AppFile { name: name.to_string(), capabilities: None }
    }
}

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
    /// The compressed pieces in order. A large layer's pieces are the chunk memo's own (shared,
    /// not copied): when the layer streamed to the registry, nothing ever joins them.
    Memory(Arc<[Bytes]>),
    /// Not made this time: the binary was built before and its layer is already where it goes.
    /// Made again from the binary (same bytes, checked) if it is needed after all.
    FromBinary { path: PathBuf, app: AppFile },
}

impl Layer {
    fn in_memory(kind: LayerKind, digest: String, diff_id: String, pieces: Vec<Bytes>) -> Layer {
        let size = pieces.iter().map(|piece| piece.len() as u64).sum();
        Layer { kind, digest, diff_id, size, data: LayerBytes::Memory(pieces.into()) }
    }

    /// The compressed bytes in one buffer (joined now: only uploads of the whole layer and
    /// OCI layouts need that), compressing the binary again when they were not kept.
    pub fn bytes(&self) -> Result<Bytes> {
        match &self.data {
            LayerBytes::Memory(pieces) => Ok(match &pieces[..] {
                [one] => one.clone(),
                _ => Bytes::from(pieces.concat()),
            }),
            LayerBytes::FromBinary { path, app } => {
                let again = binary_layer(path, app)?;
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
const LAYER_FORMAT: &str = "libdeflate-1/head-8K/gear-cut-96K-32K-512K/probes-8KiB/v4";

fn record_path(cache: &Path, build_id: &str, app: &AppFile) -> PathBuf {
    let capabilities = app.capabilities.as_deref().map(hex::encode).unwrap_or_default();
    let key = hex::encode(Sha256::digest(format!("{LAYER_FORMAT}\0{}\0{capabilities}\0{build_id}", app.name)));
    cache.join("layers").join(&key[..2]).join(key)
}

pub fn load_record(cache: &Path, build_id: &str, app: &AppFile) -> Option<LayerRecord> {
    let path = record_path(cache, build_id, app);
    let record = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    super::trim::mark_used(&path);
    Some(record)
}

/// Best effort: a record that cannot be written only costs a compression next time.
pub fn save_record(cache: &Path, build_id: &str, app: &AppFile, layer: &Layer) {
    let record = LayerRecord { digest: layer.digest.clone(), diff_id: layer.diff_id.clone(), size: layer.size };
    let path = record_path(cache, build_id, app);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let bytes = serde_json::to_vec(&record).expect("records serialize");
    let _ = super::base::write_atomically(&path, &bytes);
}

/// The binary layer as a record says it is, without its bytes.
pub fn recorded_binary_layer(record: LayerRecord, binary: &Path, app: &AppFile) -> Layer {
    Layer {
        kind: LayerKind::Binary,
        digest: record.digest,
        diff_id: record.diff_id,
        size: record.size,
        data: LayerBytes::FromBinary { path: binary.to_path_buf(), app: app.clone() },
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Layers larger than this are compressed in parallel chunks.
const PARALLEL_THRESHOLD: usize = 2 << 20;
/// Each chunk becomes one gzip member; concatenated members are one valid gzip stream. Chunks
/// are cut where the content says, not at fixed offsets: a cut follows a gear rolling hash of
/// the 64 bytes before it. An edit that moves everything after it (a longer string, more
/// code) moves the cuts with the bytes, so the chunks after it come out the same again and
/// are reused; at fixed offsets every chunk after the edit would differ.
const MIN_CHUNK: usize = 96 << 10;
const MAX_CHUNK: usize = 512 << 10;
/// Cut where the hash's top 17 bits are all zero: on average 128 KiB past the minimum.
const CUT_MASK: u64 = ((1 << 15) - 1) << 49;
/// The hash at a byte depends only on the bytes this far back (each step shifts one bit out).
const HASH_WINDOW: usize = 64;
/// The first chunk is the tar's first 8 KiB, cut there whatever the bytes: a Go binary's
/// build ID, the only bytes go changes after its linker is done, sits in it (the ELF note
/// 3976 bytes into the binary, behind the tar's two headers). Every later chunk can then be
/// compressed from the linker's output ahead of go, and once go is done the stream to the
/// registry starts after compressing just this small chunk.
const HEAD_CHUNK: usize = 8 << 10;
/// How much of the tar the diff-ID hasher reads at once.
const READ_BLOCK: usize = 256 << 10;
/// How much the cutter reads at once: about what it hashes past each chunk's minimum.
const CUT_READ: usize = 32 << 10;
/// One fixed random value per byte value: part of the layer format, never to change.
static GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        table[i] = x;
        i += 1;
    }
    table
}

/// Finds the content-defined cuts (see `MIN_CHUNK`) of a tar read front to back in blocks.
/// The cuts depend only on the bytes, not on how they are split into blocks.
struct Cutter {
    total: u64,
    /// Where the chunk being cut starts.
    start: u64,
    hash: u64,
    /// The head chunk (see `HEAD_CHUNK`) is yet to be handed out.
    head_pending: bool,
}

impl Cutter {
    fn new(total: u64) -> Self {
        let head = total > (HEAD_CHUNK + MIN_CHUNK) as u64;
        Cutter { total, start: if head { HEAD_CHUNK as u64 } else { 0 }, hash: 0, head_pending: head }
    }

    /// A cutter that goes on from a cut at `start` (past the head chunk): the cuts after a
    /// cut depend only on the bytes from there on, so they are those a cutter from the start
    /// would make.
    fn resume(total: u64, start: u64) -> Self {
        Cutter { total, start, hash: 0, head_pending: false }
    }

    /// Hand out the head chunk first, once; false when `on_chunk` wants no more.
    fn emit_head(&mut self, on_chunk: &mut impl FnMut(u64, usize) -> bool) -> bool {
        !std::mem::take(&mut self.head_pending) || on_chunk(0, HEAD_CHUNK)
    }

    /// The first byte the cuts still depend on: blocks before it need not be read.
    fn next_needed(&self) -> u64 {
        self.start + (MIN_CHUNK - HASH_WINDOW) as u64
    }

    /// The next block, at `offset` (blocks come in order; a gap may skip only bytes before
    /// `next_needed`); `on_chunk` gets each
    /// chunk `(start, len)` that ends in it. False when `on_chunk` wants no more.
    fn feed(&mut self, offset: u64, block: &[u8], on_chunk: &mut impl FnMut(u64, usize) -> bool) -> bool {
        if !self.emit_head(on_chunk) {
            return false;
        }
        let end = offset + block.len() as u64;
        loop {
            // Hashing starts a window before the first place a cut may go, so that place sees a
            // full window; only bytes from there on are hashed.
            let scan_from = self.next_needed();
            let first_cut_byte = self.start + MIN_CHUNK as u64 - 1;
            let limit = self.total.min(self.start + MAX_CHUNK as u64);
            let (from, to) = (scan_from.max(offset), limit.min(end));
            if from >= to {
                return true;
            }
            let warm_end = first_cut_byte.clamp(from, to);
            for &byte in &block[(from - offset) as usize..(warm_end - offset) as usize] {
                self.hash = (self.hash << 1).wrapping_add(GEAR[byte as usize]);
            }
            let mut cut = None;
            for (k, &byte) in block[(warm_end - offset) as usize..(to - offset) as usize].iter().enumerate() {
                self.hash = (self.hash << 1).wrapping_add(GEAR[byte as usize]);
                if self.hash & CUT_MASK == 0 {
                    cut = Some(warm_end + k as u64 + 1);
                    break;
                }
            }
            let cut = match cut {
                Some(cut) => cut,
                None if to == limit => limit,
                None => return true,
            };
            if !on_chunk(self.start, (cut - self.start) as usize) {
                return false;
            }
            self.start = cut;
            self.hash = 0;
        }
    }

    /// The end of the tar: the rest, too short to cut, is the last chunk.
    fn finish(&mut self, on_chunk: &mut impl FnMut(u64, usize) -> bool) {
        if !self.emit_head(on_chunk) {
            return;
        }
        if self.start < self.total {
            on_chunk(self.start, (self.total - self.start) as usize);
            self.start = self.total;
        }
    }
}

/// Cut a tar into content-defined chunks, handing each `(start, len)` to `on_chunk` in order;
/// stops early when it returns false. Reads only the bytes the cuts depend on (about a quarter).
#[cfg(test)]
fn cut_chunks(tar: &impl TarBytes, on_chunk: impl FnMut(u64, usize) -> bool) -> io::Result<()> {
    cut_chunks_with(tar, Cutter::new(tar.len()), on_chunk)
}

fn cut_chunks_with(
    tar: &impl TarBytes,
    mut cutter: Cutter,
    mut on_chunk: impl FnMut(u64, usize) -> bool,
) -> io::Result<()> {
    let total = tar.len();
    let mut buf = vec![0u8; CUT_READ];
    let mut offset = 0;
    loop {
        offset = offset.max(cutter.next_needed());
        if offset >= total {
            break;
        }
        let len = (total - offset).min(CUT_READ as u64) as usize;
        tar.read_at(offset, &mut buf[..len])?;
        if !cutter.feed(offset, &buf[..len], &mut on_chunk) {
            return Ok(());
        }
        offset += len as u64;
    }
    cutter.finish(&mut on_chunk);
    Ok(())
}

/// The chunks of one layer on their way through the workers: one thread cuts them, workers
/// take them as they are cut, and results come back in any order.
struct ChunkPipeline<T> {
    state: Mutex<PipelineState<T>>,
    /// Wakes workers: a chunk was cut, or there will be no more.
    work_ready: Condvar,
    /// Wakes the consumer: a result came, or there will be no more.
    result_ready: Condvar,
    stop: AtomicBool,
}

struct PipelineState<T> {
    chunks: Vec<(u64, usize, Option<ChunkKey>)>,
    next: usize,
    /// Set when the cutter is done: how it ended.
    cut: Option<std::result::Result<(), String>>,
    results: Vec<Option<io::Result<T>>>,
}

impl<T> ChunkPipeline<T> {
    fn new() -> Self {
        let state = PipelineState { chunks: Vec::new(), next: 0, cut: None, results: Vec::new() };
        ChunkPipeline {
            state: Mutex::new(state),
            work_ready: Condvar::new(),
            result_ready: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipelineState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chunk was cut (with its key when it was cut and keyed ahead); false once nobody
    /// wants more.
    fn add_chunk(&self, start: u64, len: usize, key: Option<ChunkKey>) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut state = self.lock();
        state.chunks.push((start, len, key));
        state.results.push(None);
        self.work_ready.notify_one();
        true
    }

    fn cut_finished(&self, how: std::result::Result<(), String>) {
        self.lock().cut = Some(how);
        self.work_ready.notify_all();
        self.result_ready.notify_all();
    }

    /// The next chunk for a worker: `(index, start, len, key)`, or None when there is no more work.
    fn take_work(&self) -> Option<(usize, u64, usize, Option<ChunkKey>)> {
        let mut state = self.lock();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(&(start, len, key)) = state.chunks.get(state.next) {
                let i = state.next;
                state.next += 1;
                return Some((i, start, len, key));
            }
            if state.cut.is_some() {
                return None;
            }
            state = self.work_ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn deliver(&self, i: usize, result: io::Result<T>) {
        self.lock().results[i] = Some(result);
        self.result_ready.notify_all();
    }

    /// Where chunk `i` is in the tar: `(start, len)`. Only for a chunk already cut.
    fn chunk(&self, i: usize) -> (u64, usize) {
        let (start, len, _) = self.lock().chunks[i];
        (start, len)
    }

    /// Chunk `i`'s result, waiting for it; None past the last chunk.
    fn result(&self, i: usize) -> Option<io::Result<T>> {
        let mut state = self.lock();
        loop {
            if let Some(result) = state.results.get_mut(i).and_then(Option::take) {
                return Some(result);
            }
            match &state.cut {
                Some(Err(e)) => return Some(Err(io::Error::other(e.clone()))),
                Some(Ok(())) if i >= state.chunks.len() => return None,
                _ => state = self.result_ready.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Nothing more is wanted: the cutter and the workers stop after what they are on.
    fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _state = self.lock();
        self.work_ready.notify_all();
        self.result_ready.notify_all();
    }
}

/// A chunk of a binary's tar, cut and keyed ahead of its layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyedChunk {
    start: u64,
    len: usize,
    key: ChunkKey,
}

/// The chunks after the head chunk that compressing ahead cut and keyed from the linker's
/// output, in order from the head chunk's end: a layer of the same bytes there can take them
/// as they are, and cut only what follows them (see [`KeyedAhead::hold_after`]).
#[derive(Debug, Clone, Default)]
pub struct KeyedAhead {
    /// The binary these were cut from: where it starts in its tar, its length, and its file
    /// (device, inode): a rename keeps it, a copy over it does not.
    binary_at: u64,
    binary_len: u64,
    file: (u64, u64),
    chunks: Vec<KeyedChunk>,
}

impl KeyedAhead {
    /// What still holds once `len` bytes were written at each of `offsets` of the binary (go's
    /// content ID, written after its linker is done): everything, when they all lie in the
    /// head chunk, which a layer always cuts and keys again; otherwise nothing.
    pub fn hold_after(self, offsets: &[u64], len: usize) -> Option<KeyedAhead> {
        offsets.iter().all(|&at| self.binary_at + at + len as u64 <= HEAD_CHUNK as u64).then_some(self)
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A chunk a pipeline's worker is given: where it is, its key when it was keyed ahead, and
/// its bytes, read only when asked for.
struct ChunkBytes<'a, B: TarBytes> {
    tar: &'a B,
    start: u64,
    len: usize,
    key: Option<ChunkKey>,
    buf: &'a mut [u8],
    read: bool,
}

impl<B: TarBytes> ChunkBytes<'_, B> {
    fn bytes(&mut self) -> io::Result<&[u8]> {
        if !self.read {
            self.tar.read_at(self.start, &mut self.buf[..self.len])?;
            self.read = true;
        }
        Ok(&self.buf[..self.len])
    }

    /// The chunk's key: as keyed ahead, else the BLAKE3 of its bytes.
    fn key(&mut self) -> io::Result<ChunkKey> {
        match self.key {
            Some(key) => Ok(key),
            None => Ok(*blake3::hash(self.bytes()?).as_bytes()),
        }
    }
}

/// Cut `tar` into chunks on one thread while `workers` threads run `work` on each chunk (with
/// a per-thread state from `new_worker`), and `consume` takes the results on the calling
/// thread. With chunks keyed `ahead`, the cuts are the head chunk, those, then the cutter's
/// from the end of the last of them. Whatever `consume` leaves is cancelled when it returns.
fn run_chunk_pipeline<T: Send, W, R, B: TarBytes>(
    tar: &B,
    ahead: &[KeyedChunk],
    workers: usize,
    new_worker: impl Fn() -> io::Result<W> + Sync,
    work: impl Fn(&mut W, &mut ChunkBytes<'_, B>) -> io::Result<T> + Sync,
    consume: impl FnOnce(&ChunkPipeline<T>) -> R,
) -> R {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let pipeline = ChunkPipeline::new();
    let (pipeline, new_worker, work) = (&pipeline, &new_worker, &work);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            crate::pipeline::priority::give_way_to_toolchain();
            let cut = catch_unwind(AssertUnwindSafe(|| {
                let cutter = match ahead.last() {
                    Some(last) => {
                        let given = std::iter::once((0, HEAD_CHUNK, None))
                            .chain(ahead.iter().map(|c| (c.start, c.len, Some(c.key))))
                            .all(|(start, len, key)| pipeline.add_chunk(start, len, key));
                        if !given {
                            return Ok(());
                        }
                        Cutter::resume(tar.len(), last.start + last.len as u64)
                    }
                    None => Cutter::new(tar.len()),
                };
                cut_chunks_with(tar, cutter, |start, len| pipeline.add_chunk(start, len, None))
            }));
            pipeline.cut_finished(match cut {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("cutting the layer into chunks failed".to_string()),
            });
        });
        for _ in 0..workers.max(1) {
            scope.spawn(move || {
                crate::pipeline::priority::give_way_to_toolchain();
                let mut state = new_worker();
                let mut buf = vec![0u8; MAX_CHUNK];
                while let Some((i, start, len, key)) = pipeline.take_work() {
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        let state = state.as_mut().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
                        let mut chunk = ChunkBytes { tar, start, len, key, buf: &mut buf, read: false };
                        work(state, &mut chunk)
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("compressing a chunk failed")));
                    pipeline.deliver(i, result);
                }
            });
        }
        // Cancelled also when `consume` panics, so the workers end and the scope can join them.
        let _cancel = CancelOnDrop(pipeline);
        consume(pipeline)
    })
}

struct CancelOnDrop<'a, T>(&'a ChunkPipeline<T>);

impl<T> Drop for CancelOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A chunk whose first and last bytes do not shrink is stored, not compressed: Go binaries
/// carry their DWARF already zlib-compressed (a quarter of a typical binary), and deflating it
/// again costs time for nothing. Both ends are probed because a chunk may start in the DWARF
/// and end in the symbol table. The probes are part of the input, so the decision is
/// reproducible.
const PROBE_SIZE: usize = 8 << 10;

fn compressor(level: i32) -> io::Result<libdeflater::Compressor> {
    let level = libdeflater::CompressionLvl::new(level).map_err(|e| io::Error::other(format!("{e:?}")))?;
    Ok(libdeflater::Compressor::new(level))
}

/// The two compressors a worker needs, made once per worker (each holds sizeable state), and
/// the buffer they write into.
struct Compressors {
    fast: libdeflater::Compressor,
    stored: libdeflater::Compressor,
    scratch: Vec<u8>,
}

impl Compressors {
    fn new() -> io::Result<Self> {
        Ok(Compressors { fast: compressor(1)?, stored: compressor(0)?, scratch: Vec::new() })
    }

    /// One gzip member; a piece whose ends do not shrink is stored (see `PROBE_SIZE`).
    fn gzip(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let incompressible = data.len() > 2 * PROBE_SIZE
            && !self.shrinks(&data[..PROBE_SIZE])?
            && !self.shrinks(&data[data.len() - PROBE_SIZE..])?;
        let compressor = if incompressible { &mut self.stored } else { &mut self.fast };
        let written = gzip_into(compressor, data, &mut self.scratch)?;
        Ok(self.scratch[..written].to_vec())
    }

    fn shrinks(&mut self, probe: &[u8]) -> io::Result<bool> {
        let written = gzip_into(&mut self.fast, probe, &mut self.scratch)?;
        Ok(written * 100 <= probe.len() * 95)
    }
}

fn gzip_error(e: libdeflater::CompressionError) -> io::Error {
    io::Error::other(format!("gzip: {e:?}"))
}

/// One gzip member, written into `scratch`; returns its length. libdeflate at level 1 runs as
/// fast as zlib's level 1 here and makes 10–30% smaller Go binary layers (less to upload); its
/// header is fixed (no name, mtime 0), so the same input always gives the same bytes. Callers
/// copy out the pieces they keep (in the chunk memo) at their exact size: a worst-case buffer
/// shrunk in place would leave the allocator a hole beside each kept piece, and a fresh one
/// per chunk would be zeroed each time.
fn gzip_into(compressor: &mut libdeflater::Compressor, data: &[u8], scratch: &mut Vec<u8>) -> io::Result<usize> {
    let bound = compressor.gzip_compress_bound(data.len());
    if scratch.len() < bound {
        scratch.resize(bound, 0);
    }
    compressor.gzip_compress(data, &mut scratch[..bound]).map_err(gzip_error)
}

/// One gzip member of a whole small layer, compressed throughout.
fn gzip_whole(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let written = gzip_into(&mut compressor(1)?, data, &mut out)?;
    out.truncate(written);
    Ok(out)
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

impl FileTar {
    fn identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }
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
/// output (see `precompress_binary`) until the layer is made; beyond `MEMO_BUDGET`, only the
/// slots built most recently.
pub struct ChunkMemo {
    inner: Mutex<MemoInner>,
    /// Wakes those waiting for a chunk someone else is compressing.
    finished: Condvar,
    /// Bytes of compressed chunks kept across builds (see `MEMO_BUDGET`).
    budget: usize,
}

/// What the memo may keep in memory: a session with many artifacts would otherwise hold every
/// one's last layer (ko's own source on two platforms is 45 MB). The slots built longest ago
/// are dropped first; their chunks are still in the cache (see `ChunkMemo::save_slot`), read
/// back when the slot builds again.
const MEMO_BUDGET: usize = 256 << 20;

impl Default for ChunkMemo {
    fn default() -> Self {
        ChunkMemo::with_budget(MEMO_BUDGET)
    }
}

#[derive(Default)]
struct MemoInner {
    members: HashMap<ChunkKey, Bytes>,
    /// Chunks being compressed right now.
    in_progress: HashSet<ChunkKey>,
    slots: HashMap<String, Vec<ChunkKey>>,
    /// Chunks compressed ahead for a slot's next layer (see `precompress_binary`), kept until
    /// that layer settles: another slot's layer settling meanwhile must not drop them.
    ahead: HashMap<String, HashSet<ChunkKey>>,
    /// When each slot was last settled or read back, on `clock`: the oldest go first.
    last_used: HashMap<String, u64>,
    clock: u64,
}

impl MemoInner {
    fn touch(&mut self, slot: &str) {
        self.clock += 1;
        self.last_used.insert(slot.to_string(), self.clock);
    }
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
    /// The chunk is compressed. `ahead_of` a slot's next layer (see `precompress_binary`), it
    /// is kept until that layer settles.
    fn fulfil(mut self, member: Bytes, ahead_of: Option<&str>) {
        self.done = true;
        let mut inner = self.memo.lock();
        inner.in_progress.remove(&self.key);
        inner.members.insert(self.key, member);
        if let Some(slot) = ahead_of {
            inner.ahead.entry(slot.to_string()).or_default().insert(self.key);
        }
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
    fn with_budget(budget: usize) -> Self {
        ChunkMemo { inner: Mutex::default(), finished: Condvar::new(), budget }
    }

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

    /// `slot`'s latest layer is made of `keys`: keep those, drop what no slot uses any more
    /// (and what was compressed ahead for this layer but not used), keeping what other slots'
    /// next layers had compressed ahead.
    fn settle(&self, slot: &str, keys: Vec<ChunkKey>) {
        let mut inner = self.lock();
        inner.slots.insert(slot.to_string(), keys);
        inner.ahead.remove(slot);
        inner.touch(slot);
        loop {
            let MemoInner { members, slots, ahead, .. } = &mut *inner;
            let live: HashSet<&ChunkKey> = slots.values().flatten().chain(ahead.values().flatten()).collect();
            members.retain(|k, _| live.contains(k));
            if members.values().map(Bytes::len).sum::<usize>() <= self.budget {
                return;
            }
            let oldest = inner
                .slots
                .keys()
                .filter(|other| *other != slot)
                .min_by_key(|other| inner.last_used.get(*other).copied().unwrap_or(0))
                .cloned();
            let Some(oldest) = oldest else { return };
            tracing::debug!(slot = %oldest, "over the memory budget: this slot's chunks are left to the cache");
            inner.slots.remove(&oldest);
            inner.last_used.remove(&oldest);
        }
    }

    /// Bytes of compressed chunks held.
    pub fn held_bytes(&self) -> usize {
        self.lock().members.values().map(Bytes::len).sum()
    }

    /// Write the chunks of `slot`'s latest layer to `path`, so that a later process (a
    /// one-shot build with the same cache, a restarted `kodev dev`) reuses them as a running
    /// `kodev dev` does.
    pub fn save_slot(&self, slot: &str, path: &Path) -> io::Result<()> {
        let entries: Vec<(ChunkKey, Bytes)> = {
            let inner = self.lock();
            let Some(keys) = inner.slots.get(slot) else { return Ok(()) };
            let mut seen = HashSet::new();
            keys.iter()
                .filter(|key| seen.insert(**key))
                .filter_map(|key| inner.members.get(key).map(|member| (*key, member.clone())))
                .collect()
        };
        let header = saved_chunks_header()?;
        // Written piece by piece, not gathered first: the memo already holds these bytes.
        super::base::write_atomically_with(path, |out| {
            out.write_all(&header)?;
            for (key, member) in entries {
                out.write_all(&key)?;
                out.write_all(blake3::hash(&member).as_bytes())?;
                out.write_all(&u32::try_from(member.len()).map_err(io::Error::other)?.to_le_bytes())?;
                out.write_all(&member)?;
            }
            Ok(())
        })
    }

    /// Take in the chunks `save_slot` wrote for `slot`, unless this memo already holds that
    /// slot. A file that does not check out whole (another layer format, a compressor that
    /// now gives other bytes, a truncated or altered chunk) is ignored. Returns how many
    /// chunks were taken in.
    pub fn load_slot(&self, slot: &str, path: &Path) -> usize {
        if self.lock().slots.contains_key(slot) {
            return 0;
        }
        let Some(entries) = std::fs::read(path).ok().and_then(|data| parse_saved_chunks(Bytes::from(data))) else {
            return 0;
        };
        let mut inner = self.lock();
        if inner.slots.contains_key(slot) {
            return 0;
        }
        let keys: Vec<ChunkKey> = entries.iter().map(|(key, _)| *key).collect();
        for (key, member) in entries {
            inner.members.entry(key).or_insert(member);
        }
        let taken = keys.len();
        inner.slots.insert(slot.to_string(), keys);
        inner.touch(slot);
        taken
    }
}

/// Each saved chunk: its input's BLAKE3 (the memo's key), its compressed bytes' BLAKE3, their length.
const SAVED_ENTRY_HEAD: usize = 32 + 32 + 4;

/// What a saved slot must start with to be read: the layer format, and the BLAKE3 of what
/// this build's compressor makes of a fixed probe. A compressor that compresses differently
/// (another libdeflate) would otherwise mix its chunks with remembered ones, and the same
/// input would no longer give the same digest on every machine.
fn saved_chunks_header() -> io::Result<Vec<u8>> {
    static PROBE: std::sync::OnceLock<std::result::Result<[u8; 32], String>> = std::sync::OnceLock::new();
    let probe = PROBE
        .get_or_init(|| {
            // Text-like bytes with repeats at many distances, so matching and Huffman coding both show.
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            let probe: Vec<u8> = (0..64 << 10)
                .map(|i: usize| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    if (state >> 60) < 5 {
                        b"kodev layer probe "[i % 18]
                    } else {
                        b'a' + ((state >> 33) % 26) as u8
                    }
                })
                .collect();
            Compressors::new()
                .and_then(|mut c| c.gzip(&probe))
                .map(|out| *blake3::hash(&out).as_bytes())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(io::Error::other)?;
    let mut header = format!("kodev-chunks\n{LAYER_FORMAT}\n").into_bytes();
    header.extend_from_slice(&probe);
    Ok(header)
}

fn parse_saved_chunks(data: Bytes) -> Option<Vec<(ChunkKey, Bytes)>> {
    let header = saved_chunks_header().ok()?;
    if !data.starts_with(&header) {
        return None;
    }
    let mut at = header.len();
    let mut entries = Vec::new();
    while at < data.len() {
        let head = data.get(at..at + SAVED_ENTRY_HEAD)?;
        let key: ChunkKey = head[..32].try_into().ok()?;
        let check: [u8; 32] = head[32..64].try_into().ok()?;
        let len = u32::from_le_bytes(head[64..].try_into().ok()?) as usize;
        let start = at + SAVED_ENTRY_HEAD;
        let member = data.slice(start..start.checked_add(len).filter(|end| *end <= data.len())?);
        if *blake3::hash(&member).as_bytes() != check {
            return None;
        }
        entries.push((key, member));
        at = start + len;
    }
    Some(entries)
}

/// Receives a layer's compressed bytes in order while it is being compressed, so they can be
/// uploaded meanwhile; returning false stops the compression (nobody wants the layer any more).
pub type ChunkSink<'a> = &'a mut (dyn FnMut(&Bytes) -> bool + Send);

/// What a layer's compression hands out while it runs, and what it may reuse.
#[derive(Default)]
pub struct Streaming<'a> {
    /// Gets the compressed pieces in order.
    pub sink: Option<ChunkSink<'a>>,
    /// Remembered chunks, and the slot whose chunks this layer replaces.
    pub memo: Option<(&'a ChunkMemo, &'a str)>,
    /// Gets the diff ID as soon as the tar is hashed, usually well before the compression
    /// ends: the image config (which names it) can go up meanwhile.
    pub on_diff_id: Option<DiffIdHook<'a>>,
    /// Chunks compressing ahead cut and keyed from these very bytes (see
    /// [`KeyedAhead::hold_after`]; `binary_layer_streaming` takes them only for the file they
    /// were cut from): taken as they are rather than read, cut and keyed again.
    pub keyed_ahead: Option<KeyedAhead>,
}

/// Called once with the layer's diff ID.
pub type DiffIdHook<'a> = Box<dyn FnOnce(&str) + Send + 'a>;

/// Compress an uncompressed tar into a layer.
pub fn compress_layer(kind: LayerKind, tar: impl TarBytes) -> io::Result<Layer> {
    compress_layer_streaming(kind, tar, Streaming::default())
}

/// Compress an uncompressed tar into a layer, handing each compressed piece to `sink` in order.
/// Large layers are cut into content-defined chunks (see `MIN_CHUNK`) compressed on every core
/// while another thread hashes the tar: the same input always gives the same bytes, whatever
/// the core count, and no more than a chunk per core is held uncompressed. The compressed
/// digest is hashed as the pieces come out, so it is ready when the last one is.
pub fn compress_layer_streaming(kind: LayerKind, tar: impl TarBytes, streaming: Streaming) -> io::Result<Layer> {
    let Streaming { sink, memo, on_diff_id, keyed_ahead } = streaming;
    let mut no_sink = |_: &Bytes| true;
    let sink: ChunkSink = sink.unwrap_or(&mut no_sink);
    let total = tar.len();
    if total <= PARALLEL_THRESHOLD as u64 {
        let mut all = vec![0u8; total as usize];
        tar.read_at(0, &mut all)?;
        let diff_id = sha256_digest(&all);
        if let Some(report) = on_diff_id {
            report(&diff_id);
        }
        let compressed = Bytes::from(gzip_whole(&all)?);
        if !sink(&compressed) {
            return Err(cancelled());
        }
        return Ok(Layer::in_memory(kind, sha256_digest(&compressed), diff_id, vec![compressed]));
    }
    // Keyed chunks are of no use without the memo that holds what they were compressed to.
    let ahead = keyed_ahead.filter(|_| memo.is_some()).unwrap_or_default();
    let mut keys = Vec::new();
    let reused_bytes = std::sync::atomic::AtomicU64::new(0);
    let compress_chunk =
        |compressors: &mut Compressors, chunk: &mut ChunkBytes<'_, _>| -> io::Result<(Bytes, ChunkKey)> {
            let Some((memo, _)) = memo else {
                return Ok((Bytes::from(compressors.gzip(chunk.bytes()?)?), [0; 32]));
            };
            let key = chunk.key()?;
            match memo.claim(key) {
                Claim::Ready(member) => {
                    reused_bytes.fetch_add(chunk.len as u64, Ordering::Relaxed);
                    Ok((member, key))
                }
                Claim::Mine(claim) => {
                    let member = Bytes::from(compressors.gzip(chunk.bytes()?)?);
                    claim.fulfil(member.clone(), None);
                    Ok((member, key))
                }
            }
        };
    let stop_hashing = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let (diff_id, compressed, digest) = std::thread::scope(|scope| {
        // The diff ID on a thread of its own: it reads every byte, the cutter only a quarter.
        let diff = scope.spawn(|| -> io::Result<String> {
            crate::pipeline::priority::give_way_to_toolchain();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; READ_BLOCK];
            let mut offset = 0;
            while offset < total {
                if stop_hashing.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
                let len = (total - offset).min(READ_BLOCK as u64) as usize;
                tar.read_at(offset, &mut buf[..len])?;
                hasher.update(&buf[..len]);
                offset += len as u64;
            }
            let diff_id = format!("sha256:{}", hex::encode(hasher.finalize()));
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "diff ID hashed");
            if let Some(report) = on_diff_id {
                report(&diff_id);
            }
            Ok(diff_id)
        });
        // This thread hands the pieces out in order as they are finished.
        let emitted = run_chunk_pipeline(
            &tar,
            &ahead.chunks,
            compression_workers(),
            Compressors::new,
            compress_chunk,
            |pipeline| {
                let mut compressed = Vec::new();
                let mut hasher = Sha256::new();
                let mut i = 0;
                while let Some(part) = pipeline.result(i) {
                    let (part, key) = part?;
                    keys.push(key);
                    hasher.update(&part);
                    if !sink(&part) {
                        return Err(cancelled());
                    }
                    compressed.push(part);
                    i += 1;
                }
                tracing::debug!(ms = started.elapsed().as_millis() as u64, chunks = i, "every chunk handed out");
                Ok((compressed, format!("sha256:{}", hex::encode(hasher.finalize()))))
            },
        );
        if emitted.is_err() {
            stop_hashing.store(true, Ordering::Relaxed);
        }
        let diff_id = diff.join().unwrap_or_else(|_| Err(io::Error::other("hashing the layer failed")));
        emitted.and_then(|(compressed, digest)| Ok((diff_id?, compressed, digest)))
    })?;
    if let Some((memo, slot)) = memo {
        let reused_bytes = reused_bytes.load(Ordering::Relaxed);
        let keyed_ahead = ahead.chunks.len();
        tracing::debug!(
            chunks = keys.len(),
            keyed_ahead,
            reused_bytes,
            total,
            "layer compressed, remembered chunks reused"
        );
        memo.settle(slot, keys);
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
pub fn binary_layer(binary: &Path, app: &AppFile) -> Result<Layer> {
    binary_layer_streaming(binary, app, Streaming::default())
}

/// The binary layer, handing out what it makes as it goes (see [`Streaming`]).
pub fn binary_layer_streaming(binary: &Path, app: &AppFile, mut streaming: Streaming) -> Result<Layer> {
    binary_tar(binary, app)
        .and_then(|tar| {
            let (file, binary_len) = (tar.identity()?, tar.file_len);
            // Only for the very file they were cut from, at the length it had then.
            streaming.keyed_ahead =
                streaming.keyed_ahead.take().filter(|keyed| keyed.file == file && keyed.binary_len == binary_len);
            compress_layer_streaming(LayerKind::Binary, tar, streaming)
        })
        .map_err(|e| KodevError::build(format!("cannot archive the binary {}: {e}", binary.display())))
}

/// The binary layer's tar, read from the binary as needed.
fn binary_tar(binary: &Path, app: &AppFile) -> io::Result<FileTar> {
    let file = File::open(binary)?;
    let size = file.metadata()?.len();
    let path = format!("{APP_DIR}/{}", app.name);
    let mut header = TarWriter::new(Vec::with_capacity(2048));
    header.append_header(&EntryHeader::ko("ko-app", EntryKind::Directory, 0, 0))?;
    let records: Vec<(&str, &[u8])> =
        app.capabilities.iter().map(|caps| ("SCHILY.xattr.security.capability", caps.as_slice())).collect();
    header.append_header_with(&EntryHeader::ko(&path, EntryKind::File, size, 0), &records)?;
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
/// Returns how many chunks it compressed, and the chunks after the head chunk it cut and keyed,
/// in order (for a layer made from bytes it knows to be these, see [`KeyedAhead::hold_after`]).
pub fn precompress_binary(
    binary: &Path,
    app: &AppFile,
    memo: &ChunkMemo,
    slot: &str,
    wanted: &AtomicBool,
) -> io::Result<(usize, KeyedAhead)> {
    let tar = binary_tar(binary, app)?;
    let mut keyed = KeyedAhead {
        binary_at: tar.prefix.len() as u64,
        binary_len: tar.file_len,
        file: tar.identity()?,
        chunks: Vec::new(),
    };
    if tar.len() <= PARALLEL_THRESHOLD as u64 {
        return Ok((0, keyed));
    }
    // The chunk's key and whether this compressed it; None once no longer wanted.
    let compress_ahead =
        |compressors: &mut Compressors, chunk: &mut ChunkBytes<'_, _>| -> io::Result<Option<(ChunkKey, bool)>> {
            if !wanted.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let key = chunk.key()?;
            // Someone has it or is on it: no waiting here.
            let Some(claim) = memo.claim_if_unknown(key) else { return Ok(Some((key, false))) };
            claim.fulfil(Bytes::from(compressors.gzip(chunk.bytes()?)?), Some(slot));
            Ok(Some((key, true)))
        };
    // One core fewer than the layer itself uses: go is still busy with the binary. (Every core
    // was tried: no change on hello with one platform over 30 paired runs, worse with two.)
    let workers = compression_workers().saturating_sub(1).max(1);
    run_chunk_pipeline(&tar, &[], workers, Compressors::new, compress_ahead, |pipeline| {
        let mut made = 0;
        let mut i = 0;
        while wanted.load(Ordering::Relaxed) {
            let Some(result) = pipeline.result(i) else { break };
            let Some((key, compressed)) = result? else { break };
            made += usize::from(compressed);
            let (start, len) = pipeline.chunk(i);
            // The head chunk holds the build ID go writes after this read: never kept.
            if start > 0 {
                keyed.chunks.push(KeyedChunk { start, len, key });
            }
            i += 1;
        }
        Ok((made, keyed))
    })
}

/// Threads that compress one layer's chunks.
pub fn compression_workers() -> usize {
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
        if meta.is_dir() && visiting.contains(&target) {
            // Followed, it would copy the same tree into itself without end.
            return Err(KodevError::build(format!(
                "kodata symlink {} points back to {}, a directory it is in: a loop",
                host_path.display(),
                target.display()
            )));
        }
        if meta.is_dir() {
            // ko writes the files of kodata only, no entry for a directory in it.
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
    fn a_kodata_symlink_to_a_directory_above_it_is_an_error_naming_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let kodata = dir.path().join("kodata");
        std::fs::create_dir_all(kodata.join("sub")).unwrap();
        std::fs::write(kodata.join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("..", kodata.join("sub/up")).unwrap();
        let source = KodataSource { dir: kodata.clone(), allowed_root: dir.path().to_path_buf(), mtime: 0 };
        let message = kodata_layer(&source).unwrap_err().to_string();
        let link = kodata.join("sub/up");
        assert!(message.contains(&link.display().to_string()) && message.contains("loop"), "names the link: {message}");
        // A link to a directory beside it (no loop) is followed.
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir_all(kodata.join("other")).unwrap();
        std::fs::write(kodata.join("other/b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("../other", &link).unwrap();
        assert!(kodata_layer(&source).is_ok());
    }

    #[test]
    fn binary_layer_without_copying_equals_the_plain_tar() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&binary, &data).unwrap();
        let streamed = binary_layer(&binary, &AppFile::named("app")).unwrap();
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

    /// The bytes of each chunk a tar is cut into.
    fn chunks_of(tar: &impl TarBytes) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        cut_chunks(tar, |start, len| {
            let mut chunk = vec![0u8; len];
            tar.read_at(start, &mut chunk).unwrap();
            chunks.push(chunk);
            true
        })
        .unwrap();
        chunks
    }

    #[test]
    fn cuts_cover_the_tar_within_the_chunk_bounds_and_depend_only_on_the_bytes() {
        let noisy = noise(6_000_000, 0x0123_4567_89ab_cdef, |s| s as u8);
        let zeros = vec![0u8; 3_000_000];
        for data in [noisy, zeros] {
            let chunks = chunks_of(&data);
            assert_eq!(chunks.concat(), data, "the chunks are the tar, in order");
            assert_eq!(chunks[0].len(), HEAD_CHUNK, "the head is cut first, whatever its bytes");
            let (last, rest) = chunks[1..].split_last().unwrap();
            assert!(rest.iter().all(|c| (MIN_CHUNK..=MAX_CHUNK).contains(&c.len())));
            assert!(last.len() <= MAX_CHUNK);
            // Fed in other blocks (odd sizes, splitting windows), the cuts are the same.
            let mut cutter = Cutter::new(data.len() as u64);
            let mut lens = Vec::new();
            let mut on_chunk = |_, len| {
                lens.push(len);
                true
            };
            for (n, block) in data.chunks(7_777).enumerate() {
                assert!(cutter.feed(n as u64 * 7_777, block, &mut on_chunk));
            }
            cutter.finish(&mut on_chunk);
            assert_eq!(lens, chunks.iter().map(Vec::len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn after_bytes_are_inserted_the_chunks_behind_them_are_the_same_again() {
        // An edit that makes a string longer moves everything after it; at fixed offsets every
        // later chunk would change.
        let memo = ChunkMemo::default();
        let before = noise(8_000_000, 0x5151_7272_9393_abab, |s| b'a' + (s % 20) as u8);
        let mut after = before.clone();
        after.splice(1_000_000..1_000_000, *b"inserted");
        let with_memo = |data: &Vec<u8>| {
            compress_layer_streaming(LayerKind::Binary, data.clone(), remembering(&memo, "app/amd64")).unwrap()
        };
        with_memo(&before);
        let after_chunks = chunks_of(&after);
        let known = after_chunks.iter().filter(|c| memo.knows(blake3::hash(c).as_bytes())).count();
        assert!(known + 2 >= after_chunks.len(), "{known} of {} chunks reusable", after_chunks.len());
        let layer = with_memo(&after);
        let fresh = compress_layer(LayerKind::Binary, after.clone()).unwrap();
        assert_eq!(layer.bytes().unwrap(), fresh.bytes().unwrap(), "reuse changes nothing in the bytes");
        assert_eq!(decoded(&layer), after);
    }

    fn remembering<'a>(memo: &'a ChunkMemo, slot: &'a str) -> Streaming<'a> {
        Streaming { memo: Some((memo, slot)), ..Default::default() }
    }

    fn decoded(layer: &Layer) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&layer.bytes().unwrap()[..]), &mut out)
            .unwrap();
        out
    }

    /// A 64-bit ELF file whose `.note.go.buildid` section holds `build_id`, then `body`; `little`
    /// picks the byte order.
    fn fake_elf(build_id: &str, body: &[u8], little: bool) -> Vec<u8> {
        // An unsigned field of `width` bytes in the file's byte order.
        let field = |value: u64, width: usize| {
            let bytes = value.to_le_bytes()[..width].to_vec();
            if little {
                bytes
            } else {
                bytes.into_iter().rev().collect()
            }
        };
        let (u16b, u32b, u64b) = (|v: u16| field(v.into(), 2), |v: u32| field(v.into(), 4), |v: u64| field(v, 8));
        const NOTE_AT: usize = 0xf78;
        let names = b"\0.note.go.buildid\0.shstrtab\0";
        let mut note = [u32b(4), u32b(build_id.len() as u32), u32b(4)].concat();
        note.extend_from_slice(b"Go\0\0");
        note.extend_from_slice(build_id.as_bytes());
        let names_at = NOTE_AT + note.len();
        let table_at = (names_at + names.len()).next_multiple_of(8);
        let section = |name: u32, offset: usize, size: usize| {
            [u32b(name), u32b(0), u64b(0), u64b(0), u64b(offset as u64), u64b(size as u64), vec![0; 24]].concat()
        };
        let mut bytes = b"\x7fELF\x02".to_vec();
        bytes.push(if little { 1 } else { 2 });
        bytes.resize(0x28, 0);
        bytes.extend(u64b(table_at as u64)); // e_shoff
        bytes.resize(0x3a, 0);
        bytes.extend([u16b(64), u16b(3), u16b(2)].concat()); // e_shentsize, e_shnum, e_shstrndx
        bytes.resize(NOTE_AT, 0);
        bytes.extend(note);
        bytes.extend_from_slice(names);
        bytes.resize(table_at, 0);
        bytes.extend(
            [section(0, 0, 0), section(1, NOTE_AT, names_at - NOTE_AT), section(19, names_at, names.len())].concat(),
        );
        bytes.extend_from_slice(body);
        bytes
    }

    fn fake_go_binary(build_id: &str, body: &[u8]) -> Vec<u8> {
        fake_elf(build_id, body, true)
    }

    #[test]
    fn a_recorded_layer_is_made_again_only_from_the_same_binary() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 13) as u8).collect();
        std::fs::write(&binary, fake_go_binary("aaaa/bbbb/cccc/dddd", &body)).unwrap();
        assert_eq!(go_build_id(&binary).as_deref(), Some("aaaa/bbbb/cccc/dddd"));

        let made = binary_layer(&binary, &AppFile::named("app")).unwrap();
        let cache = dir.path().join("cache");
        assert_eq!(load_record(&cache, "aaaa/bbbb/cccc/dddd", &AppFile::named("app")), None);
        save_record(&cache, "aaaa/bbbb/cccc/dddd", &AppFile::named("app"), &made);
        let record = load_record(&cache, "aaaa/bbbb/cccc/dddd", &AppFile::named("app")).unwrap();
        assert_eq!(record, LayerRecord { digest: made.digest.clone(), diff_id: made.diff_id.clone(), size: made.size });
        // Another name is another layer (the path inside the image differs).
        assert_eq!(load_record(&cache, "aaaa/bbbb/cccc/dddd", &AppFile::named("other")), None);

        let recorded = recorded_binary_layer(record, &binary, &AppFile::named("app"));
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
        std::fs::write(&path, fake_elf("a/b", b"", false)).unwrap();
        assert_eq!(go_build_id(&path).as_deref(), Some("a/b"), "big-endian targets have build IDs too");
        let mut other_note = fake_go_binary("a/b", b"");
        let at = memchr::memmem::find(&other_note, b".note.go.buildid").unwrap();
        other_note[at + 7] = b'G';
        std::fs::write(&path, other_note).unwrap();
        assert_eq!(go_build_id(&path), None, "only the Go build ID's own section");
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
    fn the_diff_id_is_reported_before_the_layer_is_done_and_is_the_layers() {
        for size in [100_000, 3_000_000] {
            let data = noise(size, 0x0123_4567_89ab_cdef, |s| b'a' + (s % 16) as u8);
            let (reported, pieces_after) = (Mutex::new(None), std::sync::atomic::AtomicUsize::new(0));
            let mut sink = |_: &Bytes| {
                if reported.lock().unwrap().is_some() {
                    pieces_after.fetch_add(1, Ordering::Relaxed);
                }
                true
            };
            let streaming = Streaming {
                sink: Some(&mut sink),
                on_diff_id: Some(Box::new(|id: &str| *reported.lock().unwrap() = Some(id.to_string()))),
                ..Default::default()
            };
            let layer = compress_layer_streaming(LayerKind::Binary, data, streaming).unwrap();
            assert_eq!(reported.lock().unwrap().as_deref(), Some(layer.diff_id.as_str()));
            // Hashing a small layer comes before compressing it, so its one piece comes after.
            if size < PARALLEL_THRESHOLD {
                assert_eq!(pieces_after.load(Ordering::Relaxed), 1);
            }
        }
    }

    #[test]
    fn chunks_kept_on_disk_come_back_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("chunks").join("slot");
        let first = noise(3_000_000, 0x2545_f491_4f6c_dd1d, |s| b'a' + (s % 16) as u8);
        let memo = ChunkMemo::default();
        let one = compress_layer_streaming(LayerKind::Binary, first.clone(), remembering(&memo, "app/amd64")).unwrap();
        memo.save_slot("app/amd64", &saved).unwrap();

        // Another process: the kept chunks come back, and the next layer is the same bytes as
        // one compressed from nothing.
        let later = ChunkMemo::default();
        assert!(later.load_slot("app/amd64", &saved) > 1, "the chunks are read back");
        assert_eq!(later.held_bytes() as u64, one.size, "every chunk of the layer is back");
        let mut second = first.clone();
        second[10] ^= 0xff;
        let two =
            compress_layer_streaming(LayerKind::Binary, second.clone(), remembering(&later, "app/amd64")).unwrap();
        let fresh = compress_layer(LayerKind::Binary, second).unwrap();
        assert_eq!((two.digest.as_str(), two.bytes().unwrap()), (fresh.digest.as_str(), fresh.bytes().unwrap()));
        assert_eq!(later.load_slot("app/amd64", &saved), 0, "a slot the memo holds is not replaced");

        // A file that does not check out whole is ignored whole.
        let good = std::fs::read(&saved).unwrap();
        let mut altered = good.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let mut other_format = good.clone();
        other_format[b"kodev-chunks\n".len()] ^= 1;
        for (what, bytes) in
            [("altered", altered), ("truncated", good[..good.len() - 7].to_vec()), ("other format", other_format)]
        {
            std::fs::write(&saved, bytes).unwrap();
            let memo = ChunkMemo::default();
            assert_eq!(memo.load_slot("app/amd64", &saved), 0, "{what}");
            assert_eq!(memo.held_bytes(), 0, "{what}");
        }
        assert_eq!(ChunkMemo::default().load_slot("app/amd64", &dir.path().join("none")), 0);
    }

    #[test]
    fn a_remembered_layer_shares_the_memos_pieces_instead_of_copying_them() {
        let memo = ChunkMemo::default();
        let data = noise(3_000_000, 0x2545_f491_4f6c_dd1d, |s| b'a' + (s % 16) as u8);
        let layer = compress_layer_streaming(LayerKind::Binary, data.clone(), remembering(&memo, "app/amd64")).unwrap();
        let LayerBytes::Memory(pieces) = &layer.data else { panic!("a new layer is in memory") };
        assert!(pieces.len() > 1, "a layer this size is cut into chunks");
        let held: HashSet<*const u8> = memo.lock().members.values().map(|member| member.as_ptr()).collect();
        assert!(pieces.iter().all(|piece| held.contains(&piece.as_ptr())), "every piece is the memo's own bytes");
        assert_eq!(memo.held_bytes() as u64, layer.size, "and the memo holds nothing else");
        // Joined only when asked, into the same layer as compressing without a memo.
        assert_eq!(layer.bytes().unwrap(), compress_layer(LayerKind::Binary, data).unwrap().bytes().unwrap());
    }

    #[test]
    fn remembered_chunks_give_the_same_bytes_and_only_the_latest_are_kept() {
        let memo = ChunkMemo::default();
        // No two chunks alike (the memo would hold a repeated chunk once), but compressible.
        let first = noise(3_000_000, 0x9e37_79b9_7f4a_7c15, |s| b'a' + (s % 16) as u8);
        let mut second = first.clone();
        second[10] ^= 0xff; // an edit in the first chunk only, like a new build ID
        let memo_layer = |data: &Vec<u8>| {
            compress_layer_streaming(LayerKind::Binary, data.clone(), remembering(&memo, "app/amd64")).unwrap()
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
        let three = compress_layer_streaming(LayerKind::Binary, other, remembering(&memo, "app/arm64")).unwrap();
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
        let (made, _) =
            precompress_binary(&linker_output, &AppFile::named("app"), &memo, "app/amd64", &AtomicBool::new(true))
                .unwrap();
        let chunks = chunks_of(&binary_tar(&linker_output, &AppFile::named("app")).unwrap()).len();
        assert!(made >= chunks - 1, "nearly every chunk is made ahead ({made} of {chunks})");

        // go then writes the final build ID into the binary (and, here, a byte in the middle changes too).
        let mut finished = fake_go_binary("aaaa/bbbb", &body);
        finished[1_500_000] ^= 0x55;
        std::fs::write(&linker_output, &finished).unwrap();
        let finished_chunks = chunks_of(&binary_tar(&linker_output, &AppFile::named("app")).unwrap());
        let reusable = finished_chunks.iter().filter(|chunk| memo.knows(blake3::hash(chunk).as_bytes())).count();
        assert_eq!(reusable, finished_chunks.len() - 2, "all but the build ID's chunk and the changed one are ready");

        let layer =
            binary_layer_streaming(&linker_output, &AppFile::named("app"), remembering(&memo, "app/amd64")).unwrap();
        let fresh = binary_layer(&linker_output, &AppFile::named("app")).unwrap();
        assert_eq!(layer.digest, fresh.digest, "what was guessed ahead never reaches the layer");
        assert_eq!(layer.bytes().unwrap(), fresh.bytes().unwrap());
        assert_eq!(memo.held_bytes() as u64, layer.size, "guesses the layer did not use are dropped");

        // No longer wanted before it starts, nothing is made.
        let (stopped, keyed) = precompress_binary(
            &linker_output,
            &AppFile::named("app"),
            &ChunkMemo::default(),
            "app/amd64",
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!((stopped, keyed.len()), (0, 0));
    }

    /// Where `id` stands in `bytes`.
    fn offsets_of(bytes: &[u8], id: &str) -> Vec<u64> {
        memchr::memmem::find_iter(bytes, id.as_bytes()).map(|at| at as u64).collect()
    }

    /// Write `bytes` over the start of `path` in place, as go writes its content ID (the same
    /// file, not a new one).
    fn write_in_place(path: &Path, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, 0).unwrap();
    }

    #[test]
    fn chunks_keyed_ahead_make_the_layer_without_cutting_or_keying_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("a.out");
        let body = noise(3_000_000, 0x7777_1234_abcd_0001, |s| b'a' + (s % 16) as u8);
        std::fs::write(&binary, fake_go_binary("aaaa/aaaa", &body)).unwrap();
        let memo = ChunkMemo::default();
        let (_, keyed) =
            precompress_binary(&binary, &AppFile::named("app"), &memo, "app/amd64", &AtomicBool::new(true)).unwrap();
        let chunks = chunks_of(&binary_tar(&binary, &AppFile::named("app")).unwrap());
        assert_eq!(keyed.len(), chunks.len() - 1, "every chunk but the head is keyed");

        // The content ID goes into the head chunk: everything keyed still holds.
        let finished = fake_go_binary("aaaa/bbbb", &body);
        write_in_place(&binary, &finished);
        let keyed = keyed.hold_after(&offsets_of(&finished, "aaaa/bbbb"), "aaaa/bbbb".len()).expect("in the head");
        let fresh = binary_layer(&binary, &AppFile::named("app")).unwrap();
        let with = |keyed: KeyedAhead| Streaming { keyed_ahead: Some(keyed), ..remembering(&memo, "app/amd64") };
        let layer = binary_layer_streaming(&binary, &AppFile::named("app"), with(keyed.clone())).unwrap();
        assert_eq!((&layer.digest, &layer.diff_id), (&fresh.digest, &fresh.diff_id));
        assert_eq!(layer.bytes().unwrap(), fresh.bytes().unwrap());

        // Only a prefix keyed (compressing ahead was stopped): the rest is cut as usual.
        let mut prefix = keyed.clone();
        prefix.chunks.truncate(keyed.len() / 2);
        let layer = binary_layer_streaming(&binary, &AppFile::named("app"), with(prefix)).unwrap();
        assert_eq!(layer.bytes().unwrap(), fresh.bytes().unwrap());

        // A byte written past the head is not seen through the keyed chunks, which are taken as
        // they are: that is what `hold_after` is for...
        let mut changed = finished.clone();
        changed[2_000_000] ^= 0x55;
        write_in_place(&binary, &changed);
        let unseen = binary_layer_streaming(&binary, &AppFile::named("app"), with(keyed.clone())).unwrap();
        assert_eq!(unseen.digest, fresh.digest, "the keyed chunks were not read again");
        assert!(keyed.clone().hold_after(&[2_000_000], 9).is_none(), "a write past the head voids them");
        // ...the same file grown in place (here within the tar's padding) is not the bytes
        // they were cut from either...
        let grown = [changed.as_slice(), b"more"].concat();
        write_in_place(&binary, &grown);
        let layer = binary_layer_streaming(&binary, &AppFile::named("app"), with(keyed.clone())).unwrap();
        assert_eq!(layer.digest, binary_layer(&binary, &AppFile::named("app")).unwrap().digest);
        write_in_place(&binary, &changed);
        std::fs::OpenOptions::new().write(true).open(&binary).unwrap().set_len(changed.len() as u64).unwrap();
        // ...and a file copied over the binary's path is another file: nothing keyed is taken.
        let copy = dir.path().join("copy");
        std::fs::write(&copy, &changed).unwrap();
        std::fs::rename(&copy, &binary).unwrap();
        let layer = binary_layer_streaming(&binary, &AppFile::named("app"), with(keyed)).unwrap();
        assert_eq!(layer.digest, binary_layer(&binary, &AppFile::named("app")).unwrap().digest);
        assert_ne!(layer.digest, fresh.digest);
    }

    #[test]
    fn beyond_its_budget_the_memo_keeps_the_slots_built_most_recently() {
        let layer_of = |seed: u64, memo: &ChunkMemo, slot: &str| {
            let data = noise(3_000_000, seed, |s| b'a' + (s % 16) as u8);
            compress_layer_streaming(LayerKind::Binary, data, remembering(memo, slot)).unwrap()
        };
        let size = layer_of(1, &ChunkMemo::default(), "a").size as usize;
        // Room for two layers of this size, not three.
        let memo = ChunkMemo::with_budget(size * 5 / 2);
        let a = layer_of(1, &memo, "a");
        let b = layer_of(2, &memo, "b");
        assert_eq!(memo.held_bytes() as u64, a.size + b.size);
        // a is built again, so b is now the one built longest ago, and goes when c comes.
        let a = layer_of(1, &memo, "a");
        let c = layer_of(3, &memo, "c");
        assert_eq!(memo.held_bytes() as u64, a.size + c.size);
        let kept: HashSet<String> = memo.lock().slots.keys().cloned().collect();
        assert_eq!(kept, HashSet::from(["a".to_string(), "c".to_string()]));
        // A layer larger than the whole budget is still kept for its own next build.
        let tiny = ChunkMemo::with_budget(1);
        let d = layer_of(4, &tiny, "d");
        assert_eq!(tiny.held_bytes() as u64, d.size);
    }

    #[test]
    fn chunks_made_ahead_for_one_platform_outlive_another_platforms_layer() {
        let dir = tempfile::tempdir().unwrap();
        let arm64_binary = dir.path().join("a.out");
        let body = noise(3_000_000, 0x0bad_cafe_f00d_d00d, |s| b'a' + (s % 16) as u8);
        std::fs::write(&arm64_binary, fake_go_binary("aaaa/aaaa", &body)).unwrap();
        let memo = ChunkMemo::default();
        // Two platforms link together: arm64's linker output is compressed ahead...
        let (made, _) =
            precompress_binary(&arm64_binary, &AppFile::named("app"), &memo, "app/arm64", &AtomicBool::new(true))
                .unwrap();
        assert!(made > 1);
        // ...while amd64's layer is made and settles first.
        let amd64_data = noise(3_000_000, 0x5eed_5eed_5eed_5eed, |s| b'k' + (s % 16) as u8);
        let amd64 = compress_layer_streaming(LayerKind::Binary, amd64_data, remembering(&memo, "app/amd64")).unwrap();
        let arm64_chunks = chunks_of(&binary_tar(&arm64_binary, &AppFile::named("app")).unwrap());
        let ready = arm64_chunks.iter().filter(|chunk| memo.knows(blake3::hash(chunk).as_bytes())).count();
        assert_eq!(ready, made, "amd64's layer kept what was made ahead for arm64's");

        // arm64's layer then uses them; what it did not use goes once it settles.
        std::fs::write(&arm64_binary, fake_go_binary("aaaa/bbbb", &body)).unwrap();
        let arm64 =
            binary_layer_streaming(&arm64_binary, &AppFile::named("app"), remembering(&memo, "app/arm64")).unwrap();
        assert_eq!(arm64.digest, binary_layer(&arm64_binary, &AppFile::named("app")).unwrap().digest);
        assert_eq!(memo.held_bytes() as u64, amd64.size + arm64.size);
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
            first.fulfil(Bytes::from_static(b"member"), None);
            assert_eq!(waiter.join().unwrap(), Bytes::from_static(b"member"));
        });
        // Ahead of time, a chunk being compressed is skipped, and stays the holder's.
        let held = [9u8; 32];
        let Claim::Mine(holder) = memo.claim(held) else { panic!("nobody had the chunk") };
        assert!(memo.claim_if_unknown(held).is_none());
        assert!(memo.knows(&held), "skipping a chunk does not give up its holder's claim");
        assert!(memo.claim_if_unknown(key).is_none(), "a remembered chunk is not made again");
        holder.fulfil(Bytes::from_static(b"held"), None);
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
