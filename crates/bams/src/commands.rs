//! One function per command; each returns an exit code.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bams_store::archiver::{self, BackupOptions, ParentChoice, Source};
use bams_store::browse::{self, Lookup};
use bams_store::check::{self, ReadData};
use bams_store::crypto::{KdfParams, SlotKind};
use bams_store::forget::{ForgetRequest, Retention};
use bams_store::prune::{self, PruneOptions};
use bams_store::repo::{resolve_snapshot, ChunkerParams, InitOptions};
use bams_store::restorer::{self, RestoreOptions};
use bams_store::snapshot::SnapshotEntry;
use bams_store::tree::{Node, NodeKind};
use bams_store::Id;
use serde_json::json;

use crate::cli::{Cli, Command, KeyCmd, RepoCmd};
use crate::exit;
use crate::output::{human_bytes, scan_total, Bar, Out};
use crate::session::{self, Session};

/// Dispatch a parsed command line.
pub fn run(cli: Cli) -> Result<u8> {
    let out = Out { json: cli.global.json, quiet: cli.global.quiet };
    let g = &cli.global;
    match cli.command {
        Command::Repo(RepoCmd::Init(a)) => {
            let avg = a.chunk_avg_kib * 1024;
            let opts = InitOptions {
                compression: a.compression,
                pack_size: a.pack_size_mib.unwrap_or_else(|| session::default_pack_size_mib(g)) * 1024 * 1024,
                chunker: ChunkerParams { min_size: avg / 4, avg_size: avg, max_size: avg * 4 },
                kdf: KdfParams { m_cost: a.kdf_memory_mib * 1024, t_cost: a.kdf_passes, p_cost: 1 },
                ids_from: match &a.copy_ids_from {
                    Some(other) => {
                        let secret = session::secret_from(g, a.from_password_file.as_deref())?;
                        let o = session::open_at(g, other, &secret).with_context(|| format!("opening {other}"))?;
                        Some((o.repo.key().clone(), o.repo.config().clone()))
                    }
                    None => None,
                },
            };
            let s = session::init(g, &opts)?;
            let c = s.repo.config();
            if out.json {
                out.json(&json!({"id": c.id, "location": s.repo.location(), "version": c.version}))?;
            } else {
                out.info(format!("created repository {} at {}", c.id.short(), s.repo.location()));
            }
            Ok(exit::OK)
        }
        Command::Repo(RepoCmd::Consolidate(a)) => {
            let s = session::open(g)?;
            let opts =
                bams_store::consolidate::ConsolidateOptions { min_files: a.min_files as usize, ..Default::default() };
            let r = bams_store::consolidate::consolidate(&s.repo, &opts)?;
            if out.json {
                out.json(&r)?;
            } else if r.files_merged == 0 {
                out.info(format!("{} index file(s); nothing to merge", r.files_before));
            } else {
                out.info(format!(
                    "merged {} index files into {} ({} packs, {} blobs): {} index file(s) now",
                    r.files_merged, r.files_written, r.packs, r.blobs, r.files_after
                ));
            }
            for id in &r.unreadable {
                eprintln!("warning: index file {id} could not be read and was left in place (bams check tells more)");
            }
            Ok(exit::OK)
        }
        Command::Backup(a) => backup(g, out, a),
        Command::Snapshots(a) => {
            let s = session::open(g)?;
            let (all, errors) = s.repo.snapshots()?;
            for e in &errors {
                eprintln!("warning: {e}");
            }
            let list: Vec<&SnapshotEntry> = all
                .iter()
                .filter(|e| a.host.as_ref().is_none_or(|h| &e.snapshot.host == h))
                .filter(|e| a.tag.as_ref().is_none_or(|t| e.snapshot.tags.contains(t)))
                .filter(|e| a.path.as_ref().is_none_or(|p| e.snapshot.paths.contains(p)))
                .collect();
            if out.json {
                out.json(&list.iter().map(|e| snapshot_json(e)).collect::<Vec<_>>())?;
            } else {
                println!("{:<10} {:<25} {:<16} {:<20} {:>10}  paths", "id", "time", "host", "tags", "size");
                for e in &list {
                    let s = &e.snapshot;
                    println!(
                        "{:<10} {:<25} {:<16} {:<20} {:>10}  {}{}",
                        e.id.short(),
                        s.time.format("%Y-%m-%d %H:%M:%S %z"),
                        s.host,
                        s.tags.join(","),
                        human_bytes(s.summary.total_bytes),
                        s.paths.join(" "),
                        if s.partial { "  (partial)" } else { "" }
                    );
                }
                println!("{} snapshots", list.len());
            }
            Ok(if errors.is_empty() { exit::OK } else { exit::PARTIAL })
        }
        Command::Ls(a) => {
            let s = session::open(g)?;
            let snap = find(&s, &a.snapshot)?;
            let index = s.repo.load_index()?;
            let path = a.path.as_deref().unwrap_or("/");
            let mut rows: Vec<serde_json::Value> = Vec::new();
            let mut print = |p: &str, n: &Node| {
                if out.json {
                    rows.push(node_json(p, n));
                } else if a.long {
                    println!("{}", long_line(p, n));
                } else {
                    println!("{p}");
                }
            };
            match browse::lookup(&s.repo, &index, &snap.snapshot.tree, path)? {
                Lookup::Root(root) => browse::list(&s.repo, &index, &root, "", !a.no_recursive, &mut print)?,
                Lookup::Node(n) => {
                    let base = format!("/{}", browse::path_components(path)?.join("/"));
                    print(&base, &n);
                    if let Some(sub) = n.subtree {
                        browse::list(&s.repo, &index, &sub, &base, !a.no_recursive, &mut print)?;
                    }
                }
            }
            if out.json {
                out.json(&rows)?;
            }
            Ok(exit::OK)
        }
        Command::Restore(a) => restore(g, out, a),
        Command::Diff(a) => {
            let s = session::open(g)?;
            let (all, _) = s.repo.snapshots()?;
            let x = resolve_snapshot(&all, &a.first)?;
            let y = resolve_snapshot(&all, &a.second)?;
            let index = s.repo.load_index()?;
            let changes = browse::diff(&s.repo, &index, &x.snapshot.tree, &y.snapshot.tree)?;
            if out.json {
                out.json(&changes)?;
            } else {
                for c in &changes {
                    println!("{:<2} {}", c.change, c.path);
                }
                let count = |k: &str| changes.iter().filter(|c| c.change == k).count();
                out.info(format!(
                    "{} added, {} removed, {} modified, {} metadata changed",
                    count("+"),
                    count("-"),
                    count("M"),
                    count("U")
                ));
            }
            Ok(exit::OK)
        }
        Command::Forget(a) => forget(g, out, a),
        Command::Copy(a) => copy(g, out, &a),
        Command::Prune(a) => {
            let s = session::open(g)?;
            let opts = PruneOptions {
                dry_run: a.dry_run,
                max_unused_percent: a.max_unused,
                grace: a.grace,
                ..Default::default()
            };
            run_prune(&s, out, &opts)?;
            Ok(exit::OK)
        }
        Command::Check(a) => {
            let s = session::open(g)?;
            let read = match (a.read_data, a.read_data_subset.as_deref()) {
                (true, _) => ReadData::All,
                (false, Some(p)) => ReadData::Subset(parse_percent(p)?),
                _ => ReadData::None,
            };
            let _lock = bams_store::lock::acquire(&s.repo, false, "check", std::time::Duration::from_secs(60))?;
            let bar = Bar::new(out, "check");
            let report = check::check(&s.repo, read, &|| bams_store::archiver::Progress::bytes(&*bar, 1))?;
            bar.finish();
            if out.json {
                out.json(&json!({"ok": report.ok(), "report": report}))?;
            } else {
                for p in &report.problems {
                    println!("{}: {}: {}", p.severity, p.object, p.message);
                }
                println!(
                    "{} snapshots, {} trees, {} packs ({} read), {} blobs: {}",
                    report.snapshots,
                    report.trees,
                    report.packs,
                    report.packs_read,
                    report.blobs,
                    if report.ok() { "no errors" } else { "ERRORS FOUND" }
                );
            }
            if report.ok() {
                Ok(exit::OK)
            } else {
                bail!(
                    "repository check found {} error(s)",
                    report.problems.iter().filter(|p| p.severity == "error").count()
                )
            }
        }
        Command::Stats(_) => {
            let s = session::open(g)?;
            let index = s.repo.load_index()?;
            let st = browse::stats(&s.repo, &index)?;
            if out.json {
                out.json(&st)?;
            } else {
                println!("snapshots:          {}", st.snapshots);
                println!("files (all snaps):  {}", st.files);
                println!("restore size:       {}", human_bytes(st.restore_size));
                println!("unique data:        {} in {} blobs", human_bytes(st.raw_bytes), st.blobs);
                println!("stored:             {} in {} packs", human_bytes(st.stored_bytes), st.packs);
                println!("space saving:       {:.2}x", st.dedup_compression_ratio);
            }
            Ok(exit::OK)
        }
        Command::Key(k) => key(g, out, k),
        Command::Tape(t) => crate::tape_cmds::run(g, out, t),
        Command::Agent(a) => crate::agent::run(out, a),
        Command::Flash(a) => crate::flash_cmd::run(out, a),
        Command::Mount(a) => {
            let signals = crate::mount::block_signals()?;
            let s = session::open(g)?;
            crate::mount::mount(s, &a.mountpoint, out, signals)?;
            Ok(exit::OK)
        }
        Command::Server(a) => crate::server_cmds::server(&a),
        Command::User(c) => crate::server_cmds::user(&c, out),
        Command::Catalog(c) => crate::server_cmds::catalog(&c, out),
        Command::Tls(c) => crate::install_cmds::tls(&c, out),
        Command::Doctor(a) => crate::server_cmds::doctor(&a, out),
        Command::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "bams", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => crate::install_cmds::man_pages(&dir, out),
        Command::Unlock => {
            let s = session::open(g)?;
            let n = bams_store::lock::remove_stale(&s.repo)?;
            if out.json {
                out.json(&json!({"removed": n}))?;
            } else {
                out.info(format!("removed {n} stale lock(s)"));
            }
            Ok(exit::OK)
        }
    }
}

fn parse_percent(p: &str) -> Result<f64> {
    let v: f64 = p.trim_end_matches('%').parse().with_context(|| format!("{p:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        bail!("percentage {v} is outside 0-100");
    }
    Ok(v)
}

fn find(s: &Session, spec: &str) -> Result<SnapshotEntry> {
    Ok(s.repo.find_snapshot(spec)?)
}

/// The JSON shape of a snapshot (docs/design.md §5: id, time RFC 3339, host, paths, tags).
pub fn snapshot_json(e: &SnapshotEntry) -> serde_json::Value {
    let s = &e.snapshot;
    json!({
        "id": e.id,
        "short_id": e.id.short(),
        "time": s.time.to_rfc3339(),
        "host": s.host,
        "username": s.username,
        "paths": s.paths,
        "tags": s.tags,
        "parent": s.parent,
        "tree": s.tree,
        "partial": s.partial,
        "origin": s.origin,
        "summary": s.summary,
    })
}

fn node_json(path: &str, n: &Node) -> serde_json::Value {
    serde_json::to_value(bams_store::browse::Entry::new(path, n)).unwrap_or_default()
}

fn long_line(path: &str, n: &Node) -> String {
    let t = match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Blockdev => 'b',
        NodeKind::Chardev => 'c',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::File => '-',
    };
    let mut perms = String::new();
    for shift in [6, 3, 0] {
        let bits = (n.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let user = n.user.clone().unwrap_or_else(|| n.uid.to_string());
    let group = n.group.clone().unwrap_or_else(|| n.gid.to_string());
    let time =
        chrono::DateTime::from_timestamp_nanos(n.mtime_ns).with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S");
    let link = n.link_target.as_ref().map(|t| format!(" -> {}", t.display())).unwrap_or_default();
    format!("{t}{perms} {user:>8} {group:>8} {:>12} {time} {path}{link}", n.size)
}

fn backup(g: &crate::cli::Global, out: Out, a: crate::cli::BackupArgs) -> Result<u8> {
    let s = session::open(g)?;
    let mut excludes = a.excludes.clone();
    for f in &a.exclude_files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading exclude file {}", f.display()))?;
        excludes.extend(text.lines().map(str::to_string));
    }
    let source = if a.stdin {
        if !a.paths.is_empty() {
            bail!("--stdin takes no paths");
        }
        Source::Stdin { reader: Box::new(std::io::stdin()), name: a.stdin_name.clone() }
    } else {
        if a.paths.is_empty() {
            bail!("nothing to back up: give at least one path or --stdin");
        }
        for p in &a.paths {
            if std::fs::symlink_metadata(p).is_err() {
                bail!("{}: no such file or directory", p.display());
            }
        }
        Source::Paths(a.paths.clone())
    };
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(p) = &a.parent {
        ParentChoice::Id(find(&s, p)?.id)
    } else {
        ParentChoice::Auto
    };
    let mut opts = BackupOptions::paths(Vec::new());
    opts.source = source;
    opts.excludes = excludes;
    opts.one_file_system = a.one_file_system;
    opts.image = a.image;
    opts.tags = a.tags.clone();
    opts.host = a.host.clone();
    opts.parent = parent;
    opts.pipeline.uploads = session::connections(g);
    let bar = Bar::new(out, "backup");
    if !a.stdin {
        scan_total(a.paths.clone(), bar.clone());
    }
    let result = archiver::backup(&s.repo, opts, &*bar)?;
    bar.finish();
    let sum = &result.snapshot.summary;
    if out.json {
        out.json(&json!({
            "snapshot_id": result.id,
            "snapshot": snapshot_json(&SnapshotEntry { id: result.id, snapshot: result.snapshot.clone() }),
            "warnings": result.warnings,
            "recovered_packs": result.recovered_packs,
            "requests": s.requests(),
        }))?;
    } else {
        if result.recovered_packs > 0 {
            out.info(format!("reused {} pack(s) left by an interrupted backup", result.recovered_packs));
        }
        out.info(format!(
            "files: {} new, {} changed, {} unmodified; dirs: {}\nread {} of {}, added {} ({} stored) in {:.1}s",
            sum.files_new,
            sum.files_changed,
            sum.files_unmodified,
            sum.dirs,
            human_bytes(sum.bytes_read),
            human_bytes(sum.total_bytes),
            human_bytes(sum.data_added),
            human_bytes(sum.data_added_packed),
            sum.duration_secs
        ));
        if result.snapshot.partial {
            eprintln!(
                "warning: {} file(s) could not be read; snapshot {} is partial",
                result.warnings.len(),
                result.id.short()
            );
        } else {
            out.info(format!("snapshot {} saved", result.id.short()));
        }
    }
    Ok(if result.snapshot.partial { exit::PARTIAL } else { exit::OK })
}

fn copy(g: &crate::cli::Global, out: Out, a: &crate::cli::CopyArgs) -> Result<u8> {
    let src = session::open_at(g, &a.from, &session::secret_from(g, a.from_password_file.as_deref())?)
        .with_context(|| format!("opening the source {}", a.from))?;
    let dst = session::open_at(g, &a.to, &session::secret_from(g, a.to_password_file.as_deref())?)
        .with_context(|| format!("opening the destination {}", a.to))?;
    let (all, errors) = src.repo.snapshots()?;
    for e in &errors {
        eprintln!("warning: {e}");
    }
    let mut selection: Vec<SnapshotEntry> = if a.snapshots.is_empty() {
        all.clone()
    } else {
        a.snapshots.iter().map(|spec| resolve_snapshot(&all, spec).cloned()).collect::<Result<_, _>>()?
    };
    selection.retain(|e| a.host.as_ref().is_none_or(|h| &e.snapshot.host == h));
    selection.retain(|e| a.tag.as_ref().is_none_or(|t| e.snapshot.tags.contains(t)));
    selection.dedup_by_key(|e| e.id);
    if selection.is_empty() {
        bail!("no snapshot of {} matches", a.from);
    }
    let pipeline =
        bams_store::pipeline::PipelineOptions { uploads: session::connections_for(g, &a.to), ..Default::default() };
    let bar = Bar::new(out, "copy");
    let report = bams_store::copy::copy(&src.repo, &dst.repo, &selection, pipeline, &*bar)?;
    bar.finish();
    if out.json {
        out.json(&report)?;
    } else {
        for (from, to) in &report.copied {
            out.info(format!("copied snapshot {} as {}", from.short(), to.short()));
        }
        if !report.skipped.is_empty() {
            out.info(format!("{} snapshot(s) already in the destination", report.skipped.len()));
        }
        out.info(format!(
            "added {} blob(s), {}{}",
            report.blobs_added,
            human_bytes(report.bytes_added),
            if report.rehashed { " (re-hashed: the repositories do not share blob ids)" } else { "" }
        ));
    }
    Ok(exit::OK)
}

fn restore(g: &crate::cli::Global, out: Out, a: crate::cli::RestoreArgs) -> Result<u8> {
    let s = session::open(g)?;
    let (spec, sub) = match a.snapshot.split_once(':') {
        Some((spec, sub)) => (spec, Some(sub)),
        None => (a.snapshot.as_str(), None),
    };
    let snap = find(&s, spec)?;
    let _lock = bams_store::lock::acquire(&s.repo, false, "restore", std::time::Duration::from_secs(60))?;
    let index = s.repo.load_index()?;
    let (root, root_path) = restorer::resolve_subtree(&s.repo, &index, &snap.snapshot.tree, sub)?;
    let mut opts = RestoreOptions::new(&a.target);
    opts.include = a.include.clone();
    opts.verify = a.verify;
    opts.numeric_owner = a.numeric_owner;
    let bar = Bar::new(out, "restore");
    bar.set_total(snap.snapshot.summary.total_bytes);
    let r = restorer::restore(&s.repo, &index, &root, &root_path, &opts, &*bar)?;
    bar.finish();
    for w in &r.warnings {
        if !out.quiet && !out.json {
            eprintln!("warning: {w}");
        }
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    if out.json {
        out.json(&json!({"snapshot_id": snap.id, "target": a.target, "result": r}))?;
    } else {
        out.info(format!(
            "restored {} files, {} dirs, {} other entries, {}{}",
            r.files,
            r.dirs,
            r.others,
            human_bytes(r.bytes),
            if a.verify { format!("; verified {} files", r.verified) } else { String::new() }
        ));
    }
    Ok(if r.errors.is_empty() { exit::OK } else { exit::PARTIAL })
}

fn forget(g: &crate::cli::Global, out: Out, a: crate::cli::ForgetArgs) -> Result<u8> {
    let s = session::open(g)?;
    let retention = Retention {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within: a.keep_within.clone(),
        keep_tags: a.keep_tag.clone(),
    };
    let req = ForgetRequest {
        policy: retention.to_policy()?,
        host: a.host.clone(),
        tag: a.tag.clone(),
        job: None,
        snapshots: a.snapshots.clone(),
        dry_run: a.dry_run,
    };
    let report = bams_store::forget::forget(&s.repo, &req)?;
    if out.json {
        out.json(&json!({"dry_run": a.dry_run, "removed": report.removed, "decisions": report.decisions}))?;
    } else {
        for d in &report.decisions {
            println!("{} {} {}", if d.keep { "keep  " } else { "remove" }, &d.id[..8], d.reasons.join(","));
        }
        out.info(format!(
            "{} {} snapshot(s)",
            if a.dry_run { "would remove" } else { "removed" },
            report.removed.len()
        ));
    }
    if a.prune && !a.dry_run {
        run_prune(&s, out, &PruneOptions { grace: a.grace, ..Default::default() })?;
    }
    Ok(exit::OK)
}

fn run_prune(s: &Session, out: Out, opts: &PruneOptions) -> Result<()> {
    let r = prune::prune(&s.repo, opts)?;
    if out.json {
        out.json(&r)?;
    } else {
        out.info(format!(
            "{}: {} packs, {} deleted, {} repacked ({} blobs), {} unindexed removed; freed {}, {} in use",
            if r.dry_run { "prune (dry run)" } else { "prune" },
            r.packs_before,
            r.packs_deleted,
            r.packs_repacked,
            r.blobs_repacked,
            r.unindexed_deleted,
            human_bytes(r.bytes_freed),
            human_bytes(r.bytes_used)
        ));
    }
    Ok(())
}

fn key(g: &crate::cli::Global, out: Out, k: KeyCmd) -> Result<u8> {
    let s = session::open(g)?;
    match k {
        KeyCmd::List => {
            let slots = s.repo.key_slots()?;
            let current = s.repo.current_key_slot();
            if out.json {
                let v: Vec<_> = slots
                    .iter()
                    .map(|(id, k)| json!({"id": id, "current": *id == current, "kind": k.kind, "label": k.label, "created": k.created.to_rfc3339(), "created_by": k.created_by}))
                    .collect();
                out.json(&v)?;
            } else {
                for (id, k) in &slots {
                    println!(
                        "{} {:<9} {:<8} {} {} {}",
                        if *id == current { "*" } else { " " },
                        id.short(),
                        format!("{:?}", k.kind).to_lowercase(),
                        k.created.format("%Y-%m-%d %H:%M"),
                        k.created_by,
                        k.label
                    );
                }
            }
        }
        KeyCmd::Add(a) => {
            let (secret, kind) = if let Some(kf) = &a.new_key_file {
                if !kf.exists() {
                    // 32 bytes from the OS CSPRNG (via rand's thread_rng in Id::random).
                    write_private(kf, &Id::random().0)?;
                    out.info(format!("created key file {}", kf.display()));
                }
                let data = std::fs::read(kf).with_context(|| format!("reading {}", kf.display()))?;
                if data.is_empty() {
                    bail!("key file {} is empty", kf.display());
                }
                (data, SlotKind::Keyfile)
            } else if let Some(pf) = &a.new_password_file {
                (session::read_password_file(pf)?, SlotKind::Password)
            } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                let p = rpassword::prompt_password("new password: ")?;
                if rpassword::prompt_password("repeat new password: ")? != p || p.is_empty() {
                    bail!("passwords are empty or do not match");
                }
                (p.into_bytes(), SlotKind::Password)
            } else {
                bail!("give --new-password-file or --new-key-file");
            };
            let id = s.repo.add_key(&secret, kind, &a.label, KdfParams::default())?;
            if out.json {
                out.json(&json!({"id": id}))?;
            } else {
                out.info(format!("added key slot {}", id.short()));
            }
        }
        KeyCmd::Remove { id } => {
            let slots = s.repo.key_slots()?;
            let matches: Vec<_> =
                slots.iter().filter(|(sid, _)| sid.to_hex().starts_with(&id.to_ascii_lowercase())).collect();
            let target = match matches.as_slice() {
                [one] => one.0,
                [] => bail!("no key slot {id}"),
                _ => bail!("key slot prefix {id} is ambiguous"),
            };
            s.repo.remove_key(&target)?;
            if out.json {
                out.json(&json!({"removed": target}))?;
            } else {
                out.info(format!("removed key slot {}", target.short()));
            }
        }
    }
    Ok(exit::OK)
}

fn write_private(path: &PathBuf, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}
