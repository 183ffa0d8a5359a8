//! The Linux SCSI target framework (tgt): state read from `tgtadm --mode target --op show`,
//! changes made with tgtadm. tgtd keeps its state in memory, so `apply` after a tgtd restart
//! recreates every target — exactly what "bring the backend to the desired state" means.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Change, DesiredTarget, IscsiBackend, Session};
use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// A LUN as tgtd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLun {
    /// LUN number.
    pub lun: u32,
    /// Backing store path.
    pub path: String,
    /// Read-only.
    pub readonly: bool,
}

/// A target as tgtd reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedTarget {
    /// Target id.
    pub tid: i64,
    /// Its IQN.
    pub iqn: String,
    /// LUNs other than the controller (LUN 0).
    pub luns: Vec<ObservedLun>,
    /// Incoming CHAP accounts bound to it.
    pub accounts: Vec<String>,
    /// ACL entries (addresses, initiator names, `ALL`).
    pub acl: Vec<String>,
    /// Logged-in initiators: (name, address).
    pub sessions: Vec<(String, Option<String>)>,
}

#[derive(PartialEq)]
enum Section {
    Other,
    Nexus,
    Luns,
    Accounts,
    Acl,
}

/// Parse `tgtadm --lld iscsi --mode target --op show`.
pub fn parse_show(text: &str) -> Result<Vec<ObservedTarget>, ApplianceError> {
    let mut out: Vec<ObservedTarget> = Vec::new();
    let mut section = Section::Other;
    let mut lun: Option<ObservedLun> = None;
    // A LUN block ends at the next LUN, section or target; LUN 0 is tgt's controller.
    let flush = |lun: &mut Option<ObservedLun>, t: Option<&mut ObservedTarget>| {
        if let (Some(l), Some(t)) = (lun.take(), t) {
            if l.lun != 0 {
                t.luns.push(l);
            }
        }
    };
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(rest) = raw.strip_prefix("Target ") {
            flush(&mut lun, out.last_mut());
            let (tid, iqn) = rest
                .split_once(": ")
                .ok_or_else(|| ApplianceError::Invalid(format!("unexpected tgtadm line {raw:?}")))?;
            let tid = tid.parse().map_err(|_| ApplianceError::Invalid(format!("unexpected tgtadm line {raw:?}")))?;
            out.push(ObservedTarget { tid, iqn: iqn.trim().to_string(), ..ObservedTarget::default() });
            section = Section::Other;
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        match line {
            "I_T nexus information:" => section = Section::Nexus,
            "LUN information:" => section = Section::Luns,
            "Account information:" => {
                flush(&mut lun, Some(t));
                section = Section::Accounts;
            }
            "ACL information:" => section = Section::Acl,
            "System information:" => section = Section::Other,
            _ => match section {
                Section::Nexus => {
                    if let Some(name) = line.strip_prefix("Initiator: ") {
                        let name = name.split(" alias:").next().unwrap_or(name).trim();
                        t.sessions.push((name.to_string(), None));
                    } else if let Some(ip) = line.strip_prefix("IP Address: ") {
                        if let Some(s) = t.sessions.last_mut() {
                            s.1.get_or_insert_with(|| ip.trim().to_string());
                        }
                    }
                }
                Section::Luns => {
                    if let Some(n) = line.strip_prefix("LUN: ") {
                        flush(&mut lun, Some(t));
                        let lun_no = n
                            .parse()
                            .map_err(|_| ApplianceError::Invalid(format!("unexpected tgtadm line {raw:?}")))?;
                        lun = Some(ObservedLun { lun: lun_no, path: String::new(), readonly: false });
                    } else if let (Some(l), Some(v)) = (lun.as_mut(), line.strip_prefix("Readonly: ")) {
                        l.readonly = v.trim() == "Yes";
                    } else if let (Some(l), Some(v)) = (lun.as_mut(), line.strip_prefix("Backing store path: ")) {
                        l.path = v.trim().to_string();
                    }
                }
                Section::Accounts if !line.is_empty() && !line.ends_with("(outgoing)") => {
                    t.accounts.push(line.to_string())
                }
                Section::Acl if !line.is_empty() => t.acl.push(line.to_string()),
                _ => {}
            },
        }
    }
    flush(&mut lun, out.last_mut());
    Ok(out)
}

/// Parse `tgtadm --lld iscsi --mode account --op show` ("Account list:" then one per line).
pub fn parse_accounts(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Account list:"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_end_matches(" (outgoing)").to_string())
        .collect()
}

/// tgt through tgtadm.
pub struct Tgt {
    runner: Arc<dyn CommandRunner>,
    control_port: Option<u16>,
}

impl Tgt {
    /// tgtadm talking to the tgtd on `control_port` (tgtd's `-C`; `None` = its default).
    pub fn new(runner: Arc<dyn CommandRunner>, control_port: Option<u16>) -> Self {
        Self { runner, control_port }
    }

    fn adm(&self, args: &[&str]) -> Cmd {
        let mut argv: Vec<String> = Vec::new();
        if let Some(p) = self.control_port {
            argv.extend(["-C".to_string(), p.to_string()]);
        }
        argv.extend(["--lld", "iscsi"].iter().map(|s| s.to_string()));
        argv.extend(args.iter().map(|s| s.to_string()));
        Cmd::new("tgtadm", argv)
    }

    /// Every target tgtd has now.
    pub async fn observe(&self) -> Result<Vec<ObservedTarget>, ApplianceError> {
        let out = self.runner.run(&self.adm(&["--mode", "target", "--op", "show"])).await?;
        parse_show(&out.stdout)
    }

    async fn accounts(&self) -> Result<Vec<String>, ApplianceError> {
        let out = self.runner.run(&self.adm(&["--mode", "account", "--op", "show"])).await?;
        Ok(parse_accounts(&out.stdout))
    }

    fn lun_new(&self, tid: &str, l: &super::LunSpec) -> Vec<Cmd> {
        let lun = l.lun.to_string();
        let mut cmds = vec![self.adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            tid,
            "--lun",
            &lun,
            "--backing-store",
            &l.path,
        ])];
        if l.readonly {
            cmds.push(self.lun_readonly(tid, &lun, true));
        }
        cmds
    }

    fn lun_readonly(&self, tid: &str, lun: &str, on: bool) -> Cmd {
        let params = format!("readonly={}", u8::from(on));
        self.adm(&["--mode", "logicalunit", "--op", "update", "--tid", tid, "--lun", lun, "--params", &params])
    }

    fn acl(&self, op: &str, tid: &str, who: &str) -> Cmd {
        let key =
            if who == "ALL" || who.parse::<IpAddr>().is_ok() { "--initiator-address" } else { "--initiator-name" };
        self.adm(&["--mode", "target", "--op", op, "--tid", tid, key, who])
    }

    /// The changes that turn `have` (None = no such target) into `want`.
    pub fn diff(&self, want: &DesiredTarget, have: Option<&ObservedTarget>, accounts: &[String]) -> Vec<Change> {
        let tid = want.tid.to_string();
        let mut changes = Vec::new();
        let empty = ObservedTarget::default();
        let have = match have {
            Some(h) if h.iqn == want.iqn => h,
            Some(h) => {
                changes.push(Change::new(
                    format!("target {tid} is named {} instead of {}", h.iqn, want.iqn),
                    vec![self.adm(&["--mode", "target", "--op", "delete", "--tid", &tid])],
                ));
                changes.push(self.new_target(want));
                &empty
            }
            None => {
                changes.push(self.new_target(want));
                &empty
            }
        };
        for l in &want.spec.luns {
            let lun = l.lun.to_string();
            match have.luns.iter().find(|o| o.lun == l.lun) {
                None => changes.push(Change::new(format!("LUN {lun} ({}) is missing", l.path), self.lun_new(&tid, l))),
                Some(o) if o.path != l.path => {
                    let mut cmds =
                        vec![self.adm(&["--mode", "logicalunit", "--op", "delete", "--tid", &tid, "--lun", &lun])];
                    cmds.extend(self.lun_new(&tid, l));
                    changes.push(Change::new(format!("LUN {lun} is backed by {} instead of {}", o.path, l.path), cmds));
                }
                Some(o) if o.readonly != l.readonly => changes.push(Change::new(
                    format!("LUN {lun} is {}", if o.readonly { "read-only" } else { "writable" }),
                    vec![self.lun_readonly(&tid, &lun, l.readonly)],
                )),
                Some(_) => {}
            }
        }
        for o in have.luns.iter().filter(|o| want.spec.luns.iter().all(|l| l.lun != o.lun)) {
            let lun = o.lun.to_string();
            changes.push(Change::new(
                format!("LUN {lun} ({}) should not exist", o.path),
                vec![self.adm(&["--mode", "logicalunit", "--op", "delete", "--tid", &tid, "--lun", &lun])],
            ));
        }
        for i in want.spec.initiators.iter().filter(|i| !have.acl.contains(i)) {
            changes.push(Change::new(format!("initiator {i} is not allowed"), vec![self.acl("bind", &tid, i)]));
        }
        for i in have.acl.iter().filter(|i| !want.spec.initiators.contains(i)) {
            changes
                .push(Change::new(format!("initiator {i} should not be allowed"), vec![self.acl("unbind", &tid, i)]));
        }
        if let Some(c) = &want.spec.chap {
            let mut cmds = Vec::new();
            let exists = accounts.contains(&c.user);
            if exists && want.chap_changed {
                cmds.push(self.adm(&["--mode", "account", "--op", "delete", "--user", &c.user]));
            }
            if !exists || want.chap_changed {
                cmds.push(
                    self.adm(&["--mode", "account", "--op", "new", "--user", &c.user, "--password"])
                        .secret_arg(&c.secret),
                );
            }
            if !have.accounts.contains(&c.user) || want.chap_changed {
                cmds.push(self.adm(&["--mode", "account", "--op", "bind", "--tid", &tid, "--user", &c.user]));
            }
            if !cmds.is_empty() {
                changes.push(Change::new(format!("CHAP user {} is not set up", c.user), cmds));
            }
        }
        for a in have.accounts.iter().filter(|a| want.spec.chap.as_ref().is_none_or(|c| &c.user != *a)) {
            changes.push(Change::new(
                format!("CHAP user {a} should not be bound"),
                vec![self.adm(&["--mode", "account", "--op", "unbind", "--tid", &tid, "--user", a])],
            ));
        }
        changes
    }

    fn new_target(&self, want: &DesiredTarget) -> Change {
        let tid = want.tid.to_string();
        Change::new(
            format!("target {} does not exist", want.iqn),
            vec![self.adm(&["--mode", "target", "--op", "new", "--tid", &tid, "--targetname", &want.iqn])],
        )
    }
}

#[async_trait]
impl IscsiBackend for Tgt {
    fn name(&self) -> &'static str {
        "tgt"
    }

    async fn plan(&self, target: &DesiredTarget, _all: &[DesiredTarget]) -> Result<Vec<Change>, ApplianceError> {
        let observed = self.observe().await?;
        let accounts = if target.spec.chap.is_some() { self.accounts().await? } else { Vec::new() };
        Ok(self.diff(target, observed.iter().find(|o| o.tid == target.tid), &accounts))
    }

    async fn remove(
        &self,
        target: &DesiredTarget,
        _remaining: &[DesiredTarget],
        force: bool,
    ) -> Result<(), ApplianceError> {
        let observed = self.observe().await?;
        let Some(have) = observed.iter().find(|o| o.tid == target.tid && o.iqn == target.iqn) else {
            return Ok(()); // not in tgtd (restarted, or never applied)
        };
        if !have.sessions.is_empty() && !force {
            return Err(ApplianceError::Conflict(format!(
                "{} initiator(s) are logged in to {}; delete with force to disconnect them",
                have.sessions.len(),
                target.iqn
            )));
        }
        let tid = target.tid.to_string();
        let mut args = vec!["--mode", "target", "--op", "delete"];
        if force {
            args.push("--force");
        }
        args.extend(["--tid", &tid]);
        self.runner.run(&self.adm(&args)).await?;
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<Session>, ApplianceError> {
        Ok(self
            .observe()
            .await?
            .into_iter()
            .flat_map(|t| {
                t.sessions.into_iter().map(move |(initiator, address)| Session {
                    target: t.iqn.clone(),
                    initiator,
                    address,
                })
            })
            .collect())
    }

    fn runner(&self) -> &dyn CommandRunner {
        self.runner.as_ref()
    }
}
