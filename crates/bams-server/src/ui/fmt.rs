//! How the UI writes numbers and times: sizes in binary units, durations in words, instants as
//! `<time>` elements whose text the browser turns into local time.

/// A byte count for people (`1.5 GiB`).
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", n.max(0))
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration for people (`3 min 20 s`, `2 h 5 min`, `4 d 3 h`).
pub fn duration_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 if ms < 10_000 => format!("{:.1} s", ms.max(0) as f64 / 1000.0),
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An instant: machine-readable for `<time datetime>`, and readable text (UTC) that the
/// page's script replaces with the browser's local time.
#[derive(Debug, Clone, Default)]
pub struct When {
    /// RFC 3339, empty when there is no instant.
    pub iso: String,
    /// `2026-11-30 14:05 UTC`.
    pub text: String,
    /// `5 min ago`, `in 2 h 3 min`.
    pub relative: String,
}

impl When {
    /// The instant `ms` (milliseconds since the epoch) as seen at `now`.
    pub fn at(ms: i64, now: i64) -> Self {
        let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else { return Self::default() };
        let relative =
            if ms <= now { format!("{} ago", duration_ms(now - ms)) } else { format!("in {}", duration_ms(ms - now)) };
        Self {
            iso: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            text: t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            relative,
        }
    }

    /// An optional instant (`None` renders as nothing).
    pub fn maybe(ms: Option<i64>, now: i64) -> Self {
        ms.map(|m| Self::at(m, now)).unwrap_or_default()
    }

    /// Whether there is an instant to show.
    pub fn is_set(&self) -> bool {
        !self.iso.is_empty()
    }
}

/// A percentage rounded down to the meter classes the stylesheet has (`w0` … `w100`): the
/// CSP allows no inline `style=` for a width.
pub fn meter_class(part: i64, whole: i64) -> &'static str {
    const CLASSES: [&str; 11] = ["w0", "w10", "w20", "w30", "w40", "w50", "w60", "w70", "w80", "w90", "w100"];
    if whole <= 0 {
        return "w0";
    }
    let tenth = ((part.max(0) as f64 / whole as f64) * 10.0).round() as usize;
    CLASSES[tenth.min(10)]
}

/// Rate since the start, and the time left if this run moves as much data as the job's last
/// successful one did.
pub fn rate_and_eta(run: &bams_catalog::Run, expected: Option<i64>, now: i64) -> (String, String) {
    let Some(started) = run.started_at else { return (String::new(), String::new()) };
    let secs = ((now - started) as f64 / 1000.0).max(0.001);
    let rate = run.bytes as f64 / secs;
    let rate_text = if run.bytes > 0 { format!("{}/s", bytes(rate as i64)) } else { String::new() };
    let eta = match expected {
        Some(total) if rate > 0.0 && total > run.bytes => {
            duration_ms((((total - run.bytes) as f64 / rate) * 1000.0) as i64)
        }
        _ => String::new(),
    };
    (rate_text, eta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(duration_ms(2500), "2.5 s");
        assert_eq!(duration_ms(200_000), "3 min 20 s");
        assert_eq!(duration_ms(7_500_000), "2 h 5 min");
        assert_eq!(When::at(0, 60_000).relative, "1 min 0 s ago");
        assert_eq!(When::at(0, 0).iso, "1970-01-01T00:00:00Z");
        assert_eq!(meter_class(1, 3), "w30");
        assert_eq!(meter_class(5, 0), "w0");
        assert_eq!(meter_class(9, 3), "w100");
    }

    #[test]
    fn rate_and_time_left_follow_the_last_successful_run() {
        let start = 1_764_496_800_000;
        let run = bams_catalog::Run {
            id: 1,
            job_id: Some(1),
            kind: bams_catalog::JobKind::Backup,
            level: None,
            status: bams_catalog::RunStatus::Running,
            triggered_by: "manual".into(),
            server_id: None,
            agent_id: None,
            queued_at: start,
            scheduled_for: None,
            started_at: Some(start),
            finished_at: None,
            files: 10,
            bytes: 104_857_600,
            new_bytes: 0,
            errors: 0,
            snapshot_id: None,
            message: None,
            cancel_requested: false,
        };
        let (rate, eta) = rate_and_eta(&run, Some(209_715_200), start + 10_000);
        assert_eq!((rate.as_str(), eta.as_str()), ("10.0 MiB/s", "10 s"));
        assert_eq!(rate_and_eta(&run, None, start + 10_000).1, "", "no estimate without a previous run");
    }
}
