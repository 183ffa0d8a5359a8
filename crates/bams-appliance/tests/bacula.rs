//! The generated storage daemon config against the real `bacula-sd -t` (Debian's bacula-sd,
//! installed by scripts/setup-dev.sh), including a config it rejects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bams_appliance::bacula::{self, SdIdentity};
use bams_appliance::runner::{RunError, SystemRunner};
use bams_appliance::ApplianceError;
use bams_catalog::DiskRecord;

#[tokio::test]
async fn generated_config_passes_bacula_sd_and_a_bad_one_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskRecord {
        id: 1,
        name: "primary".into(),
        kind: "directory".into(),
        path: dir.path().join("primary").display().to_string(),
        fs_type: None,
        source: None,
        created_path: true,
        created_source: false,
        created_at: 0,
    };
    let id = SdIdentity {
        storage_name: "bams-sd".into(),
        director_name: "bams-dir".into(),
        director_password: "p4ss-w0rd".into(),
        address: "127.0.0.1".into(),
    };
    let text = bacula::generate_sd_config(&id, &[disk]).unwrap();
    let target = dir.path().join("bacula-sd.conf");
    let first = bacula::install(&SystemRunner, &target, &text).await.expect("valid config installs");
    assert!(first.previous.is_none());
    let again = bacula::install(&SystemRunner, &target, &text).await.expect("reinstall");
    assert!(again.previous.is_some(), "the replaced file is kept");

    let broken = text.replace("Media Type = File", "Media Tpye = File");
    match bacula::install(&SystemRunner, &target, &broken).await {
        Err(ApplianceError::Command(RunError::Failed { stderr, .. })) => {
            assert!(stderr.to_lowercase().contains("tpye") || stderr.contains("error"), "{stderr}")
        }
        other => panic!("bacula-sd must reject the typo: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), text, "the live config is untouched");
    assert!(!dir.path().join("bacula-sd.conf.bams-new").exists());
}
