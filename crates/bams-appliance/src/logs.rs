//! Service logs (docs/design.md §5 `/api/v1/logs/{service}`): only services named in an
//! allow-list can be read, each from journald (`journalctl -u UNIT -o json`, through the
//! command runner) and/or a log file. Filters: the last `lines`, `since` a time, and a
//! case-insensitive `grep`. Following a log for the WebSocket stream uses the same sources.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// Journal entries a grep scans at most (streamed: only matches are kept).
pub const GREP_SCAN: usize = 200_000;

/// Largest `lines` a request may ask for.
pub const MAX_LINES: usize = 10_000;
/// Bytes read from the end of a log file at most.
const FILE_TAIL_BYTES: u64 = 8 << 20;

/// Where one service logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSource {
    /// systemd unit whose journal entries belong to it.
    #[serde(default)]
    pub unit: Option<String>,
    /// A log file it writes.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Which services' logs may be read (config key `logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Allow-list: service name → sources.
    pub services: BTreeMap<String, LogSource>,
    /// Read journal files from this directory instead of the system journal.
    pub journal_directory: Option<PathBuf>,
    /// WebSocket followers at once, over all services.
    pub max_stream_clients: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let unit = |u: &str, file: Option<&str>| LogSource { unit: Some(u.into()), file: file.map(PathBuf::from) };
        let services = [
            ("bams", unit("bams.service", None)),
            ("bams-agent", unit("bams-agent.service", None)),
            ("bacula-sd", unit("bacula-sd.service", Some("/var/log/bacula/bacula.log"))),
            ("tgt", unit("tgt.service", None)),
            ("scst", unit("scst.service", None)),
            ("target", unit("target.service", None)),
            ("postgresql", unit("postgresql.service", None)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self { services, journal_directory: None, max_stream_clients: 8 }
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// When it was written (RFC 3339), when known.
    pub time: Option<String>,
    /// syslog priority (0 emerg … 7 debug), journald only.
    pub priority: Option<u8>,
    /// `journal` or `file`.
    pub source: String,
    /// The text.
    pub message: String,
    #[serde(skip)]
    micros: Option<i64>,
}

/// Filters of a read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Last this many entries (capped at [`MAX_LINES`]).
    pub lines: usize,
    /// Only entries at or after this time (µs since the epoch).
    pub since_micros: Option<i64>,
    /// Only entries containing this text (case-insensitive).
    pub grep: Option<String>,
}

/// Parse `since`: RFC 3339, or a duration back from now (`90s`, `15m`, `2h`, `7d`).
pub fn parse_since(s: &str, now_micros: i64) -> Result<i64, ApplianceError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    let bad = || ApplianceError::Invalid(format!("since {s:?} must be RFC 3339 or a duration like 15m, 2h, 7d"));
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(now_micros - secs.saturating_mul(1_000_000))
}

/// The service's sources, or a not-found error naming the allowed ones.
pub fn source<'a>(cfg: &'a LogsConfig, service: &str) -> Result<&'a LogSource, ApplianceError> {
    cfg.services.get(service).ok_or_else(|| {
        ApplianceError::NotFound(format!(
            "log service {service:?} (known: {})",
            cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

/// The journalctl vector for `unit` (`follow` = stream new entries).
pub fn journal_cmd(cfg: &LogsConfig, unit: &str, lines: usize, since_micros: Option<i64>, follow: bool) -> Cmd {
    let mut args: Vec<String> = Vec::new();
    if let Some(d) = &cfg.journal_directory {
        args.extend(["--directory".into(), d.display().to_string()]);
    }
    args.extend(["--unit".into(), unit.into(), "--output".into(), "json".into(), "--no-pager".into()]);
    args.extend(["--lines".into(), lines.to_string()]);
    if let Some(t) = since_micros {
        args.extend(["--since".into(), format!("@{}", t.div_euclid(1_000_000))]);
    }
    if follow {
        args.push("--follow".into());
    }
    Cmd::new("journalctl", args)
}

fn message_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        // journald hands non-UTF-8 messages over as byte arrays.
        serde_json::Value::Array(bytes) => {
            String::from_utf8_lossy(&bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect::<Vec<_>>())
                .into_owned()
        }
        _ => String::new(),
    }
}

fn rfc3339(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Parse one line of `journalctl -o json`.
pub fn parse_journal_line(line: &str) -> Option<LogEntry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let micros = v["__REALTIME_TIMESTAMP"].as_str().and_then(|t| t.parse().ok());
    Some(LogEntry {
        time: micros.and_then(rfc3339),
        priority: v["PRIORITY"].as_str().and_then(|p| p.parse().ok()),
        source: "journal".into(),
        message: message_of(&v["MESSAGE"]),
        micros,
    })
}

/// Parse one line of a log file; a leading RFC 3339 or `YYYY-MM-DD HH:MM:SS` time is read.
pub fn parse_file_line(line: &str) -> LogEntry {
    let micros = line
        .split_whitespace()
        .next()
        .and_then(|w| chrono::DateTime::parse_from_rfc3339(w.trim_end_matches(':')).ok())
        .map(|t| t.timestamp_micros())
        .or_else(|| {
            let head = line.get(..19)?;
            chrono::NaiveDateTime::parse_from_str(head, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc().timestamp_micros())
        });
    LogEntry {
        time: micros.and_then(rfc3339),
        priority: None,
        source: "file".into(),
        message: line.to_string(),
        micros,
    }
}

impl LogQuery {
    /// Whether `e` passes `since` and `grep`.
    pub fn accepts(&self, e: &LogEntry) -> bool {
        let after = match (self.since_micros, e.micros) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        };
        after && self.grep.as_ref().is_none_or(|g| e.message.to_lowercase().contains(&g.to_lowercase()))
    }
}

/// The tail of a log file as lines (at most the last 8 MiB are read).
pub fn file_tail(path: &Path) -> Result<Vec<String>, ApplianceError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ApplianceError::Io { what: format!("reading {}", path.display()), source: e }),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(FILE_TAIL_BYTES);
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_to_end(&mut buf))
        .map_err(crate::error::io(format!("reading {}", path.display())))?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    Ok(lines)
}

/// Read a service's log with `q`'s filters, oldest first.
pub async fn read(
    runner: &dyn CommandRunner,
    cfg: &LogsConfig,
    service: &str,
    q: &LogQuery,
) -> Result<Vec<LogEntry>, ApplianceError> {
    let src = source(cfg, service)?;
    let lines = q.lines.clamp(1, MAX_LINES);
    let mut out = Vec::new();
    if let Some(unit) = &src.unit {
        // journalctl cannot grep everywhere (it needs PCRE2): with a grep, read up to
        // GREP_SCAN entries as a stream and keep only the last `lines` that match, so memory
        // stays bounded by the answer, not by what was scanned.
        let result = if q.grep.is_some() {
            match runner.lines(&journal_cmd(cfg, unit, GREP_SCAN, q.since_micros, false)).await {
                Ok(mut rx) => {
                    let mut kept = std::collections::VecDeque::with_capacity(lines.min(1024));
                    while let Some(line) = rx.recv().await {
                        if let Some(e) = parse_journal_line(&line).filter(|e| q.accepts(e)) {
                            if kept.len() == lines {
                                kept.pop_front();
                            }
                            kept.push_back(e);
                        }
                    }
                    Ok(kept.into_iter().collect::<Vec<_>>())
                }
                Err(e) => Err(e),
            }
        } else {
            runner
                .run(&journal_cmd(cfg, unit, lines, q.since_micros, false))
                .await
                .map(|o| o.stdout.lines().filter_map(parse_journal_line).collect())
        };
        match result {
            Ok(entries) => out.extend(entries),
            // No journal on this machine (containers): the file, if any, still answers.
            Err(crate::runner::RunError::NotInstalled { .. }) if src.file.is_some() => {}
            Err(e) if src.file.is_none() => return Err(e.into()),
            Err(e) => tracing::debug!(error = %e, service, "journal unavailable; reading the file"),
        }
    }
    if let Some(file) = &src.file {
        let file = file.clone();
        let lines = tokio::task::spawn_blocking(move || file_tail(&file))
            .await
            .map_err(|e| ApplianceError::Io { what: "log reader".into(), source: std::io::Error::other(e) })??;
        out.extend(lines.iter().map(|l| parse_file_line(l)));
    }
    out.retain(|e| q.accepts(e));
    // Entries without a time keep their place after the timed one before them.
    let mut last = i64::MIN;
    let mut keyed: Vec<(i64, usize, LogEntry)> = out
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            last = e.micros.unwrap_or(last);
            (last, i, e)
        })
        .collect();
    keyed.sort_by_key(|(t, i, _)| (*t, *i));
    let skip = keyed.len().saturating_sub(lines);
    Ok(keyed.into_iter().skip(skip).map(|(_, _, e)| e).collect())
}

/// Follow a service's log: new entries (passing `grep`) go to `tx` until it is closed. The
/// channel is bounded, so a slow consumer slows the reader instead of growing a buffer.
pub async fn follow(
    runner: std::sync::Arc<dyn CommandRunner>,
    cfg: &LogsConfig,
    service: &str,
    grep: Option<String>,
    tx: tokio::sync::mpsc::Sender<LogEntry>,
) -> Result<(), ApplianceError> {
    let src = source(cfg, service)?.clone();
    let q = LogQuery { lines: 1, since_micros: None, grep };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(unit) = &src.unit {
        let cmd = journal_cmd(cfg, unit, 0, None, true);
        match runner.lines(&cmd).await {
            Ok(mut rx) => {
                let (tx, q) = (tx.clone(), q.clone());
                tasks.spawn(async move {
                    while let Some(line) = rx.recv().await {
                        if let Some(e) = parse_journal_line(&line).filter(|e| q.accepts(e)) {
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            Err(e) if src.file.is_none() => return Err(e.into()),
            Err(e) => tracing::debug!(error = %e, service, "journal unavailable; following the file"),
        }
    }
    if let Some(file) = src.file.clone() {
        let tx = tx.clone();
        tasks.spawn(async move { follow_file(&file, &q, &tx).await });
    }
    drop(tx);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// `tail -F` for one file: from its current end, read what is appended every 250 ms; a file
/// that shrank (rotated, truncated) is read again from its start.
async fn follow_file(path: &Path, q: &LogQuery, tx: &tokio::sync::mpsc::Sender<LogEntry>) {
    let mut offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    while !tx.is_closed() {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
            partial.clear();
        }
        if len == offset {
            continue;
        }
        let chunk = {
            let Ok(mut f) = std::fs::File::open(path) else { continue };
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(offset)).is_err() || f.by_ref().take(len - offset).read_to_end(&mut buf).is_err()
            {
                continue;
            }
            buf
        };
        offset += chunk.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = partial.find('\n') {
            let line: String = partial.drain(..=nl).collect();
            let e = parse_file_line(line.trim_end_matches(['\n', '\r']));
            if q.accepts(&e) && tx.send(e).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_and_file_lines_parse_and_filter() {
        let line = r#"{"__CURSOR":"s=0b66;i=1","__REALTIME_TIMESTAMP":"1763900000000000","_PID":"42","PRIORITY":"3","SYSLOG_IDENTIFIER":"bacula-sd","MESSAGE":"bams-sd: Error: label failed"}"#;
        let e = parse_journal_line(line).expect("entry");
        assert_eq!((e.priority, e.message.as_str()), (Some(3), "bams-sd: Error: label failed"));
        assert_eq!(e.time.as_deref(), Some("2025-11-23T12:13:20.000000Z"));
        let bytes = r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":[104,105,255]}"#;
        assert_eq!(parse_journal_line(bytes).expect("bytes").message, "hi\u{fffd}");
        assert!(parse_journal_line("No journal files were found.").is_none());
        let f = parse_file_line("2026-11-23 10:00:00 bams-sd JobId 3: Error: no volume");
        assert!(f.time.is_some());
        assert!(parse_file_line("23-Nov 10:00 bams-sd: plain").time.is_none());
        let q = LogQuery { lines: 10, since_micros: Some(1_763_900_000_000_000), grep: Some("ERROR".into()) };
        assert!(q.accepts(&e));
        assert!(!q.accepts(&parse_journal_line(&line.replace("Error", "ok")).expect("ok")));
        assert_eq!(parse_since("2h", 10_000_000_000).expect("2h"), 10_000_000_000 - 7_200_000_000);
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("5w", 0).is_err());
    }

    #[tokio::test]
    async fn following_the_journal_uses_the_exact_vector_and_filters() {
        use crate::runner::{CmdOutput, ScriptedRunner};
        let cfg = LogsConfig::default();
        let journal = concat!(
            r#"{"__REALTIME_TIMESTAMP":"1763900000000000","MESSAGE":"tgtd: keep this"}"#,
            "\n",
            r#"{"__REALTIME_TIMESTAMP":"1763900001000000","MESSAGE":"tgtd: not that"}"#,
            "\n"
        );
        let runner = std::sync::Arc::new(ScriptedRunner::default().expect(
            ["journalctl", "--unit", "tgt.service", "--output", "json", "--no-pager", "--lines", "0", "--follow"],
            CmdOutput::ok(journal),
        ));
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        follow(runner.clone(), &cfg, "tgt", Some("KEEP".into()), tx).await.expect("follow");
        assert_eq!(rx.recv().await.map(|e| e.message), Some("tgtd: keep this".to_string()));
        assert!(rx.recv().await.is_none());
        assert!(runner.finished());
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        assert!(matches!(follow(runner, &cfg, "sshd", None, tx).await, Err(ApplianceError::NotFound(_))));
    }
}
