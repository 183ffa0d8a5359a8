//! LVM and ZFS disk repositories where the machine has neither: the exact command vectors
//! are asserted and answered with recorded outputs by the scripted runner, against a real
//! (SQLite) catalog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bams_appliance::diskrepo::{DiskKind, DiskRepositories, NewDisk};
use bams_appliance::runner::{CmdOutput, RunError, ScriptedRunner};
use bams_appliance::ApplianceError;

fn spec(name: &str, kind: DiskKind) -> NewDisk {
    NewDisk {
        name: name.into(),
        kind,
        path: None,
        fs_type: None,
        size_bytes: Some(64 << 20),
        device: None,
        parent: None,
        volume_group: None,
        dataset: None,
        init_repository: false,
    }
}

async fn setup(runner: ScriptedRunner) -> (tempfile::TempDir, Arc<ScriptedRunner>, DiskRepositories) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = bams_catalog::Catalog::open(&format!("sqlite://{}/catalog.db", dir.path().display())).await.unwrap();
    let runner = Arc::new(runner);
    let disks = DiskRepositories::new(catalog, runner.clone(), dir.path(), Vec::new());
    (dir, runner, disks)
}

const VGS: &[&str] =
    &["vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,vg_size,vg_free", "bamsvgtest"];

#[tokio::test]
async fn lvm_volume_is_created_formatted_mounted_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = bams_catalog::Catalog::open(&format!("sqlite://{}/catalog.db", tmp.path().display())).await.unwrap();
    let mnt = tmp.path().join("disks/backup1").display().to_string();
    let runner = Arc::new(
        ScriptedRunner::default()
            .expect(VGS.iter().copied(), CmdOutput::ok(include_str!("fixtures/vgs.json")))
            .expect(["lvcreate", "-y", "-L", "67108864b", "-n", "bams-backup1", "bamsvgtest"], CmdOutput::ok(""))
            .expect(["mkfs.ext4", "-q", "-F", "/dev/bamsvgtest/bams-backup1"], CmdOutput::ok(""))
            .expect(["mount", "/dev/bamsvgtest/bams-backup1", mnt.as_str()], CmdOutput::ok(""))
            .expect(["lvremove", "-y", "bamsvgtest/bams-backup1"], CmdOutput::ok("")),
    );
    let disks = DiskRepositories::new(catalog, runner.clone(), tmp.path(), Vec::new());
    let mut s = spec("backup1", DiskKind::Lvm);
    s.volume_group = Some("bamsvgtest".into());
    let rec = disks.create(&s).await.expect("lvm create");
    assert_eq!((rec.kind.as_str(), rec.source.as_deref()), ("lvm", Some("/dev/bamsvgtest/bams-backup1")));
    disks.remove(&rec).await.expect("lvm remove");
    assert!(runner.finished(), "not every expected command ran: {:?}", runner.seen());
}

#[tokio::test]
async fn lvm_refuses_too_little_free_space_and_reports_command_failures() {
    let full = r#"{"report":[{"vg":[{"vg_name":"bamsvgtest","vg_size":"205520896","vg_free":"1048576"}]}]}"#;
    let (_d, runner, disks) = setup(ScriptedRunner::default().expect(VGS.iter().copied(), CmdOutput::ok(full))).await;
    let mut s = spec("big", DiskKind::Lvm);
    s.volume_group = Some("bamsvgtest".into());
    assert!(matches!(disks.create(&s).await, Err(ApplianceError::Conflict(_))));
    assert!(runner.finished());

    let vgs = include_str!("fixtures/vgs.json");
    let (_d, runner, disks) = setup(ScriptedRunner::default().expect(VGS.iter().copied(), CmdOutput::ok(vgs)).expect(
        ["lvcreate", "-y", "-L", "67108864b", "-n", "bams-big", "bamsvgtest"],
        CmdOutput::failed(5, "  Volume group \"bamsvgtest\" has insufficient free space"),
    ))
    .await;
    match disks.create(&s).await {
        Err(ApplianceError::Command(RunError::Failed { stderr, .. })) => {
            assert!(stderr.contains("insufficient"), "{stderr}")
        }
        other => panic!("expected the command's failure, got {other:?}"),
    }
    assert!(runner.finished());
}

#[tokio::test]
async fn zfs_dataset_is_created_with_a_quota_and_destroyed() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = bams_catalog::Catalog::open(&format!("sqlite://{}/catalog.db", tmp.path().display())).await.unwrap();
    let mnt = tmp.path().join("disks/offsite");
    let list = include_str!("fixtures/zfs-list.txt").lines().nth(1).unwrap().to_string() + "\n";
    let runner = Arc::new(
        ScriptedRunner::default()
            .expect(
                ["zfs", "list", "-Hp", "-o", "name,used,avail,quota,mountpoint", "-d", "0", "tank/backups"],
                CmdOutput::ok(&list),
            )
            .expect(
                [
                    "zfs".to_string(),
                    "create".into(),
                    "-o".into(),
                    "quota=67108864".into(),
                    "-o".into(),
                    format!("mountpoint={}", mnt.display()),
                    "tank/backups/bams-offsite".into(),
                ],
                CmdOutput::ok(""),
            )
            .expect(["zfs", "destroy", "tank/backups/bams-offsite"], CmdOutput::ok("")),
    );
    let disks = DiskRepositories::new(catalog, runner.clone(), tmp.path(), Vec::new());
    let mut s = spec("offsite", DiskKind::Zfs);
    s.dataset = Some("tank/backups".into());
    let rec = disks.create(&s).await.expect("zfs create");
    assert_eq!(rec.source.as_deref(), Some("tank/backups/bams-offsite"));
    // Not mounted on this machine (no ZFS): reported, not hidden.
    assert_eq!(disks.status(rec.clone()).health, "missing");
    disks.remove(&rec).await.expect("zfs remove");
    assert!(runner.finished(), "{:?}", runner.seen());
    // A parent that does not exist, and a bad name, create nothing.
    let mut bad = spec("x", DiskKind::Zfs);
    bad.dataset = Some("tank/../etc".into());
    assert!(matches!(disks.create(&bad).await, Err(ApplianceError::Invalid(_))));
}
