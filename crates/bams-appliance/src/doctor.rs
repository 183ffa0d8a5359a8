//! What this machine offers the appliance, read the way the features use it: the version of
//! each tool a feature runs (through the [`CommandRunner`], argument vectors only), the tape
//! changers and drives the kernel sees (from `/sys` and `/dev` under a root that tests point
//! at a fixture tree), and free space where data is written. `bams doctor` and
//! `GET /api/v1/system` build their report on this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::runner::{Cmd, CommandRunner, RunError};

/// A tool a feature needs, and what was found of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Tool {
    /// Program name.
    pub name: String,
    /// What it is for.
    pub feature: String,
    /// Its version, when it runs.
    pub version: Option<String>,
    /// Why it is not usable (not installed, failed), when it is not.
    pub problem: Option<String>,
}

/// (program, arguments that print its version, feature).
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("bacula-sd", &["-?"], "Bacula storage daemon integration"),
    ("mtx", &["--version"], "tape changers"),
    ("mt", &["--version"], "tape drives"),
    ("tgtadm", &["--version"], "iSCSI targets (tgt)"),
    ("scstadmin", &["-version"], "iSCSI targets (SCST)"),
    ("targetcli", &["--version"], "iSCSI targets (LIO)"),
    ("lvm", &["version"], "LVM disk repositories"),
    ("zfs", &["version"], "ZFS disk repositories"),
    ("journalctl", &["--version"], "service logs"),
    ("qemu-img", &["--version"], "reading disk images and iSCSI LUNs"),
];

/// Run every tool's version command (each limited to 10 s) and report what answered.
pub async fn tools(runner: &dyn CommandRunner) -> Vec<Tool> {
    probe(runner, TOOLS).await
}

async fn probe(runner: &dyn CommandRunner, list: &[(&str, &[&str], &str)]) -> Vec<Tool> {
    let mut out = Vec::with_capacity(list.len());
    for (name, args, feature) in list {
        let cmd = Cmd::new(name, args.iter().copied()).timeout(Duration::from_secs(10));
        let (version, problem) = match runner.output(&cmd).await {
            // Several print their version with a non-zero status (`bacula-sd -?`).
            Ok(o) => match version_in(&format!("{}\n{}", o.stdout, o.stderr)) {
                Some(v) => (Some(v), None),
                None => (None, Some(format!("{cmd} printed no version (exit {:?})", o.status))),
            },
            Err(RunError::NotInstalled { .. }) => (None, Some("not installed".to_string())),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(Tool { name: (*name).to_string(), feature: (*feature).to_string(), version, problem });
    }
    out
}

/// The first version number (`1.3.12`, `2.03.16(2)` → `2.03.16`, `systemd 252` → `252`) in a
/// tool's output, skipping copyright years.
pub fn version_in(text: &str) -> Option<String> {
    for line in text.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.contains("copyright") || lower.contains("(c)") {
            continue;
        }
        for (i, c) in line.char_indices() {
            let starts_word = i == 0 || !line[..i].ends_with(|p: char| p.is_ascii_alphanumeric() || p == '.');
            if c.is_ascii_digit() && starts_word {
                let rest = &line[i..];
                let end = rest.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(rest.len());
                let v = rest[..end].trim_end_matches('.');
                if v.contains('.') || lower.contains("version") || lower.starts_with("systemd") {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// A SCSI device the kernel sees.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ScsiDevice {
    /// Its SCSI generic node (`/dev/sg3`).
    pub sg: String,
    /// `changer` or `tape`.
    pub kind: String,
    /// Vendor and model as the device reports them.
    pub model: String,
    /// A tape drive's non-rewinding node (`/dev/nst0`), when the st driver has it.
    pub nst: Option<String>,
}

/// Tape changers and drives under `root` (`/` on a real machine): SCSI generic devices of
/// type 8 (medium changer) and 1 (sequential access), from `sys/class/scsi_generic`.
pub fn tape_devices(root: &Path) -> Vec<ScsiDevice> {
    let class = root.join("sys/class/scsi_generic");
    let Ok(entries) = std::fs::read_dir(&class) else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let device = e.path().join("device");
        let read = |f: &str| std::fs::read_to_string(device.join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
        let kind = match read("type").as_str() {
            "8" => "changer",
            "1" => "tape",
            _ => continue,
        };
        let model = format!("{} {}", read("vendor"), read("model")).trim().to_string();
        // The st driver lists a drive's nodes under device/scsi_tape/ (nst0, st0, …).
        let nst = std::fs::read_dir(device.join("scsi_tape")).ok().and_then(|d| {
            d.flatten()
                .map(|t| t.file_name().to_string_lossy().to_string())
                .find(|t| t.starts_with("nst") && t[3..].chars().all(|c| c.is_ascii_digit()))
                .map(|t| format!("/dev/{t}"))
        });
        found.push(ScsiDevice { sg: format!("/dev/{name}"), kind: kind.to_string(), model, nst });
    }
    found.sort_by(|a, b| a.sg.cmp(&b.sg));
    found
}

/// Free space where something is written.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Space {
    /// What lives there (`data directory`, `repository default`, …).
    pub what: String,
    /// The directory.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Bytes available to the server.
    pub free_bytes: u64,
    /// Size of the file system.
    pub total_bytes: u64,
}

impl Space {
    /// Free space of the file system holding `path` (or its nearest existing ancestor: a
    /// repository not written yet lands there).
    pub fn of(what: &str, path: &Path) -> std::io::Result<Self> {
        let mut probe = path.to_path_buf();
        while !probe.exists() {
            if !probe.pop() {
                break;
            }
        }
        let st = nix::sys::statvfs::statvfs(&probe).map_err(std::io::Error::from)?;
        let frag = st.fragment_size();
        Ok(Self {
            what: what.to_string(),
            path: path.to_path_buf(),
            free_bytes: st.blocks_available().saturating_mul(frag),
            total_bytes: st.blocks().saturating_mul(frag),
        })
    }

    /// Share of the file system still free, 0-100.
    pub fn free_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 100.0;
        }
        self.free_bytes as f64 * 100.0 / self.total_bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{CmdOutput, ScriptedRunner};

    #[test]
    fn versions_come_from_what_the_tools_print() {
        // Recorded on Debian 12.
        let cases = [
            ("Copyright (C) 2000-2020 Kern Sibbald.\n\nVersion: 9.6.7 (10 December 2020)\n", "9.6.7"),
            ("mtx version 1.3.12\n", "1.3.12"),
            ("mt-st v. 1.7\n", "1.7"),
            ("1.0.85\n", "1.0.85"),
            ("  LVM version:     2.03.16(2) (2022-05-18)\n  Library version: 1.02.185\n", "2.03.16"),
            ("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT\n", "252"),
            ("qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2)\n", "10.0.2"),
            ("zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n", "2.1.11"),
        ];
        for (text, want) in cases {
            assert_eq!(version_in(text).as_deref(), Some(want), "{text:?}");
        }
        assert_eq!(version_in("usage: tool [options]\n"), None);
    }

    #[tokio::test]
    async fn missing_and_silent_tools_say_why() {
        let runner = ScriptedRunner::default()
            .expect(["bacula-sd", "-?"], CmdOutput::failed(1, "Version: 9.6.7 (10 December 2020)"))
            .expect(["mtx", "--version"], CmdOutput::ok(""));
        let tools = probe(&runner, &TOOLS[..2]).await;
        assert_eq!(tools[0].version.as_deref(), Some("9.6.7"), "a non-zero exit with a version is fine");
        assert!(tools[1].problem.as_deref().is_some_and(|p| p.contains("printed no version")), "{:?}", tools[1]);
        let real = probe(
            &crate::runner::SystemRunner,
            &[("bams-no-such-tool", &["--version"], "x"), ("sh", &["-c", "echo 'thing version 1.2.3'"], "y")],
        )
        .await;
        assert_eq!(real[0].problem.as_deref(), Some("not installed"));
        assert_eq!(real[1].version.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn changers_and_drives_are_found_in_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let dev = |sg: &str, kind: &str, vendor: &str, model: &str| {
            let d = root.path().join("sys/class/scsi_generic").join(sg).join("device");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}  \n")).unwrap();
            std::fs::write(d.join("model"), format!("{model}\n")).unwrap();
            d
        };
        dev("sg0", "0", "ATA", "disk");
        dev("sg3", "8", "HP", "MSL G3 Series");
        let drive = dev("sg4", "1", "HP", "Ultrium 6-SCSI");
        std::fs::create_dir_all(drive.join("scsi_tape/nst0")).unwrap();
        std::fs::create_dir_all(drive.join("scsi_tape/st0")).unwrap();
        let found = tape_devices(root.path());
        assert_eq!(
            found,
            vec![
                ScsiDevice {
                    sg: "/dev/sg3".into(),
                    kind: "changer".into(),
                    model: "HP MSL G3 Series".into(),
                    nst: None
                },
                ScsiDevice {
                    sg: "/dev/sg4".into(),
                    kind: "tape".into(),
                    model: "HP Ultrium 6-SCSI".into(),
                    nst: Some("/dev/nst0".into())
                },
            ]
        );
        assert!(tape_devices(&root.path().join("nowhere")).is_empty());
    }

    #[test]
    fn space_is_read_for_paths_not_made_yet() {
        let dir = tempfile::tempdir().unwrap();
        let s = Space::of("repository", &dir.path().join("not/yet")).unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes, "{s:?}");
        assert!((0.0..=100.0).contains(&s.free_percent()));
    }
}
