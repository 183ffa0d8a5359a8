//! Cron schedules with time zones (croner + chrono-tz): `0 3 * * *` in `Europe/Berlin` fires at
//! 03:00 Berlin time, across DST changes.

use std::str::FromStr;

use chrono::TimeZone;
use croner::Cron;

/// Parse a cron expression (5 fields, or 6 with leading seconds) and a time zone; the error
/// says what is wrong in words an operator can act on.
pub fn validate(cron: &str, timezone: &str) -> Result<(), String> {
    parse(cron)?;
    tz(timezone)?;
    Ok(())
}

fn parse(cron: &str) -> Result<Cron, String> {
    Cron::new(cron).with_seconds_optional().parse().map_err(|e| format!("invalid cron expression {cron:?}: {e}"))
}

fn tz(timezone: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(timezone)
        .map_err(|_| format!("unknown time zone {timezone:?} (use an IANA name such as UTC or Europe/Berlin)"))
}

/// The first time strictly after `after_ms` (Unix ms) at which the schedule fires.
pub fn next_after(cron: &str, timezone: &str, after_ms: i64) -> Result<i64, String> {
    let c = parse(cron)?;
    let zone = tz(timezone)?;
    let after = zone.timestamp_millis_opt(after_ms).single().ok_or("time out of range")?;
    c.find_next_occurrence(&after, false)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("schedule {cron:?} never fires: {e}"))
}

/// The next `n` due times after `from` (fewer when the expression stops firing, none when it
/// does not parse): what the schedule editor previews.
pub fn upcoming(cron: &str, timezone: &str, from: i64, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut t = from;
    while out.len() < n {
        match next_after(cron, timezone, t) {
            Ok(next) if next > t => {
                out.push(next);
                t = next;
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upcoming_lists_consecutive_due_times() {
        let from = ms("2026-11-30T10:00:00Z");
        let next = upcoming("0 3 * * *", "UTC", from, 3);
        assert_eq!(next, vec![ms("2026-12-01T03:00:00Z"), ms("2026-12-02T03:00:00Z"), ms("2026-12-03T03:00:00Z")]);
        assert!(upcoming("not cron", "UTC", from, 3).is_empty());
    }

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).unwrap_or_default()
    }

    #[test]
    fn next_runs_follow_the_time_zone() {
        // 03:00 in Berlin is 01:00 UTC in summer and 02:00 UTC in winter.
        assert_eq!(
            next_after("0 3 * * *", "Europe/Berlin", ms("2026-07-01T00:00:00Z")),
            Ok(ms("2026-07-01T01:00:00Z"))
        );
        assert_eq!(
            next_after("0 3 * * *", "Europe/Berlin", ms("2026-12-01T00:00:00Z")),
            Ok(ms("2026-12-01T02:00:00Z"))
        );
        assert_eq!(next_after("*/15 * * * *", "UTC", ms("2026-01-01T00:00:00Z")), Ok(ms("2026-01-01T00:15:00Z")));
        assert_eq!(next_after("30 * * * * *", "UTC", ms("2026-01-01T00:00:00Z")), Ok(ms("2026-01-01T00:00:30Z")));
        // Sunday 02:00 monthly-style rule: first Sunday is dom 1-7.
        assert!(
            next_after("0 2 1 * *", "UTC", ms("2026-01-15T00:00:00Z")).is_ok_and(|t| t == ms("2026-02-01T02:00:00Z"))
        );
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(validate("61 * * * *", "UTC").unwrap_err().contains("invalid cron"));
        assert!(validate("* * *", "UTC").is_err());
        assert!(validate("0 3 * * *", "Mars/Olympus").unwrap_err().contains("time zone"));
        assert!(validate("0 3 * * *", "UTC").is_ok());
    }
}
