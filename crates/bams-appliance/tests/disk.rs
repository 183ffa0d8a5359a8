//! Real filesystems on loop devices (needs root, as the appliance does; `mkfs.*` from
//! scripts/setup-dev.sh). Each kind is created, written, unmounted, mounted again and checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bams_appliance::disk::{self, FsKind};
use bams_appliance::runner::SystemRunner;

#[tokio::test]
async fn loop_backed_ext4_xfs_and_btrfs_are_created_mounted_and_remounted() {
    let dir = tempfile::tempdir().unwrap();
    let runner = SystemRunner;
    for kind in [FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs] {
        let image = dir.path().join(format!("{}.img", kind.as_str()));
        let mnt = dir.path().join(format!("mnt-{}", kind.as_str()));
        // Too small is refused before anything is created.
        let small = disk::create_loop_filesystem(&runner, &image, 1 << 20, kind, &mnt).await;
        assert!(matches!(small, Err(bams_appliance::ApplianceError::Invalid(_))), "{small:?}");
        assert!(!image.exists());
        disk::create_loop_filesystem(&runner, &image, kind.min_size(), kind, &mnt).await.expect("create");
        let m = disk::mount_at(&mnt).expect("mounted");
        assert_eq!(m.fstype, kind.as_str());
        std::fs::write(mnt.join("probe"), b"kept").unwrap();
        let cap = disk::capacity(&mnt).unwrap();
        assert!(cap.total_bytes > 0 && cap.total_bytes <= kind.min_size() && cap.used_bytes <= cap.total_bytes);
        // An existing image is never formatted again.
        let again = disk::create_loop_filesystem(&runner, &image, kind.min_size(), kind, &mnt).await;
        assert!(matches!(again, Err(bams_appliance::ApplianceError::Invalid(_))), "{again:?}");
        disk::unmount(&runner, &mnt).await.unwrap();
        assert!(disk::mount_at(&mnt).is_none());
        disk::mount_loop(&runner, &image, &mnt).await.unwrap();
        disk::mount_loop(&runner, &image, &mnt).await.unwrap(); // idempotent
        assert_eq!(std::fs::read(mnt.join("probe")).unwrap(), b"kept");
        disk::unmount(&runner, &mnt).await.unwrap();
    }
}
