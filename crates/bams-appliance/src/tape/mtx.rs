//! Real tape libraries through `mtx` (changer) and `mt` (drives), and the parser for
//! `mtx status`, tested on outputs recorded from several real changers
//! (`tests/fixtures/TAPE-SOURCES.md`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Changer, Drive, DriveStatus, Library, Loaded, Slot};
use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// Robot moves can take minutes on a large library.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);
/// A status read (the library may rescan first).
const STATUS_TIMEOUT: Duration = Duration::from_secs(180);

/// Parse `mtx status`. Lines mtx prints around the table (sense data after a unit
/// attention, "Mode sense … failed") are skipped; output without a single element is an error.
pub fn parse_status(text: &str) -> Result<Library, ApplianceError> {
    let mut lib = Library { kind: "mtx".into(), changer: String::new(), drives: Vec::new(), slots: Vec::new() };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Storage Changer ") {
            // "/dev/sg25:2 Drives, 24 Slots ( 1 Import/Export )"; some builds print the path only.
            let name = rest.split(':').next().unwrap_or(rest).trim();
            lib.changer = name.to_string();
        } else if let Some(rest) = line.strip_prefix("Data Transfer Element ") {
            lib.drives.push(parse_drive(rest).ok_or_else(|| unexpected(line))?);
        } else if let Some(rest) = line.strip_prefix("Storage Element ") {
            lib.slots.push(parse_slot(rest).ok_or_else(|| unexpected(line))?);
        }
    }
    if lib.drives.is_empty() && lib.slots.is_empty() {
        return Err(ApplianceError::Invalid(format!(
            "not mtx status output: {:?}",
            text.chars().take(200).collect::<String>()
        )));
    }
    Ok(lib)
}

fn unexpected(line: &str) -> ApplianceError {
    ApplianceError::Invalid(format!("unexpected mtx status line: {line:?}"))
}

/// The value of `:VolumeTag = X` / `:VolumeTag=X` in `s`, if any (primary tag only).
fn volume_tag(s: &str) -> Option<String> {
    let at = s.find(":VolumeTag")?;
    let rest = s[at + ":VolumeTag".len()..].trim_start().strip_prefix('=')?;
    let tag = rest.split(":AlternateVolumeTag").next().unwrap_or(rest).trim();
    (!tag.is_empty()).then(|| tag.to_string())
}

/// `0:Full (Storage Element 3 Loaded):VolumeTag = A00003L5` or `1:Empty`.
fn parse_drive(rest: &str) -> Option<Drive> {
    let (num, state) = rest.split_once(':')?;
    let id = num.trim().parse().ok()?;
    let loaded = if state.starts_with("Empty") {
        None
    } else if state.starts_with("Full") {
        let home_slot = state
            .split_once("(Storage Element ")
            .and_then(|(_, r)| r.split_once(" Loaded)"))
            .and_then(|(n, _)| n.trim().parse().ok());
        Some(Loaded { barcode: volume_tag(state), home_slot })
    } else {
        return None;
    };
    Some(Drive { id, device: None, loaded })
}

/// `1:Full :VolumeTag=HER006L9`, `24 IMPORT/EXPORT:Empty`.
fn parse_slot(rest: &str) -> Option<Slot> {
    let (head, state) = rest.split_once(':')?;
    let (num, import_export) = match head.trim().strip_suffix("IMPORT/EXPORT") {
        Some(n) => (n.trim(), true),
        None => (head.trim(), false),
    };
    let number = num.parse().ok()?;
    if state.starts_with("Empty") {
        Some(Slot::empty(number, import_export))
    } else if state.starts_with("Full") {
        Some(Slot::full(number, import_export, volume_tag(state)))
    } else {
        None
    }
}

/// A real library: `mtx -f CHANGER …` for the robot, `mt -f DRIVE status` for the drives.
pub struct MtxChanger {
    runner: Arc<dyn CommandRunner>,
    changer: String,
    drives: Vec<String>,
}

impl MtxChanger {
    /// Drive `changer` (e.g. `/dev/sg3`) whose drives are `drives` in element order.
    pub fn new(runner: Arc<dyn CommandRunner>, changer: &str, drives: Vec<String>) -> Self {
        Self { runner, changer: changer.to_string(), drives }
    }

    fn mtx(&self, args: &[String], timeout: Duration) -> Cmd {
        let mut argv = vec!["-f".to_string(), self.changer.clone()];
        argv.extend(args.iter().cloned());
        Cmd::new("mtx", argv).timeout(timeout)
    }

    fn device(&self, drive: u32) -> Result<&str, ApplianceError> {
        self.drives
            .get(drive as usize)
            .map(String::as_str)
            .ok_or_else(|| ApplianceError::NotFound(format!("device of drive {drive} (set tape.drives in the config)")))
    }

    async fn read(&self, args: &[&str]) -> Result<Library, ApplianceError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self.runner.run(&self.mtx(&args, STATUS_TIMEOUT)).await?;
        let mut lib = parse_status(&out.stdout)?;
        if lib.changer.is_empty() {
            lib.changer = self.changer.clone();
        }
        for d in &mut lib.drives {
            d.device = self.drives.get(d.id as usize).cloned();
        }
        Ok(lib)
    }
}

#[async_trait]
impl Changer for MtxChanger {
    async fn status(&self) -> Result<Library, ApplianceError> {
        self.read(&["status"]).await
    }

    async fn inventory(&self) -> Result<Library, ApplianceError> {
        self.runner.run(&self.mtx(&["inventory".into()], MOVE_TIMEOUT)).await?;
        self.status().await
    }

    async fn load_unchecked(&self, slot: u32, drive: u32) -> Result<(), ApplianceError> {
        self.runner.run(&self.mtx(&["load".into(), slot.to_string(), drive.to_string()], MOVE_TIMEOUT)).await?;
        Ok(())
    }

    async fn unload_unchecked(&self, drive: u32, slot: u32) -> Result<(), ApplianceError> {
        // Most drives keep the cartridge until told to eject; the robot cannot pull it before.
        if let Ok(dev) = self.device(drive) {
            self.runner.run(&Cmd::new("mt", ["-f", dev, "offline"]).timeout(MOVE_TIMEOUT)).await?;
        }
        self.runner.run(&self.mtx(&["unload".into(), slot.to_string(), drive.to_string()], MOVE_TIMEOUT)).await?;
        Ok(())
    }

    async fn transfer_unchecked(&self, from: u32, to: u32) -> Result<(), ApplianceError> {
        self.runner.run(&self.mtx(&["transfer".into(), from.to_string(), to.to_string()], MOVE_TIMEOUT)).await?;
        Ok(())
    }

    async fn drive_status(&self, drive: u32) -> Result<DriveStatus, ApplianceError> {
        let dev = self.device(drive)?;
        // mt-st exits non-zero on some drive states yet prints the table; parse what it printed.
        let cmd = Cmd::new("mt", ["-f", dev, "status"]).timeout(STATUS_TIMEOUT);
        let out = self.runner.output(&cmd).await?;
        super::mt::parse_status(&out.stdout).ok_or_else(|| {
            ApplianceError::Command(crate::runner::RunError::Failed {
                cmd: cmd.to_string(),
                status: out.status,
                stderr: if out.stderr.trim().is_empty() { out.stdout } else { out.stderr },
            })
        })
    }
}
