//! Flashing a stored disk image onto a disk in place: the heart of the bare-metal image
//! service (`bams flash`). A version's manifest lists its chunks; the disk is read at each
//! chunk's place, and only a chunk whose bytes there hash differently is fetched and written.
//! A disk that holds an older version of the same image therefore costs only the chunks that
//! changed; a disk holding anything else gets every chunk. A second pass reads the whole disk
//! back and checks every chunk.

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;

/// What a flash did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlashReport {
    /// Size of the image.
    pub bytes_total: u64,
    /// Bytes read from the disk (both passes).
    pub bytes_read: u64,
    /// Plaintext bytes fetched from the repository.
    pub bytes_fetched: u64,
    /// Bytes written to the disk.
    pub bytes_written: u64,
    /// Chunks in the image.
    pub chunks: u64,
    /// Chunks that differed and were fetched.
    pub chunks_fetched: u64,
}

/// Where each chunk of `content` lands: `(id, offset, length)`, from the index (no chunk is
/// read to learn its size).
pub fn layout(index: &MasterIndex, content: &[Id]) -> Result<Vec<(Id, u64, u64)>> {
    let mut at = 0u64;
    content
        .iter()
        .map(|id| {
            let loc = index
                .get(id)
                .ok_or_else(|| Error::corrupt(format!("chunk {} of the image is not indexed", id.short())))?;
            let entry = (*id, at, u64::from(loc.raw_len));
            at += u64::from(loc.raw_len);
            Ok(entry)
        })
        .collect()
}

/// Read the `len` bytes at `offset` into `buf`; `false` when the disk ends first (it then
/// holds no chunk there). Returns the bytes read either way.
fn read_chunk(disk: &File, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(bool, u64)> {
    buf.resize(usize::try_from(len).map_err(|_| Error::invalid("chunk too large"))?, 0);
    let mut got = 0usize;
    while got < buf.len() {
        match disk.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => return Ok((false, got as u64)),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the disk", e)),
        }
    }
    Ok((true, got as u64))
}

/// Where a flash gets the bytes a disk lacks: `fetch(ranges, sink)` hands the image's bytes
/// of every `start..end` range, in order and back to back, to `sink` in pieces of any size
/// (one HTTP request for many ranges, streamed).
pub type Fetch<'a> = dyn FnMut(&[(u64, u64)], &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> + 'a;

/// The most bytes one fetch asks for, and the most ranges: a failed request costs little and
/// a request's list stays small.
const MAX_FETCH: u64 = 64 << 20;
const MAX_RANGES: usize = 4096;

/// Make `disk` hold the image `manifest` describes, comparing unkeyed chunk hashes (the
/// management OS holds no repository key): chunks whose bytes already match are kept; runs
/// of differing chunks are fetched with `fetch`, many per request, and written in place; then
/// the whole disk is read back and every chunk checked. Both comparisons hash on every core.
/// `progress` gets bytes as they are compared.
pub fn flash_manifest(
    manifest: &crate::image::Manifest,
    disk: &File,
    fetch: &mut Fetch<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FlashReport> {
    let total = manifest.size();
    let meta = disk.metadata().map_err(|e| Error::io("the disk", e))?;
    if meta.is_file() && meta.len() < total {
        disk.set_len(total).map_err(|e| Error::io("growing the disk file", e))?;
    }
    let places: Vec<(u64, u32, [u8; 32])> = manifest.places().map(|(o, l, h)| (o, l, *h)).collect();
    let mut report = FlashReport { bytes_total: total, chunks: places.len() as u64, ..FlashReport::default() };
    let (same, read) = compare(&places, disk, progress)?;
    report.bytes_read += read;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for ((offset, len, _), ok) in places.iter().zip(&same) {
        if *ok {
            continue;
        }
        report.chunks_fetched += 1;
        let end = offset + u64::from(*len);
        match runs.last_mut() {
            Some((run_start, run_end)) if *run_end == *offset && end - *run_start <= MAX_FETCH => *run_end = end,
            _ => runs.push((*offset, end)),
        }
    }
    let mut batch_start = 0;
    while batch_start < runs.len() {
        let mut bytes = 0;
        let mut batch_end = batch_start;
        while batch_end < runs.len() && batch_end - batch_start < MAX_RANGES && (bytes == 0 || bytes < MAX_FETCH) {
            bytes += runs[batch_end].1 - runs[batch_end].0;
            batch_end += 1;
        }
        let batch = &runs[batch_start..batch_end];
        let (mut run, mut at) = (0usize, batch[0].0);
        fetch(batch, &mut |mut piece: &[u8]| {
            while !piece.is_empty() {
                let Some(&(_, end)) = batch.get(run) else {
                    return Err(Error::corrupt("the server sent more than the ranges asked for"));
                };
                let n = piece.len().min(usize::try_from(end - at).unwrap_or(usize::MAX));
                disk.write_all_at(&piece[..n], at).map_err(|e| Error::io("writing the disk", e))?;
                at += n as u64;
                piece = &piece[n..];
                if at == end {
                    run += 1;
                    at = batch.get(run).map_or(end, |r| r.0);
                }
            }
            Ok(())
        })?;
        if run != batch.len() {
            return Err(Error::corrupt(format!("the server sent {run} of {} ranges", batch.len())));
        }
        report.bytes_fetched += bytes;
        report.bytes_written += bytes;
        batch_start = batch_end;
    }
    disk.sync_data().map_err(|e| Error::io("flushing the disk", e))?;
    let (same, read) = compare(&places, disk, &|_| {})?;
    report.bytes_read += read;
    if let Some(((offset, len, _), _)) = places.iter().zip(&same).find(|(_, ok)| !**ok) {
        return Err(Error::corrupt(format!(
            "after flashing, the disk at offset {offset} does not hold the image's chunk ({len} bytes)"
        )));
    }
    Ok(report)
}

/// For each chunk, whether the disk holds it (unkeyed hash) — on every core, each worker a
/// contiguous share of the disk so reads stay sequential; and the bytes read.
fn compare(places: &[(u64, u32, [u8; 32])], disk: &File, progress: &(dyn Fn(u64) + Sync)) -> Result<(Vec<bool>, u64)> {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 8);
    let share = places.len().div_ceil(workers).max(1);
    let results: Vec<Result<(Vec<bool>, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = places
            .chunks(share)
            .map(|part| {
                scope.spawn(move || {
                    let mut buf = Vec::new();
                    let mut out = Vec::with_capacity(part.len());
                    let mut read = 0;
                    for (offset, len, hash) in part {
                        let (same, n) = holds_plain(disk, hash, *offset, u64::from(*len), &mut buf)?;
                        read += n;
                        out.push(same);
                        progress(u64::from(*len));
                    }
                    Ok((out, read))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::invalid("a comparing thread failed"))))
            .collect()
    });
    let mut same = Vec::with_capacity(places.len());
    let mut read = 0;
    for r in results {
        let (part, n) = r?;
        same.extend(part);
        read += n;
    }
    Ok((same, read))
}

/// Whether the disk holds a chunk with unkeyed hash `hash` at `offset`.
fn holds_plain(disk: &File, hash: &[u8; 32], offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(bool, u64)> {
    let (whole, read) = read_chunk(disk, offset, len, buf)?;
    Ok((whole && blake3::hash(buf).as_bytes() == hash, read))
}
