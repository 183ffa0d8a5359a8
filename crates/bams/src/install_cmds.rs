//! What installing the appliance needs from the binary itself: a TLS certificate for a new
//! machine (so packaged installs serve HTTPS from the first start without openssl), its
//! fingerprint for agents to pin, and man pages generated from the command definitions.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bams_store::backend::trust::{fingerprint_of, format_fingerprint};

use crate::cli::TlsCmd;
use crate::output::Out;

/// Run `bams tls …`.
pub fn tls(cmd: &TlsCmd, out: Out) -> Result<u8> {
    match cmd {
        TlsCmd::SelfSigned { dir, names, days, force } => {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !force && (cert.exists() || key.exists()) {
                bail!("{} already holds a certificate or key (--force replaces them)", dir.display());
            }
            let fingerprint = self_signed(dir, names, *days)?;
            out.info(format!("wrote {} and {} (valid {days} days)", cert.display(), key.display()));
            if out.json {
                out.json(&serde_json::json!({"cert": cert, "key": key, "fingerprint": fingerprint}))?;
            } else {
                println!("{fingerprint}");
            }
        }
        TlsCmd::Fingerprint { cert } => {
            let fingerprint = fingerprint_of_pem(cert)?;
            if out.json {
                out.json(&serde_json::json!({"cert": cert, "fingerprint": fingerprint}))?;
            } else {
                println!("{fingerprint}");
            }
        }
    }
    Ok(0)
}

/// This machine's names: host name, its FQDN when the resolver knows one, and loopback.
fn machine_names() -> Vec<String> {
    let host = bams_store::host::hostname();
    let mut names = vec![host.clone()];
    let fqdn = std::process::Command::new("hostname").arg("--fqdn").output();
    if let Some(o) = fqdn.ok().filter(|o| o.status.success()) {
        let f = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !f.is_empty() && f.contains('.') && f != host {
            names.push(f);
        }
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    names
}

/// Write `cert.pem` and `key.pem` (0600) into `dir`: an ECDSA P-256 certificate for this
/// machine's names and `extra`, valid `days`. Returns its fingerprint.
fn self_signed(dir: &Path, extra: &[String], days: u32) -> Result<String> {
    let mut names = machine_names();
    for n in extra {
        if n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!("--name {n:?} is not a DNS name or IP address");
        }
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(names.clone()).context("certificate names")?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, names[0].clone());
    dn.push(rcgen::DnType::OrganizationName, "BAMS appliance (self-signed)");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let cert = params.self_signed(&key).context("signing the certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_file(&dir.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join("cert.pem"), cert.pem().as_bytes(), 0o644)?;
    Ok(format_fingerprint(&fingerprint_of(cert.der())))
}

/// Write `bytes` to `path` with `mode`, through a temporary file renamed into place.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// The fingerprint of the first certificate in a PEM file.
fn fingerprint_of_pem(path: &Path) -> Result<String> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let blocks = pem::parse_many(&text).with_context(|| format!("{} is not PEM", path.display()))?;
    let cert = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .with_context(|| format!("{} holds no CERTIFICATE", path.display()))?;
    Ok(format_fingerprint(&fingerprint_of(cert.contents())))
}

/// Write man pages of `bams` and of every subcommand (`bams-backup.1`, `bams-tape-label.1`…)
/// into `dir`.
pub fn man_pages(dir: &Path, out: Out) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    let mut written = 0;
    // (command, page name `bams-tape-label`, how it is typed `bams tape label`)
    let mut stack = vec![(cmd, "bams".to_string(), "bams".to_string())];
    while let Some((cmd, name, typed)) = stack.pop() {
        if cmd.is_hide_set() {
            continue;
        }
        for sub in cmd.get_subcommands() {
            stack.push((sub.clone(), format!("{name}-{}", sub.get_name()), format!("{typed} {}", sub.get_name())));
        }
        let cmd = cmd.name(name.clone()).bin_name(typed);
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).with_context(|| format!("rendering {name}"))?;
        std::fs::write(dir.join(format!("{name}.1")), page).with_context(|| format!("writing {name}.1"))?;
        written += 1;
    }
    out.info(format!("wrote {written} man pages into {}", dir.display()));
    Ok(0)
}
