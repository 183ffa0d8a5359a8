//! iSCSI targets (docs/design.md §5 `/api/v1/iscsi/*`): the desired state of each target — IQN,
//! LUNs backed by files or block devices, initiator ACLs, CHAP — is validated here and kept in
//! the catalog; a backend brings the kernel or daemon to it idempotently and reports drift.
//! Backends: [`tgt`] (tgtadm, tested against a real tgtd), [`scst`] (generated scst.conf
//! applied with scstadmin) and [`lio`] (targetcli command vectors).

pub mod lio;
pub mod scst;
pub mod tgt;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::diskrepo::{clean_absolute, glob_match};
use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// Longest iSCSI name (RFC 3720 §3.2.6.1: 223 bytes).
const MAX_NAME: usize = 223;

/// Check an iSCSI name per RFC 3720 §3.2.6.3 (and RFC 3980 for `naa.`): `iqn.YYYY-MM.` +
/// a reversed domain name + optional `:` and a unique string, or `eui.` + 16 hex digits, or
/// `naa.` + 16 or 32 hex digits. Names are compared in lower case (RFC 3722), so upper-case
/// letters are refused rather than silently folded.
pub fn validate_iqn(name: &str) -> Result<(), ApplianceError> {
    let bad = |why: &str| Err(ApplianceError::Invalid(format!("invalid iSCSI name {name:?}: {why}")));
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("must be 1-223 characters");
    }
    if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b':')) {
        return bad("only lower-case letters, digits, '-', '.' and ':' are allowed");
    }
    let hex_len = |s: &str| s.bytes().all(|c| c.is_ascii_hexdigit()).then_some(s.len());
    if let Some(rest) = name.strip_prefix("eui.") {
        return if hex_len(rest) == Some(16) { Ok(()) } else { bad("eui. needs 16 hex digits") };
    }
    if let Some(rest) = name.strip_prefix("naa.") {
        return if matches!(hex_len(rest), Some(16 | 32)) { Ok(()) } else { bad("naa. needs 16 or 32 hex digits") };
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return bad("must start with iqn., eui. or naa.");
    };
    let (date, rest) = rest.split_at_checked(7).unwrap_or((rest, ""));
    let date_ok = date.len() == 7
        && date.as_bytes()[4] == b'-'
        && date[..4].bytes().all(|c| c.is_ascii_digit())
        && date[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m))
        && date[..4].parse::<u16>().is_ok_and(|y| y >= 1970);
    if !date_ok {
        return bad("the date must be YYYY-MM (the month the naming authority owned the domain)");
    }
    let Some(rest) = rest.strip_prefix('.') else {
        return bad("a '.' and the reversed domain name must follow the date");
    };
    let domain = rest.split(':').next().unwrap_or_default();
    let label_ok =
        |l: &str| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-') && !l.contains(':') && l.len() <= 63;
    if domain.is_empty() || !domain.split('.').all(label_ok) {
        return bad("the naming authority must be a reversed domain name (e.g. com.example)");
    }
    Ok(())
}

/// One LUN of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LunSpec {
    /// LUN number, 1-255 (0 is the target's controller on tgt).
    pub lun: u32,
    /// Backing file or block device.
    pub path: String,
    /// Export read-only (the default: a disk image version must not change under a reader).
    #[serde(default = "yes")]
    pub readonly: bool,
}

fn yes() -> bool {
    true
}

/// CHAP credentials an initiator must present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    /// User name.
    pub user: String,
    /// Secret, 12-16 characters (the range every common initiator accepts).
    pub secret: String,
}

/// What a target should look like.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// LUNs by number.
    #[serde(default)]
    pub luns: Vec<LunSpec>,
    /// Initiators allowed in: IQNs, IP addresses, or `ALL`. Empty = nobody.
    #[serde(default)]
    pub initiators: Vec<String>,
    /// CHAP, when required.
    #[serde(default)]
    pub chap: Option<Chap>,
}

/// Where LUN backing files and devices may come from.
#[derive(Debug, Clone, Default)]
pub struct PathPolicy {
    /// Directories whose files may back a LUN.
    pub dirs: Vec<PathBuf>,
    /// Device patterns (`/dev/sd*`) that may back a LUN.
    pub devices: Vec<String>,
    /// Never exported, even inside an allowed directory: the data directory's own files
    /// (catalog, passwords) and its `keys/`.
    pub protected: Option<PathBuf>,
}

impl PathPolicy {
    /// Check a LUN's backing path: absolute, no `..`, and — after resolving every symlink —
    /// inside an allowed directory or matching an allowed device pattern, not one of BAMS's
    /// own files, and a regular file or block device. Returns the resolved path, which is
    /// what gets exported (a link swapped later cannot redirect the LUN).
    pub fn check(&self, path: &str) -> Result<PathBuf, ApplianceError> {
        let p = clean_absolute(path)?;
        let real = std::fs::canonicalize(&p).map_err(|e| ApplianceError::Invalid(format!("{path}: {e}")))?;
        let canon = |d: &PathBuf| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        let in_dir = self.dirs.iter().any(|d| real.starts_with(canon(d)));
        let is_dev = real.to_str().is_some_and(|r| self.devices.iter().any(|g| glob_match(g, r)));
        if !in_dir && !is_dev {
            return Err(ApplianceError::Invalid(format!(
                "{path} is outside the allowed LUN paths ({}; devices {})",
                self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                self.devices.join(", ")
            )));
        }
        if let Some(data) = self.protected.as_ref().map(canon) {
            if real.parent() == Some(data.as_path()) || real.starts_with(data.join("keys")) {
                return Err(ApplianceError::Invalid(format!(
                    "{path} is one of BAMS's own files and is never exported"
                )));
            }
        }
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(&real) {
            Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(real),
            Ok(_) => Err(ApplianceError::Invalid(format!("{path} is neither a regular file nor a block device"))),
            Err(e) => Err(ApplianceError::Invalid(format!("{path}: {e}"))),
        }
    }
}

fn validate_initiator(i: &str) -> Result<(), ApplianceError> {
    if i == "ALL" || i.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    validate_iqn(i).map_err(|e| ApplianceError::Invalid(format!("initiator: {e} (or give an IP address or ALL)")))
}

impl TargetSpec {
    /// Validate everything an operator can get wrong, before anything is stored or applied.
    pub fn validate(&mut self, policy: &PathPolicy) -> Result<(), ApplianceError> {
        self.luns.sort_by_key(|l| l.lun);
        for pair in self.luns.windows(2) {
            if pair[0].lun == pair[1].lun {
                return Err(ApplianceError::Conflict(format!("LUN {} is given twice", pair[0].lun)));
            }
        }
        for l in &mut self.luns {
            check_lun_number(l.lun)?;
            l.path = policy.check(&l.path)?.display().to_string();
        }
        self.initiators.sort();
        self.initiators.dedup();
        for i in &self.initiators {
            validate_initiator(i)?;
        }
        if let Some(c) = &self.chap {
            let user_ok = !c.user.is_empty()
                && c.user.len() <= 64
                && c.user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
            if !user_ok {
                return Err(ApplianceError::Invalid(
                    "CHAP user must be 1-64 characters: letters, digits, - _ . @".into(),
                ));
            }
            if !(12..=16).contains(&c.secret.len()) || !c.secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApplianceError::Invalid(
                    "CHAP secret must be 12-16 printable characters without spaces".into(),
                ));
            }
        }
        Ok(())
    }

    /// Add a LUN (number checked, not taken).
    pub fn add_lun(&mut self, lun: LunSpec, policy: &PathPolicy) -> Result<(), ApplianceError> {
        check_lun_number(lun.lun)?;
        if self.luns.iter().any(|l| l.lun == lun.lun) {
            return Err(ApplianceError::Conflict(format!("LUN {} is taken", lun.lun)));
        }
        self.luns.push(lun);
        self.validate(policy)
    }
}

fn check_lun_number(n: u32) -> Result<(), ApplianceError> {
    if (1..=255).contains(&n) {
        Ok(())
    } else {
        Err(ApplianceError::Invalid(format!("LUN {n} is out of range 1-255")))
    }
}

/// The first free LUN number.
pub fn next_lun(spec: &TargetSpec) -> Result<u32, ApplianceError> {
    (1..=255)
        .find(|n| spec.luns.iter().all(|l| l.lun != *n))
        .ok_or_else(|| ApplianceError::Conflict("all 255 LUNs are taken".into()))
}

/// A target as the backend should have it.
#[derive(Debug, Clone)]
pub struct DesiredTarget {
    /// Catalog id; tgt's target id.
    pub tid: i64,
    /// IQN.
    pub iqn: String,
    /// Desired state.
    pub spec: TargetSpec,
    /// The CHAP secret changed since it was last applied (the backend cannot be asked).
    pub chap_changed: bool,
}

/// One difference between the desired state and the backend, and the commands that fix it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// What differs, in words.
    pub description: String,
    /// Commands that bring the backend to the desired state (secrets shown as `***`).
    pub commands: Vec<String>,
    #[serde(skip)]
    #[schema(ignore)]
    cmds: Vec<Cmd>,
    /// A config file to stage (0600) before the commands and install after they succeed.
    #[serde(skip)]
    #[schema(ignore)]
    install: Option<StagedFile>,
}

/// A config file written next to its target, applied from there, and moved into place only
/// once the backend accepted it (the previous file is kept as `.bams-previous`).
#[derive(Debug, Clone)]
struct StagedFile {
    target: PathBuf,
    staged: PathBuf,
    content: String,
}

impl Change {
    fn new(description: impl Into<String>, cmds: Vec<Cmd>) -> Self {
        Self {
            description: description.into(),
            commands: cmds.iter().map(ToString::to_string).collect(),
            cmds,
            install: None,
        }
    }

    /// The commands that run it (secrets redacted in their text form).
    pub fn cmds(&self) -> &[Cmd] {
        &self.cmds
    }
}

/// An initiator logged in to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    /// Target IQN.
    pub target: String,
    /// Initiator name.
    pub initiator: String,
    /// Initiator address, when the backend reports it.
    pub address: Option<String>,
}

/// A target backend.
#[async_trait]
pub trait IscsiBackend: Send + Sync {
    /// `tgt`, `scst` or `lio`.
    fn name(&self) -> &'static str;
    /// What `apply` would change for `target` (empty = no drift). `all` is every desired
    /// target, for backends that configure them as one file.
    async fn plan(&self, target: &DesiredTarget, all: &[DesiredTarget]) -> Result<Vec<Change>, ApplianceError>;
    /// Remove `target` from the backend (refused while initiators are logged in, unless
    /// `force`). `remaining` is every other desired target.
    async fn remove(
        &self,
        target: &DesiredTarget,
        remaining: &[DesiredTarget],
        force: bool,
    ) -> Result<(), ApplianceError>;
    /// Initiators logged in now.
    async fn sessions(&self) -> Result<Vec<Session>, ApplianceError>;
    /// The runner the changes are executed with.
    fn runner(&self) -> &dyn CommandRunner;
}

/// Bring the backend to the desired state of `target`; returns what changed (empty when it
/// already matched: applying twice changes nothing the second time).
pub async fn apply(
    backend: &dyn IscsiBackend,
    target: &DesiredTarget,
    all: &[DesiredTarget],
) -> Result<Vec<Change>, ApplianceError> {
    let changes = backend.plan(target, all).await?;
    for c in &changes {
        run_change(backend, c).await?;
    }
    Ok(changes)
}

/// Run one change: stage its file, run its commands, install the file.
async fn run_change(backend: &dyn IscsiBackend, c: &Change) -> Result<(), ApplianceError> {
    if let Some(f) = &c.install {
        crate::files::write_private(&f.staged, f.content.as_bytes())
            .map_err(crate::error::io(format!("writing {}", f.staged.display())))?;
    }
    for cmd in &c.cmds {
        if let Err(e) = backend.runner().run(cmd).await {
            if let Some(f) = &c.install {
                let _ = std::fs::remove_file(&f.staged); // rejected: the installed file stays as it was
            }
            return Err(e.into());
        }
    }
    if let Some(f) = &c.install {
        crate::files::install_keeping(&f.staged, &f.target, &f.target.with_extension("bams-previous"))?;
    }
    Ok(())
}

/// Names of the directories in `path` (none when it does not exist).
fn dir_names(path: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Digest of a CHAP secret, to notice it changed since it was applied (never the secret).
pub fn chap_digest(chap: Option<&Chap>) -> Option<String> {
    chap.map(|c| blake3::hash(format!("{}\0{}", c.user, c.secret).as_bytes()).to_hex().to_string())
}

/// Which backend and what it may export (config key `iscsi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiConfig {
    /// `tgt` (default), `scst` or `lio`.
    pub backend: String,
    /// tgt: tgtd's management port (`tgtadm -C N`); `null` = tgtd's default.
    pub tgt_control_port: Option<u16>,
    /// scst: the config file scstadmin applies.
    pub scst_config: PathBuf,
    /// Directories whose files may back LUNs; empty = the data dir.
    pub allowed_dirs: Vec<PathBuf>,
    /// sysfs/configfs root for session lists (scst, lio); tests point it at a fixture tree.
    pub sysfs_root: PathBuf,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        Self {
            backend: "tgt".into(),
            tgt_control_port: None,
            scst_config: PathBuf::from("/etc/scst.conf"),
            allowed_dirs: Vec::new(),
            sysfs_root: PathBuf::from("/sys"),
        }
    }
}

impl IscsiConfig {
    /// Open the configured backend.
    pub fn open(&self, runner: Arc<dyn CommandRunner>) -> Result<Arc<dyn IscsiBackend>, ApplianceError> {
        Ok(match self.backend.as_str() {
            "tgt" => Arc::new(tgt::Tgt::new(runner, self.tgt_control_port)),
            "scst" => Arc::new(scst::Scst::new(runner, &self.scst_config, &self.sysfs_root)),
            "lio" => Arc::new(lio::Lio::new(runner, &self.sysfs_root)),
            other => {
                return Err(ApplianceError::Invalid(format!("iscsi.backend must be tgt, scst or lio, not {other:?}")))
            }
        })
    }

    /// The LUN path policy: `allowed_dirs` (default: `<data_dir>/luns`, not the data dir
    /// itself, which holds key files) and the disk device patterns.
    pub fn policy(&self, data_dir: &Path, devices: &[String]) -> PathPolicy {
        let dirs = if self.allowed_dirs.is_empty() { vec![data_dir.join("luns")] } else { self.allowed_dirs.clone() };
        PathPolicy { dirs, devices: devices.to_vec(), protected: Some(data_dir.to_path_buf()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names_follow_rfc_3720() {
        for ok in [
            "iqn.2026-11.io.bams:test1",
            "iqn.1994-05.com.redhat:5e3e11e0a0a1",
            "iqn.2001-04.com.example",
            "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
            "eui.02004567a425678d",
            "naa.52004567ba64678d",
            "naa.6001405a0b1c2d3e4f5a6b7c8d9e0f10",
        ] {
            validate_iqn(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "iqn.2026-13.io.bams:x",
            "iqn.26-11.io.bams",
            "iqn.2026-11",
            "iqn.2026-11.:x",
            "iqn.2026-11.-bad.com",
            "IQN.2026-11.io.bams",
            "iqn.2026-11.io.bams:has space",
            "iqn.2026-11.io.bams:under_score",
            "eui.12345",
            "naa.xyz",
            "target1",
            &format!("iqn.2026-11.io.bams:{}", "a".repeat(220)),
        ] {
            assert!(validate_iqn(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn lun_paths_are_checked_after_resolving_links() {
        let data = tempfile::tempdir().expect("tempdir");
        let luns = data.path().join("luns");
        std::fs::create_dir_all(data.path().join("keys")).expect("keys");
        std::fs::create_dir_all(&luns).expect("luns");
        std::fs::write(data.path().join("keys/default.key"), b"k").expect("key");
        std::fs::write(luns.join("ok.img"), b"x").expect("img");
        std::os::unix::fs::symlink("/etc/passwd", luns.join("passwd.img")).expect("link");
        std::os::unix::fs::symlink(data.path().join("keys/default.key"), luns.join("key.img")).expect("link");
        let config = IscsiConfig::default();
        let policy = config.policy(data.path(), &["/dev/sd*".to_string()]);
        assert_eq!(
            policy.check(&luns.join("ok.img").display().to_string()).expect("ok"),
            luns.join("ok.img").canonicalize().expect("c")
        );
        for (p, says) in [
            (luns.join("passwd.img"), "outside the allowed"),
            (luns.join("key.img"), "outside the allowed"),
            (data.path().join("keys/default.key"), "outside the allowed"),
        ] {
            let e = policy.check(&p.display().to_string()).expect_err("refused");
            assert!(e.to_string().contains(says), "{}: {e}", p.display());
        }
        // Even an operator who allows the whole data directory does not export its secrets.
        let wide =
            PathPolicy { dirs: vec![data.path().to_path_buf()], devices: vec![], protected: Some(data.path().into()) };
        let e = wide.check(&luns.join("key.img").display().to_string()).expect_err("refused");
        assert!(e.to_string().contains("never exported"), "{e}");
        assert!(wide.check(&luns.join("ok.img").display().to_string()).is_ok());
    }

    #[test]
    fn specs_are_checked_before_anything_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("a.img");
        std::fs::write(&img, b"x").expect("write");
        let policy =
            PathPolicy { dirs: vec![dir.path().to_path_buf()], devices: vec!["/dev/sd*".into()], protected: None };
        let lun = |n: u32, p: &Path| LunSpec { lun: n, path: p.display().to_string(), readonly: true };
        let mut ok =
            TargetSpec { luns: vec![lun(2, &img)], initiators: vec!["ALL".into(), "10.0.0.5".into()], chap: None };
        ok.validate(&policy).expect("valid");
        assert!(matches!(ok.add_lun(lun(2, &img), &policy), Err(ApplianceError::Conflict(m)) if m == "LUN 2 is taken"));
        assert!(
            matches!(ok.add_lun(lun(0, &img), &policy), Err(ApplianceError::Invalid(m)) if m.contains("out of range"))
        );
        assert!(matches!(ok.add_lun(lun(256, &img), &policy), Err(ApplianceError::Invalid(_))));
        assert_eq!(next_lun(&ok).expect("free"), 1);
        let outside = TargetSpec { luns: vec![lun(1, Path::new("/etc/passwd"))], ..TargetSpec::default() };
        for (mut spec, says) in [
            (outside, "outside the allowed"),
            (TargetSpec { luns: vec![lun(1, &dir.path().join("../x"))], ..TargetSpec::default() }, "'..'"),
            (TargetSpec { luns: vec![lun(1, &dir.path().join("missing"))], ..TargetSpec::default() }, "No such file"),
            (TargetSpec { luns: vec![lun(1, dir.path())], ..TargetSpec::default() }, "neither a regular file"),
            (TargetSpec { initiators: vec!["client1".into()], ..TargetSpec::default() }, "initiator"),
            (
                TargetSpec { chap: Some(Chap { user: "u".into(), secret: "short".into() }), ..TargetSpec::default() },
                "12-16",
            ),
            (
                TargetSpec {
                    chap: Some(Chap { user: "bad user".into(), secret: "123456789012".into() }),
                    ..TargetSpec::default()
                },
                "CHAP user",
            ),
        ] {
            let err = spec.validate(&policy).expect_err(says);
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
    }
}
