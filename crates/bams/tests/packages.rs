//! The Debian packages, installed, upgraded, removed and purged in a clean Debian 12 root:
//! `packaging/test-debs.sh` does the work (dpkg, apt and chroot are shell's home ground) on
//! this build's binary; this test runs it as part of `cargo test` and shows its report.

use std::path::Path;
use std::process::Command;

#[test]
fn packages_install_upgrade_remove_and_purge_in_a_clean_root() {
    let root = nix::unistd::Uid::effective().is_root();
    let tools = ["cargo-deb", "mmdebstrap", "chroot", "curl", "jq", "openssl", "systemd-analyze"];
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !root || !missing.is_empty() {
        let why = format!("needs root and {missing:?} (bash scripts/setup-dev.sh installs them)");
        assert!(std::env::var_os("CI").is_none(), "package test cannot run: {why}");
        eprintln!("skipping the package test: {why}");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(workspace.join("packaging/test-debs.sh"))
        .arg(env!("CARGO_BIN_EXE_bams"))
        .current_dir(&workspace)
        .output()
        .expect("running packaging/test-debs.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "the package test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("test-debs: all package checks passed"), "{stdout}");
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        || Path::new(&format!("{}/.cargo/bin/{tool}", std::env::var("HOME").unwrap_or_default())).is_file()
}
