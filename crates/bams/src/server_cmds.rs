//! `bams server`, `bams user …` and `bams catalog rebuild`: thin wrappers over bams-server and
//! bams-catalog, each on its own tokio runtime.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use bams_catalog::{Catalog, Role};
use bams_server::Config;
use serde_json::json;

use crate::cli::{CatalogCmd, ServerArgs, UserCmd};
use crate::exit;
use crate::output::Out;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bams-server")
        .build()
        .context("starting tokio")
}

fn config(a: &ServerArgs) -> Result<Config> {
    let mut cfg = Config::load(a.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(f) = &a.log_format {
        cfg.log_format = f.clone();
    }
    Ok(cfg)
}

/// Run the server until SIGTERM.
pub fn server(a: &ServerArgs) -> Result<u8> {
    let cfg = config(a)?;
    bams_server::init_tracing(&cfg.log_format);
    runtime()?.block_on(bams_server::serve(cfg))?;
    Ok(exit::OK)
}

/// `bams doctor`: the report of `GET /api/v1/system`, without a running server. The catalog
/// is opened without migrating it, so pending migrations are reported, not applied.
pub fn doctor(a: &ServerArgs, out: Out) -> Result<u8> {
    let cfg = config(a)?;
    let report = runtime()?.block_on(async {
        let wait = std::time::Duration::from_secs(5);
        let catalog = Catalog::connect_within(&cfg.catalog, wait).await.map_err(|e| e.to_string());
        let probe = bams_server::system::Probe {
            catalog: catalog.as_ref().map_err(Clone::clone),
            runner: &bams_appliance::runner::SystemRunner,
            root: std::path::PathBuf::from("/"),
        };
        bams_server::system::report(&cfg, probe).await
    });
    if out.json {
        out.json(&report)?;
    } else {
        print!("{}", doctor_text(&report));
    }
    Ok(if report.status == bams_server::system::Status::Fail { exit::ERROR } else { exit::OK })
}

/// The report for a terminal: checks first, then what was found.
fn doctor_text(r: &bams_server::system::SystemReport) -> String {
    use bams_server::system::Status;
    use std::fmt::Write;
    let mut s = format!("BAMS {} on {}\n\n", r.version, r.hostname);
    for c in &r.checks {
        let mark = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(s, "{mark}  {:<8} {}", c.name, c.detail);
    }
    s.push_str("\ntools:\n");
    for t in &r.tools {
        let found = t.version.clone().unwrap_or_else(|| format!("- ({})", t.problem.as_deref().unwrap_or("?")));
        let _ = writeln!(s, "  {:<11} {:<28} {}", t.name, found, t.feature);
    }
    if r.tape_devices.is_empty() {
        s.push_str("\ntape devices: none found\n");
    } else {
        s.push_str("\ntape devices:\n");
        for d in &r.tape_devices {
            let _ = writeln!(s, "  {:<10} {:<8} {} {}", d.sg, d.kind, d.model, d.nst.as_deref().unwrap_or(""));
        }
    }
    let verdict = match r.status {
        Status::Ok => "everything is fine",
        Status::Warn => "working, with warnings above",
        Status::Fail => "something the server needs is broken (FAIL above)",
    };
    let _ = writeln!(s, "\n{verdict}");
    s
}

fn new_password(file: Option<&std::path::Path>) -> Result<String> {
    if let Some(f) = file {
        let line = crate::session::read_password_file(f)?;
        return String::from_utf8(line).context("password is not UTF-8");
    }
    if let Ok(p) = std::env::var("BAMS_USER_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("new password: ")?;
        if rpassword::prompt_password("repeat password: ")? != p {
            bail!("passwords do not match");
        }
        return Ok(p);
    }
    bail!("no password given: set BAMS_USER_PASSWORD or use --user-password-file")
}

async fn open(a: &ServerArgs) -> Result<Catalog> {
    let cfg = config(a)?;
    Catalog::open(&cfg.catalog).await.context("opening the catalog")
}

/// `bams user …`
pub fn user(cmd: &UserCmd, out: Out) -> Result<u8> {
    runtime()?.block_on(async {
        match cmd {
            UserCmd::Add { server, username, role, password_file } => {
                let role: Role = role.parse()?;
                let pw = new_password(password_file.as_deref())?;
                let u = open(server).await?.create_user(username, &pw, role).await?;
                if out.json {
                    out.json(&u)?;
                } else {
                    out.info(format!("added user {} ({})", u.username, u.role));
                }
            }
            UserCmd::List { server } => {
                let users = open(server).await?.list_users().await?;
                if out.json {
                    out.json(&users)?;
                } else {
                    for u in users {
                        println!("{:<24} {:<9}{}", u.username, u.role, if u.disabled { " disabled" } else { "" });
                    }
                }
            }
            UserCmd::Passwd { server, username, password_file } => {
                let pw = new_password(password_file.as_deref())?;
                open(server).await?.set_password(username, &pw).await?;
                out.info(format!("password of {username} changed"));
            }
            UserCmd::Remove { server, username } => {
                let cat = open(server).await?;
                let u = cat.get_user_by_name(username).await?;
                cat.delete_user(u.id).await?;
                out.info(format!("removed user {username}"));
            }
        }
        Ok(exit::OK)
    })
}

/// `bams catalog rebuild|migrate`.
pub fn catalog(cmd: &CatalogCmd, out: Out) -> Result<u8> {
    match cmd {
        CatalogCmd::Rebuild { server } => rebuild(server, out),
        CatalogCmd::Migrate { server } => migrate(server, out),
    }
}

/// `bams catalog migrate`: bring the catalog to this version's schema (what the server does
/// when it starts; package upgrades run it so a stopped server is current too).
fn migrate(server: &ServerArgs, out: Out) -> Result<u8> {
    runtime()?.block_on(async {
        let cfg = config(server)?;
        let cat = Catalog::connect_within(&cfg.catalog, std::time::Duration::from_secs(10))
            .await
            .context("opening the catalog")?;
        let before = cat.migration_status().await?;
        cat.migrate().await.context("migrating the catalog")?;
        let after = cat.migration_status().await?;
        if out.json {
            out.json(&json!({"applied_before": before.0, "applied": after.0, "known": after.1}))?;
        } else {
            println!(
                "catalog: {} migration(s) applied now, {} of {} in all",
                after.0 - before.0.min(after.0),
                after.0,
                after.1
            );
        }
        Ok(exit::OK)
    })
}

/// `bams catalog rebuild`: the repositories are the source of truth for snapshots.
fn rebuild(server: &ServerArgs, out: Out) -> Result<u8> {
    runtime()?.block_on(async {
        let cfg = config(server)?;
        let cat = Catalog::open(&cfg.catalog).await.context("opening the catalog")?;
        let pool = bams_director::RepoPool::new(cat.clone(), &cfg.data_dir);
        let mut report = Vec::new();
        for r in cat.list_repositories().await? {
            let (n, errors) =
                pool.refresh_snapshots(r.id).await.with_context(|| format!("rebuilding repository {}", r.name))?;
            for e in &errors {
                eprintln!("warning: {}: {e}", r.name);
            }
            report.push(json!({"repository": r.name, "snapshots": n, "unreadable": errors.len()}));
            if !out.json {
                out.info(format!("{}: {n} snapshot(s)", r.name));
            }
        }
        if out.json {
            out.json(&report)?;
        }
        Ok(exit::OK)
    })
}
