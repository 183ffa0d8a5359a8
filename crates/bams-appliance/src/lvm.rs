//! LVM for disk repositories: a logical volume per repository in an existing volume group.
//! Command vectors and report parsing only; the `CommandRunner` runs them. The JSON shape is
//! LVM's `--reportformat json` (fixtures recorded from lvm2 2.03 on Debian 12).

use serde::Deserialize;

use crate::runner::Cmd;
use crate::ApplianceError;

/// A volume group as `vgs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Unallocated bytes.
    pub free: u64,
}

/// A logical volume as `lvs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    /// Name.
    pub name: String,
    /// Its volume group.
    pub vg: String,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct VgSection {
    vg: Vec<VgRow>,
}

#[derive(Deserialize)]
struct LvSection {
    lv: Vec<LvRow>,
}

#[derive(Deserialize)]
struct VgRow {
    vg_name: String,
    vg_size: String,
    vg_free: String,
}

#[derive(Deserialize)]
struct LvRow {
    lv_name: String,
    vg_name: String,
    lv_size: String,
}

fn bytes(field: &str, v: &str) -> Result<u64, ApplianceError> {
    v.trim().parse().map_err(|_| ApplianceError::Invalid(format!("LVM reported {field} {v:?}, not a byte count")))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<Vec<T>, ApplianceError> {
    let r: Report<T> =
        serde_json::from_str(json).map_err(|e| ApplianceError::Invalid(format!("unexpected {what} output: {e}")))?;
    Ok(r.report)
}

/// `vgs` for one or all volume groups, in bytes.
pub fn vgs_cmd(vg: Option<&str>) -> Cmd {
    let mut args: Vec<String> =
        ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,vg_size,vg_free"]
            .map(String::from)
            .to_vec();
    args.extend(vg.map(str::to_string));
    Cmd::new("vgs", args)
}

/// `lvs` of one volume group, in bytes.
pub fn lvs_cmd(vg: &str) -> Cmd {
    let mut args: Vec<String> =
        ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", "lv_name,vg_name,lv_size"]
            .map(String::from)
            .to_vec();
    args.push(vg.to_string());
    Cmd::new("lvs", args)
}

/// Parse `vgs_cmd` output.
pub fn parse_vgs(json: &str) -> Result<Vec<VolumeGroup>, ApplianceError> {
    let mut out = Vec::new();
    for section in parse::<VgSection>("vgs", json)? {
        for r in section.vg {
            out.push(VolumeGroup {
                size: bytes("vg_size", &r.vg_size)?,
                free: bytes("vg_free", &r.vg_free)?,
                name: r.vg_name,
            });
        }
    }
    Ok(out)
}

/// Parse `lvs_cmd` output.
pub fn parse_lvs(json: &str) -> Result<Vec<LogicalVolume>, ApplianceError> {
    let mut out = Vec::new();
    for section in parse::<LvSection>("lvs", json)? {
        for r in section.lv {
            out.push(LogicalVolume { size: bytes("lv_size", &r.lv_size)?, name: r.lv_name, vg: r.vg_name });
        }
    }
    Ok(out)
}

/// LVM names: letters, digits and `+_.-`, not starting with `-`.
pub fn check_name(what: &str, name: &str) -> Result<(), ApplianceError> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApplianceError::Invalid(format!("invalid LVM {what} name {name:?}")))
    }
}

/// Create `lv` of `size` bytes in `vg`.
pub fn lvcreate_cmd(vg: &str, lv: &str, size: u64) -> Cmd {
    Cmd::new("lvcreate", ["-y".to_string(), "-L".into(), format!("{size}b"), "-n".into(), lv.into(), vg.into()])
}

/// Remove `vg/lv`.
pub fn lvremove_cmd(vg: &str, lv: &str) -> Cmd {
    Cmd::new("lvremove", ["-y".to_string(), format!("{vg}/{lv}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_reports_parse() {
        let vgs = parse_vgs(include_str!("../tests/fixtures/vgs.json")).expect("vgs");
        assert_eq!(vgs, vec![VolumeGroup { name: "bamsvgtest".into(), size: 205_520_896, free: 205_520_896 }]);
        assert!(parse_lvs(include_str!("../tests/fixtures/lvs-empty.json")).expect("lvs").is_empty());
        let lvs = parse_lvs(include_str!("../tests/fixtures/lvs.json")).expect("lvs");
        assert_eq!(lvs[1], LogicalVolume { name: "bams-primary".into(), vg: "vg0".into(), size: 107_374_182_400 });
        assert!(parse_vgs("garbage").is_err());
        assert!(parse_vgs(r#"{"report":[{"vg":[{"vg_name":"a","vg_size":"12.5g","vg_free":"0"}]}]}"#).is_err());
    }

    #[test]
    fn vectors_and_names() {
        assert_eq!(
            lvcreate_cmd("vg0", "bams-x", 1 << 30).argv(),
            ["lvcreate", "-y", "-L", "1073741824b", "-n", "bams-x", "vg0"]
        );
        assert_eq!(lvremove_cmd("vg0", "bams-x").argv(), ["lvremove", "-y", "vg0/bams-x"]);
        assert!(check_name("volume group", "vg0").is_ok());
        for bad in ["-vg", "vg/0", "", "vg 0", "../x"] {
            assert!(check_name("volume group", bad).is_err(), "{bad}");
        }
    }
}
