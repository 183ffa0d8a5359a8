//! Server configuration: `/etc/bams/config.yaml` (or `--config FILE`), then `BAMS_*`
//! environment overrides (`BAMS_LISTEN`, `BAMS_DATA_DIR`, `BAMS_TLS_CERT`, …: `BAMS_` + the key
//! path upper-cased with `_` for `.`), then defaults (docs/design.md §6).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// TLS files; both set = HTTPS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// The local API socket: how Cockpit (and anyone on this machine) reaches the server without
/// a password. Peers are known by their uid (`SO_PEERCRED`): root is an admin; members of the
/// groups below get those roles; anyone else is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// Group whose members are admins.
    pub admin_group: String,
    /// Group whose members are operators.
    pub operator_group: String,
    /// Group whose members are viewers.
    pub viewer_group: String,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            admin_group: "bams-admin".into(),
            operator_group: "bams-operator".into(),
            viewer_group: "bams-viewer".into(),
        }
    }
}

/// Everything the server reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Also serve the API on this unix socket (off when unset; the package sets
    /// `/run/bams/api.sock`).
    pub socket: Option<PathBuf>,
    /// Who may use the socket, by Linux group.
    pub socket_roles: SocketConfig,
    /// Where the catalog, keys and the default repository live.
    pub data_dir: PathBuf,
    /// `sqlite:///path` or `postgres://…`; empty = `<data_dir>/catalog.db`.
    pub catalog: String,
    /// The default repository; empty = `<data_dir>/repo`.
    pub repository: String,
    /// TLS.
    pub tls: TlsConfig,
    /// `text` or `json` logs.
    pub log_format: String,
    /// Name of this server in the run queue (distinct per server sharing a catalog).
    pub server_id: String,
    /// Jobs this server runs at once.
    pub max_concurrent_jobs: usize,
    /// Jobs running at once on one repository, across all servers (0: no limit).
    pub max_concurrent_per_repository: usize,
    /// Seconds between scheduler/queue polls.
    pub scheduler_interval_secs: f64,
    /// Run schedules missed while the server was down (once each).
    pub run_missed: bool,
    /// Seconds without a heartbeat after which an agent's running job has failed.
    pub agent_heartbeat_timeout_secs: u64,
    /// Seconds a queued job waits for its agent to come for it before it fails.
    pub agent_wait_secs: u64,
    /// Seconds between background merges of each repository's small index files (0: never;
    /// `bams repo consolidate` does it by hand).
    pub index_consolidate_every_secs: u64,
    /// A repository's index is merged once it has at least this many small index files.
    pub index_consolidate_min_files: usize,
    /// Seconds without a heartbeat after which another server (sharing the catalog) takes a
    /// server's running jobs for lost: interrupted and queued again.
    pub server_heartbeat_timeout_secs: u64,
    /// Webhooks and e-mail when runs end.
    pub notifications: bams_director::notify::NotifyConfig,
    /// Seconds running jobs get to finish on SIGTERM before they checkpoint and stop.
    pub shutdown_timeout_secs: u64,
    /// Largest accepted request body (bytes) for API calls.
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers (slow clients are disconnected).
    pub header_timeout_secs: u64,
    /// Seconds a request body may stall before the request fails with 408.
    pub body_idle_timeout_secs: u64,
    /// Largest object accepted by the repository endpoint (bytes).
    pub max_object_bytes: usize,
    /// Session lifetime in hours.
    pub session_hours: u64,
    /// Days audit entries are kept (0: forever).
    pub audit_retention_days: u64,
    /// Directories the API may restore into; empty = `<data_dir>/restores`.
    pub restore_roots: Vec<PathBuf>,
    /// Block devices disk repositories may format (`*` wildcards); empty = none.
    pub disk_devices: Vec<String>,
    /// The Bacula storage daemon's config file that `/api/v1/bacula/config` manages.
    pub bacula_sd_config: PathBuf,
    /// The tape library: `virtual` (default, under `<data_dir>/vtl`), `mtx` or `none`.
    pub tape: bams_appliance::tape::TapeConfig,
    /// iSCSI target backend (`tgt` by default) and where LUNs may come from.
    pub iscsi: bams_appliance::iscsi::IscsiConfig,
    /// Which services' logs the API may read, and how many may follow at once.
    pub logs: bams_appliance::logs::LogsConfig,
    /// The bare-metal image service: its repository, boot files and tokens.
    pub images: bams_images::ImagesConfig,
}

impl Default for Config {
    fn default() -> Self {
        let root = nix_is_root();
        Self {
            listen: "0.0.0.0:4848".into(),
            socket: None,
            socket_roles: SocketConfig::default(),
            data_dir: if root { PathBuf::from("/var/lib/bams") } else { PathBuf::from("./bams-data") },
            catalog: String::new(),
            repository: String::new(),
            tls: TlsConfig::default(),
            log_format: "text".into(),
            server_id: String::new(),
            max_concurrent_jobs: 2,
            max_concurrent_per_repository: 0,
            scheduler_interval_secs: 5.0,
            run_missed: true,
            agent_heartbeat_timeout_secs: 60,
            agent_wait_secs: 3600,
            server_heartbeat_timeout_secs: 30,
            index_consolidate_every_secs: 3600,
            index_consolidate_min_files: 64,
            notifications: bams_director::notify::NotifyConfig::default(),
            shutdown_timeout_secs: 60,
            max_body_bytes: 2 << 20,
            header_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            max_object_bytes: 256 << 20,
            session_hours: 12,
            audit_retention_days: 365,
            restore_roots: Vec::new(),
            disk_devices: vec!["/dev/sd*".into(), "/dev/vd*".into(), "/dev/xvd*".into(), "/dev/nvme*n*".into()],
            bacula_sd_config: PathBuf::from("/etc/bacula/bacula-sd.conf"),
            tape: bams_appliance::tape::TapeConfig::default(),
            iscsi: bams_appliance::iscsi::IscsiConfig::default(),
            logs: bams_appliance::logs::LogsConfig::default(),
            images: bams_images::ImagesConfig::default(),
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// Key paths that environment variables may override.
const KEYS: &[&str] = &[
    "listen",
    "socket",
    "data_dir",
    "catalog",
    "repository",
    "tls.cert",
    "tls.key",
    "log_format",
    "server_id",
    "max_concurrent_jobs",
    "max_concurrent_per_repository",
    "scheduler_interval_secs",
    "run_missed",
    "agent_heartbeat_timeout_secs",
    "agent_wait_secs",
    "server_heartbeat_timeout_secs",
    "index_consolidate_every_secs",
    "index_consolidate_min_files",
    "notifications.on",
    "notifications.webhooks",
    "notifications.email.smtp_host",
    "notifications.email.smtp_port",
    "notifications.email.security",
    "notifications.email.username",
    "notifications.email.password",
    "notifications.email.from",
    "notifications.email.to",
    "notifications.email.ca_cert",
    "shutdown_timeout_secs",
    "max_body_bytes",
    "header_timeout_secs",
    "body_idle_timeout_secs",
    "max_object_bytes",
    "session_hours",
    "audit_retention_days",
    "bacula_sd_config",
    "tape.library",
    "tape.changer",
    "tape.dir",
    "iscsi.backend",
    "iscsi.tgt_control_port",
    "iscsi.scst_config",
    "logs.journal_directory",
    "logs.max_stream_clients",
    "images.repository",
    "images.netboot_dir",
    "images.public_url",
    "images.kernel_cmdline",
    "images.default_size",
    "images.boot_token_ttl_secs",
    "images.expire_every_secs",
];

impl Config {
    /// Load `file` (when given, or `/etc/bams/config.yaml` when it exists), apply `BAMS_*`
    /// overrides from `env`, fill derived defaults and validate.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let default_file = Path::new("/etc/bams/config.yaml");
        let file = file.map(Path::to_path_buf).or_else(|| default_file.exists().then(|| default_file.to_path_buf()));
        let mut doc = match &file {
            Some(f) => {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading config {}", f.display()))?;
                if text.trim().is_empty() {
                    serde_yaml::Value::Mapping(Default::default())
                } else {
                    serde_yaml::from_str(&text).with_context(|| format!("parsing config {}", f.display()))?
                }
            }
            None => serde_yaml::Value::Mapping(Default::default()),
        };
        for key in KEYS {
            let var = format!("BAMS_{}", key.to_uppercase().replace('.', "_"));
            if let Some(v) = env(&var) {
                let value: serde_yaml::Value = serde_yaml::from_str(&v).unwrap_or(serde_yaml::Value::String(v.clone()));
                // Strings stay strings even if they look like numbers where a string is expected.
                let value = match (*key, value) {
                    (
                        "listen"
                        | "socket"
                        | "data_dir"
                        | "catalog"
                        | "repository"
                        | "tls.cert"
                        | "tls.key"
                        | "log_format"
                        | "server_id"
                        | "bacula_sd_config"
                        | "tape.library"
                        | "tape.changer"
                        | "tape.dir"
                        | "iscsi.backend"
                        | "iscsi.scst_config"
                        | "logs.journal_directory"
                        | "images.repository"
                        | "images.netboot_dir"
                        | "images.public_url"
                        | "images.kernel_cmdline"
                        | "notifications.email.smtp_host"
                        | "notifications.email.security"
                        | "notifications.email.username"
                        | "notifications.email.password"
                        | "notifications.email.from"
                        | "notifications.email.ca_cert",
                        _,
                    ) => serde_yaml::Value::String(v),
                    (_, value) => value,
                };
                set_path(&mut doc, key, value)?;
            }
        }
        let mut cfg: Config = serde_yaml::from_value(doc).context("invalid configuration")?;
        cfg.finish()?;
        Ok(cfg)
    }

    fn finish(&mut self) -> Result<()> {
        if self.data_dir.is_relative() {
            self.data_dir = std::path::absolute(&self.data_dir).context("resolving data_dir")?;
        }
        if self.catalog.is_empty() {
            self.catalog = format!("sqlite://{}/catalog.db", self.data_dir.display());
        }
        if self.repository.is_empty() {
            self.repository = self.data_dir.join("repo").display().to_string();
        }
        if self.restore_roots.is_empty() {
            self.restore_roots.push(self.data_dir.join("restores"));
        }
        if self.server_id.is_empty() {
            self.server_id = format!("{}:{}", bams_store::host::hostname(), self.listen_addr()?.port());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be text or json, not {:?}", self.log_format);
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key must be set together");
        }
        self.notifications.validate().map_err(|e| anyhow::anyhow!(e))?;
        if self.max_concurrent_jobs == 0 {
            bail!("max_concurrent_jobs must be at least 1");
        }
        if !self.scheduler_interval_secs.is_finite() || self.scheduler_interval_secs <= 0.0 {
            bail!("scheduler_interval_secs must be positive");
        }
        Ok(())
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.listen.parse().with_context(|| format!("listen {:?} is not an address:port", self.listen))
    }
}

fn set_path(doc: &mut serde_yaml::Value, key: &str, value: serde_yaml::Value) -> Result<()> {
    let mut cur = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = match cur {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => {
                *cur = serde_yaml::Value::Mapping(Default::default());
                match cur {
                    serde_yaml::Value::Mapping(m) => m,
                    _ => bail!("config: {key}"),
                }
            }
            _ => bail!("config: {key} is not under a mapping"),
        };
        let k = serde_yaml::Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        cur = map.entry(k).or_insert(serde_yaml::Value::Mapping(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "listen: 127.0.0.1:9000\ndata_dir: /srv/bams\ntls:\n  cert: /c.pem\n  key: /k.pem\n")
            .expect("write");
        let env = |k: &str| match k {
            "BAMS_LISTEN" => Some("127.0.0.1:9100".to_string()),
            "BAMS_MAX_CONCURRENT_JOBS" => Some("4".to_string()),
            "BAMS_TLS_KEY" => Some("/other.pem".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&f), env).expect("config");
        assert_eq!(c.listen, "127.0.0.1:9100");
        assert_eq!(c.max_concurrent_jobs, 4);
        assert_eq!(c.data_dir, PathBuf::from("/srv/bams"));
        assert_eq!(c.catalog, "sqlite:///srv/bams/catalog.db");
        assert_eq!(c.repository, "/srv/bams/repo");
        assert_eq!(c.tls.key, Some(PathBuf::from("/other.pem")));
        assert!(c.server_id.ends_with(":9100"));
    }

    #[test]
    fn bad_config_is_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "lisen: 1\n").expect("write");
        let e = Config::load(Some(&f), |_| None).expect_err("unknown key");
        assert!(format!("{e:#}").contains("lisen"), "{e:#}");
        std::fs::write(&f, "tls:\n  cert: /c.pem\n").expect("write");
        assert!(Config::load(Some(&f), |_| None).is_err());
        assert!(Config::load(None, |k| (k == "BAMS_LISTEN").then(|| "nope".to_string())).is_err());
    }
}

#[cfg(test)]
mod packaged_example {
    /// The documented example in `packaging/config.yaml` parses and equals the defaults.
    #[test]
    fn example_config_is_valid_and_complete() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/config.yaml");
        let text = std::fs::read_to_string(&path).expect("packaging/config.yaml");
        let example: super::Config = serde_yaml::from_str(&text).expect("example parses");
        let default = super::Config { data_dir: "/var/lib/bams".into(), ..Default::default() };
        assert_eq!(serde_yaml::to_string(&example).ok(), serde_yaml::to_string(&default).ok());
        for key in super::KEYS {
            let top = key.split('.').next().unwrap_or_default();
            assert!(text.contains(&format!("{top}:")), "packaging/config.yaml does not document {key}");
        }
    }
}
