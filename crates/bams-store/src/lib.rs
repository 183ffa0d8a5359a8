//! # bams-store: the BAMS repository engine
//!
//! A repository is a set of immutable objects in a [backend](backend):
//!
//! | key | what | sealed |
//! | --- | --- | --- |
//! | `config` | magic + repository settings (chunker, compression, pack size) | yes, after a magic |
//! | `keys/<id>` | key slots: the master key wrapped by Argon2id(password or key file) | JSON, wrap inside |
//! | `data/<ab>/<id>` | packs: many sealed blobs + a sealed header | blobs and header |
//! | `index/<id>` | which blob is in which pack at which offset | yes |
//! | `heads/<id>` | hints letting disk images refer to small files' blobs ([heads]) | yes |
//! | `snapshots/<id>` | one backup's root: time, host, paths, tags, root tree, summary | yes |
//! | `locks/<id>` | who is using the repository | yes |
//!
//! **Blobs** are file chunks (FastCDC, ~1 MiB) or trees (one directory as JSON). A blob's id is
//! the keyed BLAKE3 hash of its plaintext, so identical data is stored once per repository.
//! Blobs are zstd-compressed and AES-256-GCM-encrypted ([crypto]) then grouped into packs.
//!
//! **Writes are append-only.** Backup writes packs, then index files, then the snapshot; prune
//! (the only deleter, under an exclusive [lock]) writes new packs and indexes before deleting
//! old ones. A crash therefore leaves at most unreferenced objects: `check` accepts that, the
//! next backup re-indexes orphan packs and reuses their blobs, the next prune deletes them.
//!
//! **Reads authenticate everything**: AEAD tags on every sealed object, content hashes on every
//! blob and file name, so corruption is reported with the object's id, never restored silently.
//!
//! The precise byte layout is in `docs/repository-format.md`.

pub mod archiver;
pub mod backend;
pub mod browse;
pub mod cache;
pub mod check;
pub mod consolidate;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod exclude;
pub mod export;
pub mod flash;
pub mod forget;
pub mod fsmeta;
pub mod heads;
pub mod host;
pub mod id;
pub mod image;
pub mod index;
pub mod lock;
pub mod pack;
pub mod pipeline;
pub mod prefetch;
pub mod prune;
pub mod repo;
pub mod restorer;
pub mod safe_fs;
pub mod scan;
pub mod snapshot;
pub mod tree;

pub use error::{Error, ErrorKind, Result};
pub use id::Id;
pub use repo::{Repository, Unlocked};
