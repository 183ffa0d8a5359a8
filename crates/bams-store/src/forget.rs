//! Retention policies (`forget --keep-*`): which snapshots to keep.
//!
//! Snapshots are grouped by host and path set; within a group, newest first, each rule keeps
//! the newest snapshot of each of its last N buckets (hour, day, ISO week, month, year).
//! `keep_within` keeps everything newer than a duration before the newest snapshot. A snapshot
//! kept by any rule is kept; a policy with no rule keeps everything (refusing to delete all).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Local, Timelike};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::snapshot::SnapshotEntry;

/// Keep rules; `None` = rule off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Newest N.
    pub last: Option<usize>,
    /// Newest per hour, N hours with snapshots.
    pub hourly: Option<usize>,
    /// Per day.
    pub daily: Option<usize>,
    /// Per ISO week.
    pub weekly: Option<usize>,
    /// Per month.
    pub monthly: Option<usize>,
    /// Per year.
    pub yearly: Option<usize>,
    /// Everything within this long of the newest snapshot.
    pub within: Option<chrono::Duration>,
    /// Snapshots with any of these tags are always kept.
    pub keep_tags: Vec<String>,
}

impl KeepPolicy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within.is_none()
            && self.keep_tags.is_empty()
    }
}

/// A retention policy as operators write it (CLI flags, job definitions in the API):
/// `{"keep_last": 7, "keep_daily": 14, "keep_within": "30d"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    /// Per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<usize>,
    /// Per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<usize>,
    /// Per ISO week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<usize>,
    /// Per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<usize>,
    /// Per year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<usize>,
    /// Everything within this duration of the newest snapshot (`7d`, `12h`, `2w`, `1y6m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
    /// Snapshots with these tags are always kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
}

impl Retention {
    /// The policy these rules describe (zero counts switch a rule off).
    pub fn to_policy(&self) -> Result<KeepPolicy> {
        let nz = |v: Option<usize>| v.filter(|n| *n > 0);
        Ok(KeepPolicy {
            last: nz(self.keep_last),
            hourly: nz(self.keep_hourly),
            daily: nz(self.keep_daily),
            weekly: nz(self.keep_weekly),
            monthly: nz(self.keep_monthly),
            yearly: nz(self.keep_yearly),
            within: self.keep_within.as_deref().map(parse_duration).transpose()?,
            keep_tags: self.keep_tags.clone(),
        })
    }
}

/// Parse `7d`, `12h`, `2w`, `1y6m` (m = 30 days, y = 365 days).
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut num = String::new();
    let bad = || Error::invalid(format!("bad duration {s:?}: use e.g. 7d, 12h, 2w, 1y6m"));
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += match c {
            'h' => chrono::Duration::hours(n),
            'd' => chrono::Duration::days(n),
            'w' => chrono::Duration::weeks(n),
            'm' => chrono::Duration::days(30 * n),
            'y' => chrono::Duration::days(365 * n),
            _ => return Err(Error::invalid(format!("bad duration unit {c:?} in {s:?} (use h, d, w, m, y)"))),
        };
    }
    if !num.is_empty() || total.is_zero() {
        return Err(bad());
    }
    Ok(total)
}

/// Which snapshots a forget considers and removes.
#[derive(Debug, Clone, Default)]
pub struct ForgetRequest {
    /// Rules applied to the considered snapshots.
    pub policy: KeepPolicy,
    /// Only snapshots of this host.
    pub host: Option<String>,
    /// Only snapshots with this tag.
    pub tag: Option<String>,
    /// Only snapshots made by this job.
    pub job: Option<String>,
    /// Snapshots removed explicitly (ids or prefixes).
    pub snapshots: Vec<String>,
    /// Decide but delete nothing.
    pub dry_run: bool,
}

/// What a forget decided and removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    /// Snapshots removed (or that would be, on a dry run).
    pub removed: Vec<Id>,
    /// Per considered snapshot: keep or remove, and why.
    pub decisions: Vec<Decision>,
}

/// Remove snapshots by policy and/or id under the exclusive lock (data stays until prune).
pub fn forget(repo: &Repository, req: &ForgetRequest) -> Result<ForgetReport> {
    if req.policy.is_empty() && req.snapshots.is_empty() {
        return Err(Error::invalid("nothing to forget: give snapshot ids or at least one keep rule"));
    }
    let _lock = crate::lock::acquire(repo, true, "forget", std::time::Duration::from_secs(300))?;
    let (all, _) = repo.snapshots()?;
    let mut report = ForgetReport::default();
    for spec in &req.snapshots {
        report.removed.push(crate::repo::resolve_snapshot(&all, spec)?.id);
    }
    if !req.policy.is_empty() {
        let considered: Vec<SnapshotEntry> = all
            .iter()
            .filter(|e| req.host.as_ref().is_none_or(|h| &e.snapshot.host == h))
            .filter(|e| req.tag.as_ref().is_none_or(|t| e.snapshot.tags.contains(t)))
            .filter(|e| req.job.is_none() || e.snapshot.job == req.job)
            .cloned()
            .collect();
        report.decisions = apply_policy(&considered, &req.policy);
        for (d, e) in report.decisions.iter().zip(&considered) {
            if !d.keep {
                report.removed.push(e.id);
            }
        }
    }
    report.removed.sort();
    report.removed.dedup();
    if !req.dry_run {
        for id in &report.removed {
            repo.delete_snapshot(id)?;
        }
    }
    Ok(report)
}

/// Decision for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: String,
    /// Keep or remove.
    pub keep: bool,
    /// Rules that kept it.
    pub reasons: Vec<String>,
}

type BucketFn = fn(&DateTime<Local>) -> i64;

fn hour(t: &DateTime<Local>) -> i64 {
    i64::from(t.year()) * 1_000_000 + i64::from(t.ordinal()) * 100 + i64::from(t.hour())
}
fn day(t: &DateTime<Local>) -> i64 {
    i64::from(t.year()) * 1000 + i64::from(t.ordinal())
}
fn week(t: &DateTime<Local>) -> i64 {
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month(t: &DateTime<Local>) -> i64 {
    i64::from(t.year()) * 100 + i64::from(t.month())
}
fn year(t: &DateTime<Local>) -> i64 {
    i64::from(t.year())
}

/// Apply `policy` to snapshots; returns decisions in input order (all kept when empty policy).
pub fn apply_policy(snapshots: &[SnapshotEntry], policy: &KeepPolicy) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = snapshots
        .iter()
        .map(|s| Decision { id: s.id.to_hex(), keep: policy.is_empty(), reasons: Vec::new() })
        .collect();
    if policy.is_empty() {
        return decisions;
    }
    let mut groups: BTreeMap<(String, Vec<String>), Vec<usize>> = BTreeMap::new();
    for (i, s) in snapshots.iter().enumerate() {
        let mut paths = s.snapshot.paths.clone();
        paths.sort();
        groups.entry((s.snapshot.host.clone(), paths)).or_default().push(i);
    }
    let rules: [(&str, Option<usize>, BucketFn); 5] = [
        ("hourly", policy.hourly, hour),
        ("daily", policy.daily, day),
        ("weekly", policy.weekly, week),
        ("monthly", policy.monthly, month),
        ("yearly", policy.yearly, year),
    ];
    for members in groups.values_mut() {
        members.sort_by(|a, b| snapshots[*b].snapshot.time.cmp(&snapshots[*a].snapshot.time));
        let newest = snapshots[members[0]].snapshot.time;
        for (rank, &i) in members.iter().enumerate() {
            let s = &snapshots[i].snapshot;
            if policy.last.is_some_and(|n| rank < n) {
                decisions[i].reasons.push("last".into());
            }
            if policy.within.is_some_and(|d| newest.signed_duration_since(s.time) <= d) {
                decisions[i].reasons.push("within".into());
            }
            if s.tags.iter().any(|t| policy.keep_tags.contains(t)) {
                decisions[i].reasons.push("tag".into());
            }
        }
        for (name, n, bucket) in rules {
            let Some(n) = n else { continue };
            let mut last_bucket = None;
            let mut kept = 0;
            for &i in members.iter() {
                if kept >= n {
                    break;
                }
                let b = bucket(&snapshots[i].snapshot.time);
                if last_bucket != Some(b) {
                    last_bucket = Some(b);
                    kept += 1;
                    decisions[i].reasons.push(name.into());
                }
            }
        }
    }
    for d in &mut decisions {
        d.keep = !d.reasons.is_empty();
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::snapshot::{Snapshot, Summary};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn snap(ts: i64, host: &str) -> SnapshotEntry {
        SnapshotEntry {
            id: Id::random(),
            snapshot: Snapshot {
                time: Local.timestamp_opt(ts, 0).unwrap(),
                host: host.into(),
                username: String::new(),
                paths: vec!["/x".into()],
                tags: vec![],
                parent: None,
                tree: Id::default(),
                partial: false,
                job: None,
                origin: None,
                program: String::new(),
                summary: Summary::default(),
            },
        }
    }

    #[test]
    fn daily_keeps_newest_per_day() {
        let base = 1_700_000_000;
        let snaps: Vec<_> = (0..10).map(|i| snap(base + i * 6 * 3600, "h")).collect();
        let d = apply_policy(&snaps, &KeepPolicy { daily: Some(2), ..Default::default() });
        let kept: Vec<usize> = d.iter().enumerate().filter(|(_, d)| d.keep).map(|(i, _)| i).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&9), "newest is kept");
    }

    proptest! {
        #[test]
        fn policy_invariants(times in proptest::collection::vec(0i64..100_000_000, 1..40), last in 0usize..5, daily in 0usize..5, weekly in 0usize..3) {
            let snaps: Vec<_> = times.iter().map(|t| snap(1_600_000_000 + t, if t % 2 == 0 { "a" } else { "b" })).collect();
            let policy = KeepPolicy { last: Some(last), daily: Some(daily), weekly: Some(weekly), ..Default::default() };
            let d = apply_policy(&snaps, &policy);
            // Never keeps more than the rules allow per group, and keep-last keeps the newest.
            for host in ["a", "b"] {
                let idx: Vec<usize> = (0..snaps.len()).filter(|&i| snaps[i].snapshot.host == host).collect();
                let kept = idx.iter().filter(|&&i| d[i].keep).count();
                prop_assert!(kept <= last + daily + weekly);
                if last > 0 && !idx.is_empty() {
                    let newest = idx.iter().max_by_key(|&&i| snaps[i].snapshot.time).unwrap();
                    prop_assert!(d[*newest].keep);
                }
            }
            // The empty policy keeps everything.
            prop_assert!(apply_policy(&snaps, &KeepPolicy::default()).iter().all(|d| d.keep));
        }
    }
}
