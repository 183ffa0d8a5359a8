//! iSCSI: tgt against a real tgtd on 127.0.0.1 (a LUN read back over iSCSI with qemu-img and
//! libiscsi's iscsi-ls as initiators), the tgtadm parser on a recorded output, SCST's generated
//! config and apply, and LIO's targetcli vectors over a configfs tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bams_appliance::iscsi::tgt::{parse_show, Tgt};
use bams_appliance::iscsi::{self, Chap, DesiredTarget, IscsiBackend, LunSpec, TargetSpec};
use bams_appliance::runner::{CmdOutput, ScriptedRunner, SystemRunner};
use bams_appliance::ApplianceError;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn random_file(path: &Path, len: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, data).expect("write lun");
}

fn target(tid: i64, iqn: &str, luns: Vec<LunSpec>, initiators: &[&str], chap: Option<(&str, &str)>) -> DesiredTarget {
    DesiredTarget {
        tid,
        iqn: iqn.into(),
        spec: TargetSpec {
            luns,
            initiators: initiators.iter().map(|s| s.to_string()).collect(),
            chap: chap.map(|(u, s)| Chap { user: u.into(), secret: s.into() }),
        },
        chap_changed: false,
    }
}

fn lun(n: u32, path: &Path, readonly: bool) -> LunSpec {
    LunSpec { lun: n, path: path.display().to_string(), readonly }
}

#[test]
fn tgtadm_show_parser_on_a_recorded_output() {
    let targets = parse_show(&fixture("tgtadm-show-session.txt")).expect("parse");
    assert_eq!(targets.len(), 2);
    let t = &targets[0];
    assert_eq!((t.tid, t.iqn.as_str()), (1, "iqn.2026-11.io.bams:test1"));
    assert_eq!(t.luns.len(), 2, "LUN 0 (the controller) is not a LUN of ours");
    assert_eq!((t.luns[0].lun, t.luns[0].path.as_str(), t.luns[0].readonly), (1, "/tmp/tgtt/lun.img", true));
    assert!(!t.luns[1].readonly);
    assert_eq!(t.accounts, ["bamsuser"]);
    assert_eq!(t.acl, ["ALL", "iqn.1994-05.com.example:client1"]);
    assert_eq!(t.sessions, [("iqn.2008-11.org.linux-kvm".to_string(), Some("127.0.0.1".to_string()))]);
    assert_eq!((targets[1].tid, targets[1].luns.len(), targets[1].acl.len()), (2, 0, 0));
}

fn qemu_read(portal: u16, iqn: &str, lun: u32, creds: Option<(&str, &str)>, out: &Path) -> std::process::Output {
    let auth = creds.map(|(u, p)| format!("{u}%{p}@")).unwrap_or_default();
    Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &format!("iscsi://{auth}127.0.0.1:{portal}/{iqn}/{lun}")])
        .arg(out)
        .output()
        .expect("qemu-img")
}

/// A qemu-io process holding an iSCSI session open until dropped.
struct Initiator(std::process::Child);

impl Initiator {
    fn login(portal: u16, iqn: &str, creds: (&str, &str)) -> Self {
        let url = format!("iscsi://{}%{}@127.0.0.1:{portal}/{iqn}/1", creds.0, creds.1);
        let child = Command::new("qemu-io")
            .args(["-r", "-f", "raw", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io");
        Self(child)
    }
}

impl Drop for Initiator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tgt_applies_idempotently_serves_bytes_enforces_chap_and_reports_drift_and_sessions() {
    let tgtd = bams_testkit::TgtDaemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    random_file(&a, 3 << 20);
    random_file(&b, 1 << 20);
    let tgt = Tgt::new(Arc::new(SystemRunner), Some(tgtd.control_port()));
    let iqn = "iqn.2026-11.io.bams:vol1";
    let creds = ("backupuser", "s3cret-s3cret");
    let mut want = target(7, iqn, vec![lun(1, &a, true), lun(2, &b, false)], &["ALL"], Some(creds));
    want.chap_changed = true; // never applied yet

    let first = iscsi::apply(&tgt, &want, &[]).await.expect("apply");
    assert!(first.len() >= 4, "{first:?}");
    let text = serde_json::to_string(&first).expect("json");
    assert!(!text.contains(creds.1) && text.contains("***"), "the secret leaked into the change list: {text}");
    want.chap_changed = false;
    let again = iscsi::apply(&tgt, &want, &[]).await.expect("apply again");
    assert!(again.is_empty(), "second apply changed {again:?}");

    // The LUN's bytes over iSCSI equal the file; CHAP is enforced.
    let out = dir.path().join("read.raw");
    let r = qemu_read(tgtd.portal_port(), iqn, 1, Some(creds), &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(&a).expect("a"));
    let denied = qemu_read(tgtd.portal_port(), iqn, 1, Some((creds.0, "wrong-secret-1")), &dir.path().join("x.raw"));
    assert!(!denied.status.success(), "a wrong CHAP secret was accepted");
    let ls = Command::new("iscsi-ls")
        .args(["-s", &format!("iscsi://{}%{}@127.0.0.1:{}", creds.0, creds.1, tgtd.portal_port())])
        .output()
        .expect("iscsi-ls");
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(listing.contains(iqn) && listing.contains("Lun:2"), "{listing}");

    // Drift made behind BAMS's back is reported, then repaired.
    let adm = |args: &[&str]| {
        let s = Command::new("tgtadm")
            .args(["-C", &tgtd.control_port().to_string(), "--lld", "iscsi"])
            .args(args)
            .status()
            .expect("tgtadm");
        assert!(s.success());
    };
    adm(&["--mode", "logicalunit", "--op", "delete", "--tid", "7", "--lun", "2"]);
    adm(&["--mode", "logicalunit", "--op", "update", "--tid", "7", "--lun", "1", "--params", "readonly=0"]);
    adm(&["--mode", "target", "--op", "bind", "--tid", "7", "--initiator-address", "10.9.9.9"]);
    let drift: Vec<String> = tgt.plan(&want, &[]).await.expect("plan").into_iter().map(|c| c.description).collect();
    assert_eq!(drift.len(), 3, "{drift:?}");
    assert!(drift.iter().any(|d| d.contains("LUN 2") && d.contains("missing")), "{drift:?}");
    assert!(drift.iter().any(|d| d.contains("LUN 1 is writable")), "{drift:?}");
    assert!(drift.iter().any(|d| d.contains("10.9.9.9")), "{drift:?}");
    iscsi::apply(&tgt, &want, &[]).await.expect("repair");
    assert!(tgt.plan(&want, &[]).await.expect("plan").is_empty());

    // A logged-in initiator is listed, and protects the target from a plain delete.
    let session = Initiator::login(tgtd.portal_port(), iqn, creds);
    let start = Instant::now();
    let sessions = loop {
        let s = tgt.sessions().await.expect("sessions");
        if !s.is_empty() || start.elapsed() > Duration::from_secs(15) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0].target.as_str(), sessions[0].address.as_deref()), (iqn, Some("127.0.0.1")));
    assert!(matches!(tgt.remove(&want, &[], false).await, Err(ApplianceError::Conflict(m)) if m.contains("logged in")));
    drop(session);

    // A new secret is applied (the old one stops working); then the target goes away.
    want.spec.chap = Some(Chap { user: creds.0.into(), secret: "n3w-s3cret-xyz".into() });
    want.chap_changed = true;
    iscsi::apply(&tgt, &want, &[]).await.expect("new secret");
    assert!(!qemu_read(tgtd.portal_port(), iqn, 1, Some(creds), &dir.path().join("old.raw")).status.success());
    assert!(qemu_read(tgtd.portal_port(), iqn, 1, Some((creds.0, "n3w-s3cret-xyz")), &dir.path().join("new.raw"))
        .status
        .success());
    tgt.remove(&want, &[], true).await.expect("remove");
    assert!(tgt.observe().await.expect("observe").is_empty());
    tgt.remove(&want, &[], false).await.expect("removing twice is a no-op");
}

#[tokio::test]
async fn tgt_reports_a_rejected_command_with_its_message() {
    let tgtd = bams_testkit::TgtDaemon::start();
    let tgt = Tgt::new(Arc::new(SystemRunner), Some(tgtd.control_port()));
    // A backing file that vanished after validation: tgtadm refuses, and says so.
    let want =
        target(3, "iqn.2026-11.io.bams:gone", vec![lun(1, Path::new("/nonexistent/bams.img"), true)], &["ALL"], None);
    match iscsi::apply(&tgt, &want, &[]).await {
        Err(ApplianceError::Command(bams_appliance::runner::RunError::Failed { stderr, .. })) => {
            assert!(stderr.contains("tgtadm"), "{stderr}")
        }
        other => panic!("{other:?}"),
    }
}

fn scst_targets(dir: &Path) -> Vec<DesiredTarget> {
    vec![
        target(
            1,
            "iqn.2026-11.io.bams:images",
            vec![lun(1, &dir.join("v1.img"), true), LunSpec { lun: 2, path: "/dev/sdb".into(), readonly: false }],
            &["iqn.1994-05.com.example:client1"],
            Some(("imguser", "imgsecret-123")),
        ),
        target(2, "iqn.2026-11.io.bams:open", vec![lun(1, &dir.join("v2.img"), true)], &["ALL"], None),
    ]
}

#[tokio::test]
async fn scst_config_is_generated_applied_from_a_staged_file_and_kept_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let targets = scst_targets(Path::new("/srv/bams"));
    let text = iscsi::scst::generate(&targets).expect("generate");
    assert_eq!(text, fixture("scst.conf"), "generated scst.conf changed");

    let conf = dir.path().join("scst.conf");
    let staged = dir.path().join("scst.bams-staged");
    let runner = Arc::new(
        ScriptedRunner::default()
            .expect(
                ["scstadmin", "-config", staged.to_str().unwrap_or(""), "-force", "-noprompt"],
                CmdOutput::ok("All done."),
            )
            .expect(
                ["scstadmin", "-config", staged.to_str().unwrap_or(""), "-force", "-noprompt"],
                CmdOutput::failed(1, "FATAL: Unable to open device /dev/sdb"),
            ),
    );
    let scst = iscsi::scst::Scst::new(runner.clone(), &conf, dir.path());
    let changes = iscsi::apply(&scst, &targets[0], &targets).await.expect("apply");
    assert_eq!(changes.len(), 1);
    assert_eq!(std::fs::read_to_string(&conf).expect("installed"), text);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&conf).expect("meta").permissions().mode() & 0o777, 0o600, "holds CHAP secrets");
    assert!(iscsi::apply(&scst, &targets[0], &targets).await.expect("again").is_empty(), "idempotent");
    // scstadmin refusing a removal leaves the installed file (what runs) untouched.
    let err = scst.remove(&targets[1], &targets[..1], false).await.expect_err("refused");
    assert!(err.to_string().contains("Unable to open device"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).expect("still installed"), text);
    assert!(!staged.exists());
    assert!(runner.finished());

    // Sessions come from SCST's sysfs tree.
    let s = dir.path().join(
        "kernel/scst_tgt/targets/iscsi/iqn.2026-11.io.bams:images/sessions/iqn.1994-05.com.example:client1/10.0.0.7",
    );
    std::fs::create_dir_all(&s).expect("tree");
    let sessions = scst.sessions().await.expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        (sessions[0].initiator.as_str(), sessions[0].address.as_deref()),
        ("iqn.1994-05.com.example:client1", Some("10.0.0.7"))
    );
    let by_ip = target(3, "iqn.2026-11.io.bams:ip", vec![], &["10.0.0.1"], None);
    assert!(matches!(iscsi::scst::generate(&[by_ip]), Err(ApplianceError::Unsupported(_))));
}

#[tokio::test]
async fn lio_targetcli_vectors_and_configfs_drift() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lio = iscsi::lio::Lio::new(Arc::new(ScriptedRunner::default()), dir.path());
    let t = &scst_targets(Path::new("/srv/bams"))[0];
    let cmds: Vec<Vec<String>> = lio.create(t).expect("create").iter().map(|c| c.argv()).collect();
    let tpg = "/iscsi/iqn.2026-11.io.bams:images/tpg1";
    let acl = format!("{tpg}/acls/iqn.1994-05.com.example:client1");
    let want: Vec<Vec<String>> = [
        vec!["targetcli", "/backstores/fileio", "create", "name=bams_1_1", "file_or_dev=/srv/bams/v1.img"],
        vec!["targetcli", "/backstores/block", "create", "name=bams_1_2", "dev=/dev/sdb"],
        vec!["targetcli", "/iscsi", "create", "iqn.2026-11.io.bams:images"],
        vec![
            "targetcli",
            &format!("{tpg}/luns"),
            "create",
            "/backstores/fileio/bams_1_1",
            "lun=1",
            "add_mapped_luns=false",
        ],
        vec![
            "targetcli",
            &format!("{tpg}/luns"),
            "create",
            "/backstores/block/bams_1_2",
            "lun=2",
            "add_mapped_luns=false",
        ],
        vec!["targetcli", &format!("{tpg}/acls"), "create", "iqn.1994-05.com.example:client1", "add_mapped_luns=false"],
        vec!["targetcli", &acl, "create", "mapped_lun=1", "tpg_lun_or_backstore=1", "write_protect=true"],
        vec!["targetcli", &acl, "create", "mapped_lun=2", "tpg_lun_or_backstore=2", "write_protect=false"],
        vec!["targetcli", tpg, "set", "attribute", "authentication=1"],
        vec!["targetcli", &acl, "set", "auth", "userid=imguser"],
        vec!["targetcli", &acl, "set", "auth", "password=imgsecret-123"],
        vec!["targetcli", "saveconfig"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(cmds, want);
    let plan = lio.plan(t, &[]).await.expect("plan");
    assert_eq!(plan.len(), 1);
    assert!(plan[0].commands.iter().all(|c| !c.contains("imgsecret")), "{:?}", plan[0].commands);

    // configfs says the target exists as desired: nothing to do; one LUN missing: recreated.
    let tpg_dir: PathBuf = dir.path().join("kernel/config/target/iscsi/iqn.2026-11.io.bams:images/tpgt_1");
    for d in ["lun/lun_1", "lun/lun_2", "acls/iqn.1994-05.com.example:client1"] {
        std::fs::create_dir_all(tpg_dir.join(d)).expect("tree");
    }
    std::fs::create_dir_all(dir.path().join("kernel/config/target/core/fileio_0/bams_1_1")).expect("core");
    assert!(lio.plan(t, &[]).await.expect("plan").is_empty());
    std::fs::remove_dir(tpg_dir.join("lun/lun_2")).expect("rm");
    let plan = lio.plan(t, &[]).await.expect("plan");
    assert!(plan[0].description.contains("recreated"), "{}", plan[0].description);
    let argv: Vec<Vec<String>> = plan[0].cmds().iter().map(|c| c.argv()).collect();
    assert_eq!(argv[0], ["targetcli", "/iscsi", "delete", "iqn.2026-11.io.bams:images"]);
    assert_eq!(argv[1], ["targetcli", "/backstores/fileio", "delete", "bams_1_1"]);
    assert_eq!(argv.iter().filter(|a| a[1] == "saveconfig").count(), 1);

    // Sessions: an ACL that is logged in.
    std::fs::write(
        tpg_dir.join("acls/iqn.1994-05.com.example:client1/info"),
        "InitiatorName: iqn.1994-05.com.example:client1\nInitiatorAlias:\nLIO Session ID: 3   ISID: 0x00023d000001  TSIH: 2  SessionType: Normal\nSession State: TARG_SESS_STATE_LOGGED_IN\n",
    )
    .expect("info");
    let sessions = lio.sessions().await.expect("sessions");
    assert_eq!(sessions.len(), 1);
    let by_ip = target(3, "iqn.2026-11.io.bams:ip", vec![], &["10.0.0.1"], None);
    assert!(matches!(lio.create(&by_ip), Err(ApplianceError::Unsupported(_))));
}
