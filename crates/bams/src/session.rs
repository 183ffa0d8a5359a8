//! Opening repositories: location parsing, secrets, the tokio runtime that drives backends.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bams_store::backend::counting::{CountingBackend, RequestCounts, RequestTotals};
use bams_store::backend::DynBackend;
use bams_store::crypto::SlotKind;
use bams_store::Repository;

use crate::cli::Global;

/// A runtime plus the repository it drives; the runtime must outlive the repository.
pub struct Session {
    /// The open repository.
    pub repo: Repository,
    /// Requests made to a remote repository, printed when the session ends.
    requests: Option<Arc<RequestCounts>>,
    quiet: bool,
    _rt: tokio::runtime::Runtime,
}

impl Session {
    /// Requests made so far (remote repositories only).
    pub fn requests(&self) -> Option<RequestTotals> {
        self.requests.as_ref().map(|c| c.totals())
    }
}

impl Drop for Session {
    /// One summary line per run against a remote repository: requests are what object
    /// storage bills and throttles, so the operator sees them without asking.
    fn drop(&mut self) {
        if let (Some(t), false) = (self.requests(), self.quiet) {
            eprintln!("{}: {t}", self.repo.location());
        }
    }
}

fn is_remote(location: &str) -> bool {
    location.contains("://")
}

/// Pack size for a new repository: object storage bills per request, so fewer larger objects.
pub fn default_pack_size_mib(global: &Global) -> u32 {
    match global.repo.as_deref() {
        Some(l) if l.starts_with("s3://") => 64,
        _ => 16,
    }
}

/// Concurrent uploads: `--connections`, else 4 for object storage (64 MiB packs, bandwidth is
/// per connection; measured 6.9 s with 2 and 3.1 s with 4 on bench data) and 2 elsewhere.
pub fn connections(global: &Global) -> usize {
    connections_for(global, global.repo.as_deref().unwrap_or_default())
}

/// [`connections`] for a repository other than `-r`'s.
pub fn connections_for(global: &Global, location: &str) -> usize {
    match (global.connections, Some(location)) {
        (Some(n), _) => usize::from(n),
        (None, Some(l)) if l.starts_with("s3://") => 4,
        _ => 2,
    }
}

/// Wrap remote backends in request counting.
fn counted(location: &str, backend: DynBackend) -> (DynBackend, Option<Arc<RequestCounts>>) {
    if !is_remote(location) {
        return (backend, None);
    }
    let (c, counts) = CountingBackend::new(backend);
    (Arc::new(c), Some(counts))
}

/// Apply the session-wide options to an opened repository.
fn configure(global: &Global, location: &str, repo: &mut Repository) {
    if is_remote(location) && !global.no_cache {
        if let Some(base) = bams_store::cache::default_base() {
            if let Err(e) = repo.enable_cache(&base) {
                tracing::warn!("running without the local cache: {e}");
            }
        }
    }
}

/// A backend for a repository location.
pub fn backend_for(location: &str) -> Result<DynBackend> {
    if location.starts_with("bams://") || location.starts_with("bams+http://") {
        let token = match (std::env::var("BAMS_TOKEN"), std::env::var("BAMS_TOKEN_FILE")) {
            (Ok(t), _) => t,
            (Err(_), Ok(f)) => String::from_utf8(read_password_file(Path::new(&f))?).context("token is not UTF-8")?,
            _ => bail!("a bams:// repository needs a server token: set BAMS_TOKEN or BAMS_TOKEN_FILE"),
        };
        let ca = std::env::var_os("BAMS_SERVER_CA").map(std::path::PathBuf::from);
        let fingerprint = std::env::var("BAMS_SERVER_FINGERPRINT").ok();
        let trust = bams_store::backend::trust::Trust::from_settings(ca.as_deref(), fingerprint.as_deref())
            .context("BAMS_SERVER_FINGERPRINT / BAMS_SERVER_CA")?;
        let backend: DynBackend = Arc::new(bams_store::backend::rest::RestBackend::new(location, &token, &trust)?);
        let policy = bams_store::backend::retry::RetryPolicy::from_env()?;
        return Ok(Arc::new(bams_store::backend::retry::RetryBackend::new(backend, policy)));
    }
    Ok(bams_store::backend::from_location(location)?)
}

/// The runtime used for backend I/O.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bams-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

/// The first line of a password file (without the line ending); empty is an error.
pub fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(line.to_vec())
}

/// The secret that opens (or will protect) the repository.
pub fn secret(global: &Global, confirm: bool) -> Result<(Vec<u8>, SlotKind)> {
    if let Some(kf) = &global.key_file {
        let data = std::fs::read(kf).with_context(|| format!("reading key file {}", kf.display()))?;
        if data.is_empty() {
            bail!("key file {} is empty", kf.display());
        }
        return Ok((data, SlotKind::Keyfile));
    }
    if let Ok(p) = std::env::var("BAMS_PASSWORD") {
        if p.is_empty() {
            bail!("BAMS_PASSWORD is set but empty");
        }
        return Ok((p.into_bytes(), SlotKind::Password));
    }
    if let Some(pf) = &global.password_file {
        return Ok((read_password_file(pf)?, SlotKind::Password));
    }
    if std::io::stderr().is_terminal() {
        let p = rpassword::prompt_password("repository password: ").context("reading password")?;
        if confirm {
            let again = rpassword::prompt_password("repeat password: ").context("reading password")?;
            if again != p {
                bail!("passwords do not match");
            }
        }
        if p.is_empty() {
            bail!("empty password");
        }
        return Ok((p.into_bytes(), SlotKind::Password));
    }
    bail!("no password given: set BAMS_PASSWORD, --password-file or --key-file")
}

/// The secret in `file` when one is given (a second repository's `--from/--to-password-file`),
/// else the usual one ([`secret`]).
pub fn secret_from(global: &Global, file: Option<&Path>) -> Result<Vec<u8>> {
    match file {
        Some(f) => read_password_file(f),
        None => Ok(secret(global, false)?.0),
    }
}

/// The repository location from `-r` / `BAMS_REPOSITORY`.
pub fn location(global: &Global) -> Result<&str> {
    global.repo.as_deref().context("no repository given: use -r/--repo or BAMS_REPOSITORY")
}

/// Open the repository named on the command line.
pub fn open(global: &Global) -> Result<Session> {
    let location = location(global)?;
    let (secret, _) = secret(global, false)?;
    open_at(global, location, &secret)
}

/// Open the repository at `location` with `secret` (for commands with two repositories).
pub fn open_at(global: &Global, location: &str, secret: &[u8]) -> Result<Session> {
    let (backend, requests) = counted(location, backend_for(location)?);
    let rt = runtime()?;
    let mut repo = Repository::open(backend, rt.handle().clone(), secret).map_err(anyhow::Error::new)?;
    configure(global, location, &mut repo);
    Ok(Session { repo, requests, quiet: global.quiet || global.json, _rt: rt })
}

/// Create a repository.
pub fn init(global: &Global, opts: &bams_store::repo::InitOptions) -> Result<Session> {
    let location = location(global)?;
    let (backend, requests) = counted(location, backend_for(location)?);
    let (secret, kind) = secret(global, true)?;
    let rt = runtime()?;
    let mut repo = Repository::init(backend, rt.handle().clone(), &secret, kind, opts).map_err(anyhow::Error::new)?;
    configure(global, location, &mut repo);
    Ok(Session { repo, requests, quiet: global.quiet || global.json, _rt: rt })
}
