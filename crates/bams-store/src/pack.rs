//! Pack files: many sealed blobs in one object, so object stores see few large objects.
//!
//! Layout: `blob_0 || blob_1 || … || sealed_header || header_len (u32 LE)`. The header
//! plaintext is a sequence of 41-byte entries `kind (u8) || id (32) || sealed_len (u32 LE) ||
//! raw_len (u32 LE)`; blob offsets are cumulative from 0. A pack's name is the BLAKE3 hash of
//! its bytes, so a pack can be verified without the key and a reader can always rebuild the
//! index from the packs alone.

use crate::backend::ObjectSink;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::Id;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobKind {
    /// File or image content.
    Data = 0,
    /// A serialized directory tree.
    Tree = 1,
}

impl BlobKind {
    /// Decode the on-disk kind byte.
    pub fn from_u8(b: u8) -> Result<Self> {
        match b {
            0 => Ok(Self::Data),
            1 => Ok(Self::Tree),
            _ => Err(Error::corrupt(format!("unknown blob kind {b}"))),
        }
    }
}

/// Where one blob sits inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Data or tree.
    pub kind: BlobKind,
    /// Keyed hash of the plaintext.
    pub id: Id,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length (for stats and restore buffer sizing).
    pub raw_len: u32,
}

const ENTRY_LEN: usize = 1 + 32 + 4 + 4;

/// Packs are closed at this size; object stores like large objects, memory likes small ones.
pub const DEFAULT_PACK_SIZE: usize = 16 * 1024 * 1024;

/// Key of a pack in the backend: `data/<first two hex digits>/<id>`.
pub fn pack_key(id: &Id) -> String {
    let hex = id.to_hex();
    format!("data/{}/{hex}", &hex[..2])
}

/// Accumulates sealed blobs for one pack.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { buf: Vec::with_capacity(capacity), entries: Vec::new() }
    }

    /// Append one sealed blob.
    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_len: usize) {
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(sealed);
        self.entries.push(PackEntry { kind, id, offset, length: sealed.len() as u32, raw_len: raw_len as u32 });
    }

    /// Bytes so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seal the header and return the pack id, bytes and entries.
    pub fn finish(mut self, key: &MasterKey) -> Result<(Id, Vec<u8>, Vec<PackEntry>)> {
        self.buf.extend_from_slice(&trailer(&self.entries, key)?);
        let id = Id::hash_of(&self.buf);
        Ok((id, self.buf, self.entries))
    }
}

/// The sealed header and its length: what follows a pack's blobs.
fn trailer(entries: &[PackEntry], key: &MasterKey) -> Result<Vec<u8>> {
    let mut header = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        header.push(e.kind as u8);
        header.extend_from_slice(&e.id.0);
        header.extend_from_slice(&e.length.to_le_bytes());
        header.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    let mut sealed = key.seal(&header, None)?;
    let len = sealed.len() as u32;
    sealed.extend_from_slice(&len.to_le_bytes());
    Ok(sealed)
}

/// A pack written to its backend as blobs arrive ([`crate::backend::WriteBackend::sink`]),
/// hashed on the way: the same bytes as [`PackBuilder`] without holding them.
pub struct PackStream {
    sink: Box<dyn ObjectSink>,
    hasher: blake3::Hasher,
    size: usize,
    entries: Vec<PackEntry>,
}

impl PackStream {
    /// A pack written into `sink`.
    pub fn new(sink: Box<dyn ObjectSink>) -> Self {
        Self { sink, hasher: blake3::Hasher::new(), size: 0, entries: Vec::new() }
    }

    /// Append one sealed blob.
    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_len: usize) -> Result<()> {
        self.sink.write(sealed)?;
        self.hasher.update(sealed);
        self.entries.push(PackEntry {
            kind,
            id,
            offset: self.size as u32,
            length: sealed.len() as u32,
            raw_len: raw_len as u32,
        });
        self.size += sealed.len();
        Ok(())
    }

    /// Bytes so far.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the header; returns the pack id, the sink to install under the pack's key, and
    /// the entries.
    pub fn finish(mut self, key: &MasterKey) -> Result<(Id, Box<dyn ObjectSink>, Vec<PackEntry>)> {
        let trailer = trailer(&self.entries, key)?;
        self.sink.write(&trailer)?;
        self.hasher.update(&trailer);
        Ok((Id(*self.hasher.finalize().as_bytes()), self.sink, self.entries))
    }
}

/// Decode a pack header's plaintext into entries with offsets.
pub fn parse_header(plain: &[u8], pack: &Id) -> Result<Vec<PackEntry>> {
    if !plain.len().is_multiple_of(ENTRY_LEN) {
        return Err(Error::corrupt(format!(
            "pack {pack}: header length {} is not a multiple of {ENTRY_LEN}",
            plain.len()
        )));
    }
    let mut offset = 0u32;
    let mut out = Vec::with_capacity(plain.len() / ENTRY_LEN);
    for chunk in plain.chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_u8(chunk[0])?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&chunk[1..33]);
        let length = u32::from_le_bytes([chunk[33], chunk[34], chunk[35], chunk[36]]);
        let raw_len = u32::from_le_bytes([chunk[37], chunk[38], chunk[39], chunk[40]]);
        out.push(PackEntry { kind, id: Id(id), offset, length, raw_len });
        offset = offset
            .checked_add(length)
            .ok_or_else(|| Error::corrupt(format!("pack {pack}: header offsets overflow")))?;
    }
    Ok(out)
}

/// Where the sealed header sits, given the trailing 4 bytes and the pack size.
pub fn header_range(pack_size: u64, trailer: &[u8], pack: &Id) -> Result<(u64, u64)> {
    let len = u64::from(u32::from_le_bytes(
        trailer.try_into().map_err(|_| Error::corrupt(format!("pack {pack}: short trailer")))?,
    ));
    if len + 4 > pack_size {
        return Err(Error::corrupt(format!("pack {pack}: header length {len} exceeds pack size {pack_size}")));
    }
    Ok((pack_size - 4 - len, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_roundtrip(blobs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let key = MasterKey::generate();
            let mut pb = PackBuilder::default();
            for (is_tree, data) in &blobs {
                let sealed = key.seal(data, Some(1)).unwrap();
                let kind = if *is_tree { BlobKind::Tree } else { BlobKind::Data };
                pb.add(kind, key.blob_id(data), &sealed, data.len());
            }
            let (id, bytes, entries) = pb.finish(&key).unwrap();
            prop_assert_eq!(id, Id::hash_of(&bytes));
            let (off, len) = header_range(bytes.len() as u64, &bytes[bytes.len()-4..], &id).unwrap();
            let header = key.open(&bytes[off as usize..(off+len) as usize], &"h").unwrap();
            let parsed = parse_header(&header, &id).unwrap();
            prop_assert_eq!(&parsed, &entries);
            for (e, (_, data)) in parsed.iter().zip(&blobs) {
                let s = &bytes[e.offset as usize..(e.offset + e.length) as usize];
                prop_assert_eq!(&key.open(s, &"b").unwrap(), data);
            }
        }
    }
}
