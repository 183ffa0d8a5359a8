//! LIO (the kernel target) through targetcli. The running state is read from configfs
//! (`/sys/kernel/config/target/iscsi/<iqn>/tpgt_1/{lun,acls}`); a target whose LUNs or ACLs
//! differ, or whose CHAP secret changed, is recreated from the desired state, and the result
//! is saved with `targetcli saveconfig` so it survives a reboot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{dir_names, Change, DesiredTarget, IscsiBackend, LunSpec, Session};
use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// LIO through targetcli.
pub struct Lio {
    runner: Arc<dyn CommandRunner>,
    sysfs: PathBuf,
}

fn tcli<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Cmd {
    Cmd::new("targetcli", args)
}

fn backstore(tid: i64, l: &LunSpec) -> (&'static str, String, &'static str) {
    let kind = if l.path.starts_with("/dev/") { "block" } else { "fileio" };
    let param = if kind == "block" { "dev" } else { "file_or_dev" };
    (kind, format!("bams_{tid}_{}", l.lun), param)
}

impl Lio {
    /// targetcli, with configfs under `sysfs` (normally `/sys`).
    pub fn new(runner: Arc<dyn CommandRunner>, sysfs: &Path) -> Self {
        Self { runner, sysfs: sysfs.to_path_buf() }
    }

    fn target_dir(&self, iqn: &str) -> PathBuf {
        self.sysfs.join("kernel/config/target/iscsi").join(iqn)
    }

    /// The commands that create `t` from nothing.
    pub fn create(&self, t: &DesiredTarget) -> Result<Vec<Cmd>, ApplianceError> {
        let iqn = &t.iqn;
        let tpg = format!("/iscsi/{iqn}/tpg1");
        let open = t.spec.initiators.iter().any(|i| i == "ALL");
        if let Some(ip) = t.spec.initiators.iter().find(|i| i.parse::<std::net::IpAddr>().is_ok()) {
            return Err(ApplianceError::Unsupported(format!(
                "LIO allows initiators by name, not by address ({ip}); use the initiator's IQN"
            )));
        }
        let mut cmds = Vec::new();
        for l in &t.spec.luns {
            let (kind, name, param) = backstore(t.tid, l);
            cmds.push(tcli([
                format!("/backstores/{kind}"),
                "create".into(),
                format!("name={name}"),
                format!("{param}={}", l.path),
            ]));
        }
        cmds.push(tcli(["/iscsi", "create", iqn]));
        for l in &t.spec.luns {
            let (kind, name, _) = backstore(t.tid, l);
            cmds.push(tcli([
                format!("{tpg}/luns"),
                "create".into(),
                format!("/backstores/{kind}/{name}"),
                format!("lun={}", l.lun),
                "add_mapped_luns=false".into(),
            ]));
        }
        if open {
            // Demo mode: any initiator; write protection is per portal group, not per LUN.
            let ro: BTreeSet<bool> = t.spec.luns.iter().map(|l| l.readonly).collect();
            if ro.len() > 1 {
                return Err(ApplianceError::Unsupported(
                    "LIO open to ALL cannot mix read-only and writable LUNs; list the initiators instead".into(),
                ));
            }
            let wp = u8::from(ro.contains(&true));
            cmds.push(tcli([
                tpg.clone(),
                "set".into(),
                "attribute".into(),
                "generate_node_acls=1".into(),
                format!("demo_mode_write_protect={wp}"),
            ]));
        }
        for init in t.spec.initiators.iter().filter(|i| *i != "ALL") {
            cmds.push(tcli([format!("{tpg}/acls"), "create".into(), init.clone(), "add_mapped_luns=false".into()]));
            for l in &t.spec.luns {
                cmds.push(tcli([
                    format!("{tpg}/acls/{init}"),
                    "create".into(),
                    format!("mapped_lun={}", l.lun),
                    format!("tpg_lun_or_backstore={}", l.lun),
                    format!("write_protect={}", l.readonly),
                ]));
            }
        }
        if let Some(c) = &t.spec.chap {
            cmds.push(tcli([tpg.as_str(), "set", "attribute", "authentication=1"]));
            let nodes: Vec<String> = if open {
                vec![tpg.clone()]
            } else {
                t.spec.initiators.iter().map(|i| format!("{tpg}/acls/{i}")).collect()
            };
            for node in nodes {
                cmds.push(tcli([node.as_str(), "set", "auth", &format!("userid={}", c.user)]));
                cmds.push(tcli([node.as_str(), "set", "auth"]).secret_arg(format!("password={}", c.secret)));
            }
        }
        cmds.push(tcli(["saveconfig"]));
        Ok(cmds)
    }

    /// The commands that delete `iqn` and the backstores BAMS made for target `tid`.
    fn delete(&self, tid: i64, iqn: &str) -> Vec<Cmd> {
        let mut cmds = vec![tcli(["/iscsi", "delete", iqn])];
        let core = self.sysfs.join("kernel/config/target/core");
        let prefix = format!("bams_{tid}_");
        for hba in dir_names(&core) {
            let kind = if hba.starts_with("fileio_") {
                "fileio"
            } else if hba.starts_with("iblock_") {
                "block"
            } else {
                continue;
            };
            for so in dir_names(&core.join(&hba)).into_iter().filter(|n| n.starts_with(&prefix)) {
                cmds.push(tcli([format!("/backstores/{kind}"), "delete".into(), so]));
            }
        }
        cmds.push(tcli(["saveconfig"]));
        cmds
    }
}

#[async_trait]
impl IscsiBackend for Lio {
    fn name(&self) -> &'static str {
        "lio"
    }

    async fn plan(&self, t: &DesiredTarget, _all: &[DesiredTarget]) -> Result<Vec<Change>, ApplianceError> {
        let dir = self.target_dir(&t.iqn);
        if !dir.is_dir() {
            return Ok(vec![Change::new(format!("target {} does not exist", t.iqn), self.create(t)?)]);
        }
        let tpg = dir.join("tpgt_1");
        let have_luns = dir_names(&tpg.join("lun"));
        let want_luns: BTreeSet<String> = t.spec.luns.iter().map(|l| format!("lun_{}", l.lun)).collect();
        let have_acls = dir_names(&tpg.join("acls"));
        let want_acls: BTreeSet<String> = t.spec.initiators.iter().filter(|i| *i != "ALL").cloned().collect();
        let mut why = Vec::new();
        if have_luns != want_luns {
            why.push(format!("LUNs are {have_luns:?} instead of {want_luns:?}"));
        }
        if have_acls != want_acls {
            why.push(format!("ACLs are {have_acls:?} instead of {want_acls:?}"));
        }
        if t.chap_changed {
            why.push("the CHAP secret changed".into());
        }
        if why.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmds = self.delete(t.tid, &t.iqn);
        cmds.pop(); // one saveconfig at the end
        cmds.extend(self.create(t)?);
        Ok(vec![Change::new(format!("{}: {}; recreated", t.iqn, why.join("; ")), cmds)])
    }

    async fn remove(&self, t: &DesiredTarget, _remaining: &[DesiredTarget], force: bool) -> Result<(), ApplianceError> {
        if !self.target_dir(&t.iqn).is_dir() {
            return Ok(());
        }
        let sessions = self.sessions().await?;
        let n = sessions.iter().filter(|s| s.target == t.iqn).count();
        if n > 0 && !force {
            return Err(ApplianceError::Conflict(format!(
                "{n} initiator(s) are logged in to {}; delete with force to disconnect them",
                t.iqn
            )));
        }
        for cmd in self.delete(t.tid, &t.iqn) {
            self.runner.run(&cmd).await?;
        }
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<Session>, ApplianceError> {
        // dynamic_sessions lists initiators logged in through demo mode; an ACL's `info` file
        // says "InitiatorName: …" and "Session State: TARG_SESS_STATE_LOGGED_IN" when in use.
        let root = self.sysfs.join("kernel/config/target/iscsi");
        let mut out = Vec::new();
        for iqn in dir_names(&root) {
            let tpg = root.join(&iqn).join("tpgt_1");
            let dynamic = std::fs::read_to_string(tpg.join("dynamic_sessions")).unwrap_or_default();
            for name in dynamic.split(['\n', '\0']).map(str::trim).filter(|n| !n.is_empty()) {
                out.push(Session { target: iqn.clone(), initiator: name.to_string(), address: None });
            }
            for acl in dir_names(&tpg.join("acls")) {
                let info = std::fs::read_to_string(tpg.join("acls").join(&acl).join("info")).unwrap_or_default();
                if info.contains("LOGGED_IN") {
                    let address = info
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("Address "))
                        .map(|a| a.split_whitespace().next().unwrap_or(a).to_string());
                    out.push(Session { target: iqn.clone(), initiator: acl, address });
                }
            }
        }
        Ok(out)
    }

    fn runner(&self) -> &dyn CommandRunner {
        self.runner.as_ref()
    }
}
