//! `bams agent`: the file daemon of a protected machine (docs/design.md §1). It connects out only:
//! it long-polls the server for work, backs up through the server's repository endpoint
//! (`bams://SERVER/REPOSITORY`, with its own credential: append-only), so chunking,
//! deduplication against the repository's index and encryption happen here and only chunks
//! the repository lacks travel. While a run goes on it reports progress, warnings and a
//! heartbeat every few seconds; the answer may ask it to cancel. Network trouble and server
//! restarts are waited out with backoff; a run's outcome is delivered once the server is back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bams_director::agents::{Assignment, Events, EventsReply, Finish, Poll, PollReply};
use bams_store::archiver::{BackupOptions, ParentChoice, Progress};
use bams_store::backend::throttle::{Pacer, ThrottleBackend};
use bams_store::backend::trust::Trust;
use serde::{Deserialize, Serialize};

use crate::cli::{AgentArgs, AgentCmd};
use crate::output::Out;

/// Seconds a poll may wait on the server.
const POLL_WAIT: u64 = 25;
/// How often a running run reports.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an outcome is offered to an unreachable server before it is given up.
const FINISH_PATIENCE: Duration = Duration::from_secs(3600);

/// What enrollment leaves in the state directory.
#[derive(Serialize, Deserialize)]
struct AgentState {
    server: String,
    agent_id: i64,
    name: String,
    credential: String,
    ca_cert: Option<PathBuf>,
    /// SHA-256 of the one server certificate trusted (`AB:CD:…`), instead of CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    /// Repositories unlocked before, by name and key: the key derivation runs once per
    /// repository for the agent's lifetime instead of once per run (measured with 100 agents
    /// on 2 cores: it was most of a small backup's time). Never written to disk.
    #[serde(skip)]
    unlocked: Mutex<HashMap<(String, String), bams_store::Unlocked>>,
    /// Local cache of index files and snapshots (`<state dir>/cache`): a run downloads only
    /// the index files other machines added since its last run, not all of them (measured
    /// with 100 agents: without it every run fetched the whole, growing index).
    #[serde(skip)]
    cache_dir: Option<PathBuf>,
}

impl AgentState {
    /// Open the assignment's repository through `backend`, with what an earlier run unlocked
    /// when possible, else with the key from the server (remembered for the next run).
    fn open_repository(
        &self,
        a: &Assignment,
        backend: bams_store::backend::DynBackend,
        handle: tokio::runtime::Handle,
    ) -> Result<bams_store::Repository> {
        let id = (a.repository.clone(), a.key_hex.clone());
        let known = self.unlocked.lock().ok().and_then(|m| m.get(&id).cloned());
        let reopened = match known {
            Some(u) => match bams_store::Repository::open_unlocked(backend.clone(), handle.clone(), &u) {
                Ok(repo) => Some(repo),
                Err(e) if e.kind() == bams_store::ErrorKind::WrongPassword => None,
                Err(e) => return Err(anyhow::Error::new(e).context("opening the repository")),
            },
            None => None,
        };
        let mut repo = match reopened {
            Some(repo) => repo,
            None => {
                let key = hex::decode(&a.key_hex).context("repository key from the server")?;
                let repo = bams_store::Repository::open(backend, handle, &key).context("opening the repository")?;
                if let Ok(mut m) = self.unlocked.lock() {
                    m.insert(id, repo.unlocked());
                }
                repo
            }
        };
        if let Some(dir) = &self.cache_dir {
            if let Err(e) = repo.enable_cache(dir) {
                tracing::warn!("running without the local cache: {e}");
            }
        }
        Ok(repo)
    }
}

fn state_dir(a: &AgentArgs) -> PathBuf {
    a.state_dir.clone().unwrap_or_else(|| {
        if nix::unistd::Uid::effective().is_root() {
            PathBuf::from("/var/lib/bams-agent")
        } else {
            PathBuf::from("./bams-agent")
        }
    })
}

fn http(trust: &Trust, timeout: Duration) -> Result<reqwest::Client> {
    Ok(bams_store::backend::trust::client_builder(trust)?.timeout(timeout).build()?)
}

impl AgentState {
    /// What the agent trusts of the server's certificate: a pinned fingerprint, a private CA,
    /// or the system's CAs.
    fn trust(&self) -> Result<Trust> {
        Ok(Trust::from_settings(self.ca_cert.as_deref(), self.fingerprint.as_deref())?)
    }
}

/// Run `bams agent [enroll]`.
pub fn run(out: Out, a: AgentArgs) -> Result<u8> {
    let dir = state_dir(&a);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match a.cmd {
        Some(AgentCmd::Enroll { server, token, ca_cert, fingerprint }) => {
            rt.block_on(enroll(out, &dir, &server, &token, ca_cert, fingerprint))
        }
        None => {
            let path = dir.join("agent.json");
            let text = std::fs::read(&path)
                .with_context(|| format!("reading {} (enroll first: bams agent enroll)", path.display()))?;
            let mut state: AgentState =
                serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
            state.cache_dir = Some(dir.join("cache"));
            rt.block_on(serve(Arc::new(state), a.limit_upload, a.max_jobs))
        }
    }
}

async fn enroll(
    out: Out,
    dir: &Path,
    server: &str,
    token: &str,
    ca_cert: Option<PathBuf>,
    fingerprint: Option<String>,
) -> Result<u8> {
    let server = server.trim_end_matches('/').to_string();
    if !(server.starts_with("https://") || server.starts_with("http://")) {
        bail!("--server must be an http:// or https:// URL, not {server:?}");
    }
    // Kept absolute: the agent may run from another directory (its unit's).
    let ca_cert = ca_cert.map(|c| std::path::absolute(&c).unwrap_or(c));
    let trust = Trust::from_settings(ca_cert.as_deref(), fingerprint.as_deref())?;
    let fingerprint = match &trust {
        Trust::Fingerprint(fp) => Some(bams_store::backend::trust::format_fingerprint(fp)),
        _ => None,
    };
    let client = http(&trust, Duration::from_secs(30))?;
    let body = serde_json::json!({
        "token": token,
        "hostname": bams_store::host::hostname(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let resp = client.post(format!("{server}/api/v1/agents/enroll")).json(&body).send().await?;
    let status = resp.status();
    let answer: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("enrollment refused ({status}): {}", answer["error"]["message"].as_str().unwrap_or("no message"));
    }
    let state = AgentState {
        server,
        agent_id: answer["agent_id"].as_i64().context("enrollment answer without agent_id")?,
        name: answer["name"].as_str().unwrap_or_default().to_string(),
        credential: answer["credential"].as_str().context("enrollment answer without credential")?.to_string(),
        ca_cert,
        fingerprint,
        unlocked: Mutex::default(),
        cache_dir: None,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("agent.json");
    bams_appliance::files::write_private(&path, &serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("writing {}", path.display()))?;
    out.info(format!("enrolled as agent {} (id {}); credential in {}", state.name, state.agent_id, path.display()));
    if out.json {
        out.json(&serde_json::json!({"agent_id": state.agent_id, "name": state.name, "state": path}))?;
    }
    Ok(0)
}

/// Why a request to the server failed.
enum CallError {
    /// The credential was refused (revoked or disabled agent).
    Refused(String),
    /// The server does not know the run (it ended there).
    Gone(String),
    /// Network trouble or a server error: try again.
    Retry(String),
}

struct Api {
    state: Arc<AgentState>,
    client: reqwest::Client,
    /// `--limit-upload`: one rate for all of this agent's runs.
    pacer: Option<Arc<Pacer>>,
}

impl Api {
    async fn post<B: Serialize, R: for<'de> Deserialize<'de> + Default>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let resp = self
            .client
            .post(format!("{}/api/v1{path}", self.state.server))
            .bearer_auth(&self.state.credential)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Retry(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(R::default());
        }
        let text = resp.text().await.map_err(|e| CallError::Retry(e.to_string()))?;
        let message = || {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or_else(|| format!("{status}"))
        };
        match status.as_u16() {
            200..=299 => serde_json::from_str(&text).map_err(|e| CallError::Retry(format!("bad answer: {e}"))),
            401 | 403 => Err(CallError::Refused(message())),
            404 | 409 => Err(CallError::Gone(message())),
            _ => Err(CallError::Retry(message())),
        }
    }
}

async fn serve(state: Arc<AgentState>, limit_upload: Option<u64>, max_jobs: u32) -> Result<u8> {
    let client = http(&state.trust()?, Duration::from_secs(POLL_WAIT + 15))?;
    let pacer = limit_upload.filter(|l| *l > 0).map(Pacer::new);
    let api = Arc::new(Api { state: state.clone(), client, pacer });
    tracing::info!(agent = %state.name, server = %state.server, "agent started");
    let poll = Poll {
        hostname: bams_store::host::hostname(),
        version: env!("CARGO_PKG_VERSION").into(),
        wait_secs: POLL_WAIT,
    };
    let mut backoff = Duration::from_secs(1);
    // Runs in progress: work is asked for only while fewer than `max_jobs` run.
    let slots = Arc::new(tokio::sync::Semaphore::new(max_jobs as usize));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { bail!("agent shutting down") };
        match api.post::<_, PollReply>("/agent/poll", &poll).await {
            Ok(reply) => {
                backoff = Duration::from_secs(1);
                let mut slot = Some(slot);
                for a in reply.assignments {
                    tracing::info!(run = a.run_id, job = %a.job, "run assigned");
                    let permit = match slot.take() {
                        Some(p) => p,
                        None => slots.clone().acquire_owned().await?,
                    };
                    let api = api.clone();
                    tokio::spawn(async move {
                        execute(api, a).await;
                        drop(permit);
                    });
                }
            }
            Err(CallError::Refused(m)) => {
                // Revoked or disabled: nothing is done until an admin enables it again.
                tracing::error!(error = %m, "the server refuses this agent's credential");
                tokio::time::sleep(MAX_BACKOFF).await;
            }
            Err(CallError::Gone(m) | CallError::Retry(m)) => {
                tracing::warn!(error = %m, retry_in = ?backoff, "cannot reach the server");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What a running backup tells the reporter.
#[derive(Default)]
struct RunState {
    files: AtomicU64,
    bytes: AtomicU64,
    log: Mutex<Vec<String>>,
    cancel: AtomicBool,
}

impl Progress for RunState {
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
    fn warn(&self, msg: &str) {
        if let Ok(mut l) = self.log.lock() {
            l.push(format!("warning: {msg}"));
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl RunState {
    fn events(&self) -> Events {
        Events {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            log: self.log.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default(),
        }
    }
}

/// Execute one assignment: the backup on a blocking thread, reports every few seconds, then
/// the outcome, offered until the server takes it.
async fn execute(api: Arc<Api>, a: Assignment) {
    let run = a.run_id;
    let st = Arc::new(RunState::default());
    // The first report acknowledges the assignment (else the server queues it again).
    let hello = Events { log: vec![format!("agent on {} starts", bams_store::host::hostname())], ..Events::default() };
    if let Err(CallError::Gone(m) | CallError::Refused(m)) =
        api.post::<_, EventsReply>(&format!("/agent/runs/{run}/events"), &hello).await
    {
        tracing::warn!(run, error = %m, "the server no longer assigns this run");
        return;
    }
    let work = {
        let (st, api, handle) = (st.clone(), api.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || work(&api.state, &a, &st, api.pacer.as_ref(), handle))
    };
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r.unwrap_or_else(|e| Err(anyhow::anyhow!("the backup crashed: {e}"))),
            () = tokio::time::sleep(REPORT_EVERY) => {
                let ev = st.events();
                match api.post::<_, EventsReply>(&format!("/agent/runs/{run}/events"), &ev).await {
                    Ok(r) if r.cancel => st.cancel.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    // The run ended on the server (failed for silence, cancelled): stop.
                    Err(CallError::Gone(m)) => {
                        tracing::warn!(run, error = %m, "the server ended this run; stopping");
                        st.cancel.store(true, Ordering::Relaxed);
                    }
                    Err(CallError::Refused(m) | CallError::Retry(m)) => {
                        // Keep the lines for the next report.
                        st.log.lock().map(|mut l| { let mut ev = ev.log; ev.append(&mut l); *l = ev; }).ok();
                        tracing::warn!(run, error = %m, "could not report progress");
                    }
                }
            }
        }
    };
    let cancelled = st.cancel.load(Ordering::Relaxed);
    let finish = match outcome {
        Ok(f) => f,
        Err(e) => Finish { ok: false, cancelled, message: format!("{e:#}"), ..Finish::default() },
    };
    let ev = st.events();
    if !ev.log.is_empty() {
        let _ = api.post::<_, EventsReply>(&format!("/agent/runs/{run}/events"), &ev).await;
    }
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match api.post::<_, serde_json::Value>(&format!("/agent/runs/{run}/finish"), &finish).await {
            Ok(_) => {
                tracing::info!(run, ok = finish.ok, message = %finish.message, "run reported");
                return;
            }
            Err(CallError::Gone(m) | CallError::Refused(m)) => {
                tracing::warn!(run, error = %m, "the server did not take the outcome");
                return;
            }
            Err(CallError::Retry(m)) if started.elapsed() < FINISH_PATIENCE => {
                tracing::warn!(run, error = %m, retry_in = ?backoff, "server unreachable; keeping the outcome");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(CallError::Retry(m)) => {
                tracing::error!(run, error = %m, "giving up reporting the outcome");
                return;
            }
        }
    }
}

/// The server's repository endpoint as this agent reaches it.
fn repository_url(server: &str, name: &str) -> Result<String> {
    if let Some(host) = server.strip_prefix("https://") {
        Ok(format!("bams://{}/{name}", host.trim_end_matches('/')))
    } else if let Some(host) = server.strip_prefix("http://") {
        Ok(format!("bams+http://{}/{name}", host.trim_end_matches('/')))
    } else {
        bail!("server URL {server:?} is not http(s)")
    }
}

/// The tighter of the job's and the agent's limits, for the report.
fn limit(a: &Assignment, agent: Option<&Arc<Pacer>>) -> u64 {
    let agent = agent.map_or(u64::MAX, |p| p.bytes_per_sec());
    if a.bandwidth_limit > 0 {
        a.bandwidth_limit.min(agent)
    } else {
        agent
    }
}

/// The repository behind the server's endpoint, with retries.
fn endpoint(state: &AgentState, a: &Assignment) -> Result<bams_store::backend::DynBackend> {
    let url = repository_url(&state.server, &a.repository)?;
    let rest = bams_store::backend::rest::RestBackend::new(&url, &state.credential, &state.trust()?)?;
    let policy = bams_store::backend::retry::RetryPolicy::from_env()?;
    Ok(Arc::new(bams_store::backend::retry::RetryBackend::new(Arc::new(rest), policy)))
}

/// Run an assignment of any kind this agent knows.
fn work(
    state: &AgentState,
    a: &Assignment,
    st: &RunState,
    agent_pacer: Option<&Arc<Pacer>>,
    handle: tokio::runtime::Handle,
) -> Result<Finish> {
    match a.kind.as_str() {
        "backup" => {
            for c in &a.hooks.before {
                run_command(c, "before", "", st).context("a command before the backup failed")?;
            }
            let r = backup(state, a, st, agent_pacer, handle);
            let status = if r.is_ok() { "ok" } else { "failed" };
            let mut r = r;
            for c in &a.hooks.after {
                if let Err(e) = run_command(c, "after", status, st) {
                    st.warn(&format!("{e:#}"));
                    if let Ok(f) = r.as_mut() {
                        f.message = format!("{}; warning: a command after the backup failed: {e:#}", f.message);
                    }
                }
            }
            r
        }
        "restore" => restore(state, a, st, handle),
        "verify" => verify(state, a, st, handle),
        other => bail!("this agent version cannot run {other:?} work"),
    }
}

/// Collect up to 64 KiB of a child's output on a thread (so a chatty command never blocks).
fn drain(r: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(r) = r {
            use std::io::Read;
            let _ = r.take(64 << 10).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A running dump command whose output is being backed up, and its watchdog.
struct DumpStream {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
    deadline: std::time::Instant,
    /// Tells the watchdog the command ended.
    done: Arc<AtomicBool>,
    /// Set by the watchdog when it killed the command at its deadline.
    fired: Arc<AtomicBool>,
    name: String,
    secs: u64,
}

/// Wait for `child` at most until `deadline`; kill it then.
fn wait_until(child: &mut std::process::Child, deadline: std::time::Instant, what: &str) -> Result<()> {
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{what} exited with {status}");
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} timed out and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a job's command (an argument vector, no shell) with its time limit; its output goes to
/// the run log.
fn run_command(c: &bams_director::agents::Command, phase: &str, status: &str, st: &RunState) -> Result<()> {
    let what = format!("{phase} command {:?}", c.argv[0]);
    let mut child = std::process::Command::new(&c.argv[0])
        .args(&c.argv[1..])
        .env("BAMS_RUN_STATUS", status)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let waited = wait_until(&mut child, std::time::Instant::now() + Duration::from_secs(c.timeout_secs), &what);
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if let Ok(mut l) = st.log.lock() {
        l.extend(out.lines().chain(err.lines()).take(200).map(|line| format!("{phase}: {line}")));
        l.push(format!("{what}: {}", if waited.is_ok() { "ok" } else { "failed" }));
    }
    waited.map_err(|e| anyhow::anyhow!("{e}: {}", err.trim()))
}

/// Verify a snapshot on this machine: restore it into a scratch directory (private, under
/// the system's temporary directory), re-read every file against the snapshot, remove the copy.
fn verify(state: &AgentState, a: &Assignment, st: &RunState, handle: tokio::runtime::Handle) -> Result<Finish> {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("bams-verify-{}-", a.run_id))
        .tempdir()
        .context("creating scratch space for the verify")?;
    let mut restore_as = a.clone();
    restore_as.target = Some(scratch.path().to_string_lossy().into_owned());
    restore_as.verify = true;
    let r = restore(state, &restore_as, st, handle);
    // The scratch copy goes whatever happened (TempDir removes it on drop; errors are logged).
    if let Err(e) = scratch.close() {
        st.warn(&format!("removing the scratch copy: {e}"));
    }
    let mut f = r?;
    f.message = format!("compared on the agent: {}", f.message);
    if f.errors > 0 {
        f.ok = false;
    }
    Ok(f)
}

/// Restore a snapshot (possibly another machine's) into a directory of this machine.
fn restore(state: &AgentState, a: &Assignment, st: &RunState, handle: tokio::runtime::Handle) -> Result<Finish> {
    use bams_store::restorer::{self, RestoreOptions};
    let (Some(snapshot), Some(target)) = (&a.snapshot, &a.target) else {
        bail!("a restore needs a snapshot and a target");
    };
    let repo = state.open_repository(a, endpoint(state, a)?, handle)?;
    let snap = repo.find_snapshot(snapshot)?;
    let _lock = bams_store::lock::acquire(&repo, false, "restore", Duration::from_secs(60))?;
    let index = repo.load_index()?;
    let (root, root_path) = restorer::resolve_subtree(&repo, &index, &snap.snapshot.tree, None)?;
    let mut opts = RestoreOptions::new(Path::new(target));
    opts.include = a.include.clone();
    opts.verify = a.verify;
    let r = restorer::restore(&repo, &index, &root, &root_path, &opts, st)?;
    for w in r.warnings.iter().chain(&r.errors) {
        st.warn(w);
    }
    let mut message = format!(
        "restored snapshot {} (host {}) into {target}: {} files, {} bytes",
        snap.id.short(),
        snap.snapshot.host,
        r.files,
        r.bytes
    );
    if a.verify {
        message = format!("{message}; verified {} files", r.verified);
    }
    if !r.errors.is_empty() {
        message = format!("partial: {} error(s); {message}", r.errors.len());
    }
    Ok(Finish {
        ok: r.errors.is_empty(),
        cancelled: false,
        snapshot_id: None,
        files: i64::try_from(r.files).unwrap_or(i64::MAX),
        bytes: i64::try_from(r.bytes).unwrap_or(i64::MAX),
        new_bytes: 0,
        errors: r.errors.len() as i64,
        message,
    })
}

fn backup(
    state: &AgentState,
    a: &Assignment,
    st: &RunState,
    agent_pacer: Option<&Arc<Pacer>>,
    handle: tokio::runtime::Handle,
) -> Result<Finish> {
    let mut backend = endpoint(state, a)?;
    // The job's limit and the agent's own limit both apply.
    let job_pacer = (a.bandwidth_limit > 0).then(|| Pacer::new(a.bandwidth_limit));
    for pacer in job_pacer.iter().chain(agent_pacer) {
        backend = Arc::new(ThrottleBackend::new(backend, pacer.clone()));
    }
    let started = std::time::Instant::now();
    let repo = state.open_repository(a, backend, handle)?;
    let mut opts = BackupOptions::paths(a.paths.iter().map(PathBuf::from).collect());
    // Packs travel over HTTP: four in flight keep the link busy while one is being written on
    // the server (bench/agents.sh, 1.1 GiB tree over loopback: 4.55 s with 2, 4.14 s with 4).
    opts.pipeline.uploads = 4;
    // A dump command's output is the backup: it streams into the repository as it runs.
    let mut dump = None;
    if let Some(s) = &a.hooks.stdin {
        let mut child = std::process::Command::new(&s.command.argv[0])
            .args(&s.command.argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the dump command {:?}", s.command.argv[0]))?;
        let out = child.stdout.take().context("dump command output")?;
        let err = drain(child.stderr.take());
        opts.source = bams_store::archiver::Source::Stdin { reader: Box::new(out), name: s.name.clone() };
        let deadline = std::time::Instant::now() + Duration::from_secs(s.command.timeout_secs);
        // A hung dump is killed at its deadline, which ends the stream (and fails the run).
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (watchdog_done, fired) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (flag, fire) = (watchdog_done.clone(), fired.clone());
        std::thread::spawn(move || {
            while std::time::Instant::now() < deadline {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !flag.load(Ordering::Relaxed) {
                fire.store(true, Ordering::Relaxed);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
        dump = Some(DumpStream {
            child,
            stderr: err,
            deadline,
            done: watchdog_done,
            fired,
            name: s.command.argv[0].clone(),
            secs: s.command.timeout_secs,
        });
    }
    opts.excludes = a.excludes.clone();
    opts.one_file_system = a.one_file_system;
    opts.tags = a.tags.clone();
    opts.job = Some(a.job.clone());
    opts.parent = match &a.parent {
        Some(p) => ParentChoice::Id(bams_store::Id::from_hex(p).context("parent snapshot id")?),
        None => ParentChoice::None,
    };
    let r = bams_store::archiver::backup(&repo, opts, st);
    if let Some(DumpStream { mut child, stderr: err, deadline, done, fired, name, secs }) = dump {
        let waited = wait_until(&mut child, deadline, &format!("dump command {name:?}"));
        done.store(true, Ordering::Relaxed);
        let err = err.join().unwrap_or_default();
        let waited = match waited {
            Err(_) if fired.load(Ordering::Relaxed) => {
                Err(anyhow::anyhow!("dump command {name:?} timed out after {secs} s and was killed"))
            }
            other => other,
        };
        if let Err(e) = waited {
            // The snapshot (if written) holds a cut stream: the run fails and says so.
            let snap =
                r.as_ref().map(|r| format!(" (snapshot {} holds what it wrote)", r.id.short())).unwrap_or_default();
            bail!("{e}{snap}: {}", err.trim());
        }
    }
    let r = r?;
    let s = &r.snapshot.summary;
    let mut message = format!(
        "snapshot {} from agent: {} files, {} bytes read, {} new, in {:.2} s",
        r.id.short(),
        s.files_new + s.files_changed + s.files_unmodified,
        s.bytes_read,
        s.data_added,
        started.elapsed().as_secs_f64()
    );
    if let Some(p) = job_pacer.as_ref().or(agent_pacer) {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        message = format!(
            "{message}; sent {} bytes at {:.0} B/s while sending, {:.0} B/s overall (limit {} B/s)",
            p.sent(),
            p.sending_rate().unwrap_or(0.0),
            p.sent() as f64 / secs,
            limit(a, agent_pacer)
        );
    }
    if r.recovered_packs > 0 {
        message = format!("{message}; reused {} pack(s) stored by an interrupted run", r.recovered_packs);
    }
    if !r.warnings.is_empty() {
        message = format!("partial: {} file(s) unreadable; {message}", r.warnings.len());
    }
    Ok(Finish {
        ok: true,
        cancelled: false,
        snapshot_id: Some(r.id.to_hex()),
        files: i64::try_from(s.files_new + s.files_changed + s.files_unmodified).unwrap_or(i64::MAX),
        bytes: i64::try_from(s.total_bytes).unwrap_or(i64::MAX),
        new_bytes: i64::try_from(s.data_added).unwrap_or(i64::MAX),
        errors: r.warnings.len() as i64,
        message,
    })
}
