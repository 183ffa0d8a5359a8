//! ZFS for disk repositories: a dataset per repository under an existing parent dataset, with
//! a quota and its mount point under the data dir. Command vectors and `zfs list -Hp` parsing
//! (tab-separated, exact numbers, `-` for none) only; the `CommandRunner` runs them.

use crate::runner::Cmd;
use crate::ApplianceError;

/// One dataset as `zfs list -Hp -o name,used,avail,quota,mountpoint` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Full name (`pool/parent/child`).
    pub name: String,
    /// Bytes used.
    pub used: u64,
    /// Bytes available.
    pub avail: u64,
    /// Quota in bytes (`None` = no quota; ZFS prints 0 or `-`).
    pub quota: Option<u64>,
    /// Mount point (`None` for `none`/`legacy`/`-`).
    pub mountpoint: Option<String>,
}

/// `zfs list` of `dataset` (and nothing below it).
pub fn list_cmd(dataset: &str) -> Cmd {
    Cmd::new("zfs", ["list", "-Hp", "-o", "name,used,avail,quota,mountpoint", "-d", "0", dataset])
}

/// Parse `list_cmd` output.
pub fn parse_list(text: &str) -> Result<Vec<Dataset>, ApplianceError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [name, used, avail, quota, mnt] = f.as_slice() else {
                return Err(ApplianceError::Invalid(format!("unexpected zfs list line {line:?}")));
            };
            let num = |v: &str| -> Result<u64, ApplianceError> {
                v.parse().map_err(|_| ApplianceError::Invalid(format!("zfs list: {v:?} is not a number in {line:?}")))
            };
            Ok(Dataset {
                name: (*name).to_string(),
                used: num(used)?,
                avail: num(avail)?,
                quota: match *quota {
                    "-" | "0" => None,
                    q => Some(num(q)?),
                },
                mountpoint: (!matches!(*mnt, "-" | "none" | "legacy")).then(|| (*mnt).to_string()),
            })
        })
        .collect()
}

/// Dataset names: components of letters, digits and `_.:-`, separated by `/`.
pub fn check_dataset(name: &str) -> Result<(), ApplianceError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | ':' | '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ApplianceError::Invalid(format!("invalid ZFS dataset name {name:?}")))
    }
}

/// Create `dataset` with a quota, mounted at `mountpoint`.
pub fn create_cmd(dataset: &str, quota: u64, mountpoint: &str) -> Cmd {
    Cmd::new(
        "zfs",
        [
            "create".to_string(),
            "-o".into(),
            format!("quota={quota}"),
            "-o".into(),
            format!("mountpoint={mountpoint}"),
            dataset.into(),
        ],
    )
}

/// Destroy `dataset` (not recursively: BAMS never removes children it did not make).
pub fn destroy_cmd(dataset: &str) -> Cmd {
    Cmd::new("zfs", ["destroy", dataset])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_parses() {
        let text = include_str!("../tests/fixtures/zfs-list.txt");
        let d = parse_list(text).expect("zfs list");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].quota, None);
        assert_eq!(d[0].mountpoint.as_deref(), Some("/tank"));
        assert_eq!(d[2].quota, Some(536_870_912_000));
        assert_eq!(d[1].mountpoint, None);
        assert!(parse_list("tank\t1\n").is_err());
        assert!(parse_list("tank\tx\t1\t0\t/tank\n").is_err());
    }

    #[test]
    fn vectors_and_names() {
        assert_eq!(
            create_cmd("tank/bams/primary", 1 << 30, "/var/lib/bams/disks/primary").argv(),
            [
                "zfs",
                "create",
                "-o",
                "quota=1073741824",
                "-o",
                "mountpoint=/var/lib/bams/disks/primary",
                "tank/bams/primary"
            ]
        );
        assert_eq!(destroy_cmd("tank/bams/primary").argv(), ["zfs", "destroy", "tank/bams/primary"]);
        assert!(check_dataset("tank/backups").is_ok());
        for bad in ["", "tank//x", "tank/../x", "tank/x y", "/tank"] {
            assert!(check_dataset(bad).is_err(), "{bad}");
        }
    }
}
