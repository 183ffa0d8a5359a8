//! A throwaway repository for the engine's integration tests (cheap key derivation).

use std::sync::Arc;

use bams_store::backend::local::LocalBackend;
use bams_store::crypto::{KdfParams, SlotKind};
use bams_store::repo::{InitOptions, Repository};

/// A repository under a temporary directory, with the runtime its backend uses.
pub struct Fixture {
    _rt: tokio::runtime::Runtime,
    /// Holds the repository (`repo/`) and whatever a test puts beside it.
    pub dir: tempfile::TempDir,
    /// The repository, password `pw`.
    pub repo: Repository,
}

/// A new repository in a new temporary directory.
pub fn fixture() -> Fixture {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions { kdf: KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }, ..InitOptions::default() };
    let backend = Arc::new(LocalBackend::new(dir.path().join("repo")));
    let repo = Repository::init(backend, rt.handle().clone(), b"pw", SlotKind::Password, &opts).expect("init");
    Fixture { _rt: rt, dir, repo }
}
