//! The generated storage daemon config against the real `bacula-sd -t` (Debian's bacula-sd,
//! installed by scripts/setup-dev.sh), including a config it rejects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bams_appliance::bacula::{self, BaculaTape, SdIdentity};
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
    let text = bacula::generate_sd_config(&id, &[disk], &BaculaTape::None).unwrap();
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

#[tokio::test]
async fn tape_autochangers_for_real_and_virtual_libraries_pass_bacula_sd() {
    let dir = tempfile::tempdir().unwrap();
    let id = SdIdentity {
        storage_name: "bams-sd".into(),
        director_name: "bams-dir".into(),
        director_password: "p4ss-w0rd".into(),
        address: "127.0.0.1".into(),
    };
    let libraries = [
        BaculaTape::Mtx { changer: "/dev/sg3".into(), drives: vec!["/dev/nst0".into(), "/dev/nst1".into()] },
        BaculaTape::Virtual { dir: dir.path().join("vtl"), drives: 2 },
    ];
    for (i, tape) in libraries.iter().enumerate() {
        let text = bacula::generate_sd_config(&id, &[], tape).unwrap();
        assert!(text.contains("Autochanger {") && text.contains("Drive Index = 1"), "{text}");
        assert_eq!(bacula::device_names(&text), ["bams-tape-drive-0", "bams-tape-drive-1"]);
        let target = dir.path().join(format!("sd-{i}.conf"));
        bacula::install(&SystemRunner, &target, &text).await.unwrap_or_else(|e| panic!("{tape:?}: {e}\n{text}"));
        // An Autochanger naming a device that does not exist is refused by the daemon.
        let broken = text.replace("Device = \"bams-tape-drive-0\", ", "Device = \"no-such-drive\", ");
        assert!(bacula::install(&SystemRunner, &target, &broken).await.is_err(), "{broken}");
    }
    let mtx = bacula::generate_sd_config(&id, &[], &libraries[0]).unwrap();
    assert!(mtx.contains("Changer Command = \"/etc/bacula/scripts/mtx-changer %c %o %S %a %d\""));
    assert!(mtx.contains("Archive Device = \"/dev/nst1\""));
}
