//! The media database: media pools with their retention and recycling policy, the volumes
//! labeled into them and the tape sets written on them — what Bacula keeps in its Pool, Media
//! and Job tables, for the tape tier.
//!
//! It is one locked JSON file (`media.json`, [`JsonState`]) in the library's directory, so
//! the server and `bams tape` share it and it travels with the library. It is a cache of what
//! the tapes say, never the only copy: every volume carries its label and every set its
//! catalog, a restore works without it, and before a volume is appended to or recycled its
//! label is read back and must match the database (a mismatch marks the volume `error` and
//! the volume is left alone).
//!
//! Retention is computed when asked, from each set's write time and its pool's current
//! `retention_days`, so changing a pool's policy applies to the sets already written (as an
//! operator expects after "update the pool"). A volume is recyclable when its pool allows
//! recycling and every set with a part on it has expired; recycling relabels it (a new
//! volume id) and forgets those sets.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::volume::{validate_pool, Label};
use crate::files::JsonState;
use crate::ApplianceError;

/// How a pool keeps and reuses its volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolPolicy {
    /// Days a set is kept after it was written; `null` keeps sets forever, `0` lets them
    /// expire at once (a scratch-like pool).
    pub retention_days: Option<u32>,
    /// Most volumes the pool may hold; blank cartridges are not taken beyond it (recycling
    /// still is). `null`: no limit.
    pub max_volumes: Option<u32>,
    /// Whether volumes whose sets all expired are relabeled and reused.
    pub recycle: bool,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self { retention_days: None, max_volumes: None, recycle: true }
    }
}

/// Where a volume stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeStatus {
    /// New sets may be appended.
    Append,
    /// It reached end of medium; only recycling writes to it again.
    Full,
    /// Set by an operator: kept as it is, never appended to or recycled.
    Archive,
    /// Its label did not match the database, or it holds foreign data: left alone until an
    /// operator relabels it.
    Error,
}

/// A labeled volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    /// The cartridge's barcode.
    pub barcode: String,
    /// The label's volume id (changes on relabel).
    pub volume_id: String,
    /// Media pool.
    pub pool: String,
    /// Where it stands.
    pub status: VolumeStatus,
    /// When it was labeled.
    pub labeled_at: DateTime<Utc>,
    /// When a set part was last written to it.
    pub last_written: Option<DateTime<Utc>>,
    /// Bytes of set data written since it was labeled.
    pub bytes: u64,
    /// Times it was recycled.
    pub recycled: u32,
    /// Why it is in `error`, or how it came into the database.
    pub note: Option<String>,
}

/// A tape set as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TapeSet {
    /// The set id (`bams tape restore --set`).
    pub set_id: String,
    /// Media pool.
    pub pool: String,
    /// Snapshot ids it holds.
    pub snapshots: Vec<String>,
    /// Volumes in part order.
    pub volumes: Vec<String>,
    /// Bytes of repository objects (once complete).
    pub bytes: u64,
    /// Repository objects (once complete).
    pub objects: u64,
    /// When writing started.
    pub written_at: DateTime<Utc>,
    /// Whether its catalog was written (false: the write failed or is running).
    pub complete: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MediaState {
    pools: BTreeMap<String, PoolPolicy>,
    volumes: BTreeMap<String, Volume>,
    sets: BTreeMap<String, TapeSet>,
}

/// A pool with its policy and what it holds (API and CLI view).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    /// Pool name.
    pub name: String,
    /// Its policy.
    #[serde(flatten)]
    pub policy: PoolPolicy,
    /// Volumes labeled into it.
    pub volumes: u32,
    /// Of those, recyclable now.
    pub recyclable_volumes: u32,
    /// Sets in it.
    pub sets: u32,
    /// Bytes of set data on its volumes.
    pub bytes: u64,
}

/// A volume with what retention says about it now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VolumeView {
    /// The volume.
    #[serde(flatten)]
    pub volume: Volume,
    /// Sets with a part on it.
    pub sets: Vec<String>,
    /// When its last set expires (`null`: no set, or kept forever).
    pub retained_until: Option<DateTime<Utc>>,
    /// Whether the next write that needs a volume may relabel it.
    pub recyclable: bool,
}

/// A set with its expiry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SetView {
    /// The set.
    #[serde(flatten)]
    pub set: TapeSet,
    /// When it expires (`null`: kept forever).
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it has expired.
    pub expired: bool,
}

/// The media database of one library.
#[derive(Debug, Clone)]
pub struct MediaDb {
    state: JsonState,
}

impl MediaState {
    fn expires_at(&self, set: &TapeSet) -> Option<DateTime<Utc>> {
        let days = self.pools.get(&set.pool).and_then(|p| p.retention_days)?;
        Some(set.written_at + Duration::days(i64::from(days)))
    }

    fn sets_on<'a>(&'a self, barcode: &'a str) -> impl Iterator<Item = &'a TapeSet> + 'a {
        self.sets.values().filter(move |s| s.volumes.iter().any(|v| v == barcode))
    }

    fn volume_view(&self, v: &Volume, now: DateTime<Utc>) -> VolumeView {
        let sets: Vec<&TapeSet> = self.sets_on(&v.barcode).collect();
        let expiries: Vec<Option<DateTime<Utc>>> = sets.iter().map(|s| self.expires_at(s)).collect();
        let forever = expiries.iter().any(Option::is_none);
        let retained_until = if forever { None } else { expiries.iter().flatten().max().copied() };
        let policy = self.pools.get(&v.pool).cloned().unwrap_or_default();
        let recyclable = policy.recycle
            && matches!(v.status, VolumeStatus::Append | VolumeStatus::Full)
            && !sets.is_empty()
            && !forever
            && retained_until.is_some_and(|t| t <= now);
        VolumeView {
            volume: v.clone(),
            sets: sets.iter().map(|s| s.set_id.clone()).collect(),
            retained_until,
            recyclable,
        }
    }

    fn set_view(&self, s: &TapeSet, now: DateTime<Utc>) -> SetView {
        let expires_at = self.expires_at(s);
        SetView { set: s.clone(), expires_at, expired: expires_at.is_some_and(|t| t <= now) }
    }
}

fn validate_policy(p: &PoolPolicy) -> Result<(), ApplianceError> {
    if p.retention_days.is_some_and(|d| d > 36_500) {
        return Err(ApplianceError::Invalid("retention_days must be at most 36500 (100 years)".into()));
    }
    if p.max_volumes == Some(0) {
        return Err(ApplianceError::Invalid("max_volumes must be at least 1 (or null for no limit)".into()));
    }
    Ok(())
}

impl MediaDb {
    /// The media database kept in `dir` (the library's directory).
    pub fn open(dir: &Path) -> Result<Self, ApplianceError> {
        std::fs::create_dir_all(dir).map_err(crate::error::io(format!("creating {}", dir.display())))?;
        Ok(Self { state: JsonState::new(dir, "media.json") })
    }

    fn read<R>(&self, f: impl FnOnce(&MediaState) -> R) -> Result<R, ApplianceError> {
        self.state.read(f)
    }

    fn update<R>(&self, f: impl FnOnce(&mut MediaState) -> Result<R, ApplianceError>) -> Result<R, ApplianceError> {
        self.state.update(f)
    }

    /// Create a pool (409 if it exists).
    pub fn create_pool(&self, name: &str, policy: PoolPolicy) -> Result<(), ApplianceError> {
        validate_pool(name).map_err(ApplianceError::Invalid)?;
        validate_policy(&policy)?;
        self.update(|s| {
            if s.pools.contains_key(name) {
                return Err(ApplianceError::Conflict(format!("pool {name} exists")));
            }
            s.pools.insert(name.to_string(), policy);
            Ok(())
        })
    }

    /// Change a pool's policy; it applies to the sets already written.
    pub fn update_pool(&self, name: &str, policy: PoolPolicy) -> Result<(), ApplianceError> {
        validate_policy(&policy)?;
        self.update(|s| {
            let p = s.pools.get_mut(name).ok_or_else(|| ApplianceError::NotFound(format!("pool {name}")))?;
            *p = policy;
            Ok(())
        })
    }

    /// Delete an empty pool (409 while volumes are labeled into it).
    pub fn delete_pool(&self, name: &str) -> Result<(), ApplianceError> {
        self.update(|s| {
            if !s.pools.contains_key(name) {
                return Err(ApplianceError::NotFound(format!("pool {name}")));
            }
            let n = s.volumes.values().filter(|v| v.pool == name).count();
            if n > 0 {
                return Err(ApplianceError::Conflict(format!(
                    "pool {name} holds {n} volume(s); relabel them into another pool first"
                )));
            }
            s.pools.remove(name);
            Ok(())
        })
    }

    /// The policy of `name`, creating the pool with the default policy (keep forever) the first
    /// time a volume is labeled into it or a set written to it.
    pub fn ensure_pool(&self, name: &str) -> Result<PoolPolicy, ApplianceError> {
        validate_pool(name).map_err(ApplianceError::Invalid)?;
        self.update(|s| Ok(s.pools.entry(name.to_string()).or_default().clone()))
    }

    /// Pools with what they hold, as of `now`.
    pub fn pools(&self, now: DateTime<Utc>) -> Result<Vec<PoolView>, ApplianceError> {
        self.read(|s| {
            s.pools
                .iter()
                .map(|(name, policy)| {
                    let vols: Vec<VolumeView> =
                        s.volumes.values().filter(|v| &v.pool == name).map(|v| s.volume_view(v, now)).collect();
                    PoolView {
                        name: name.clone(),
                        policy: policy.clone(),
                        volumes: vols.len() as u32,
                        recyclable_volumes: vols.iter().filter(|v| v.recyclable).count() as u32,
                        sets: s.sets.values().filter(|t| &t.pool == name).count() as u32,
                        bytes: vols.iter().map(|v| v.volume.bytes).sum(),
                    }
                })
                .collect()
        })
    }

    /// One pool.
    pub fn pool(&self, name: &str, now: DateTime<Utc>) -> Result<PoolView, ApplianceError> {
        self.pools(now)?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ApplianceError::NotFound(format!("pool {name}")))
    }

    /// Volumes, as of `now`.
    pub fn volumes(&self, now: DateTime<Utc>) -> Result<Vec<VolumeView>, ApplianceError> {
        self.read(|s| s.volumes.values().map(|v| s.volume_view(v, now)).collect())
    }

    /// One volume.
    pub fn volume(&self, barcode: &str, now: DateTime<Utc>) -> Result<VolumeView, ApplianceError> {
        self.read(|s| s.volumes.get(barcode).map(|v| s.volume_view(v, now)))?
            .ok_or_else(|| ApplianceError::NotFound(format!("volume {barcode}")))
    }

    /// Sets, as of `now`.
    pub fn sets(&self, now: DateTime<Utc>) -> Result<Vec<SetView>, ApplianceError> {
        self.read(|s| {
            let mut v: Vec<SetView> = s.sets.values().map(|t| s.set_view(t, now)).collect();
            v.sort_by_key(|t| t.set.written_at);
            v
        })
    }

    /// One set.
    pub fn set(&self, set_id: &str, now: DateTime<Utc>) -> Result<SetView, ApplianceError> {
        self.read(|s| s.sets.get(set_id).map(|t| s.set_view(t, now)))?
            .ok_or_else(|| ApplianceError::NotFound(format!("tape set {set_id}")))
    }

    /// An operator sets a volume's status: `archive` to keep it out of appends and recycling,
    /// `full` to stop appends, `append` to allow them again (also clears `error` after a
    /// check).
    pub fn set_status(&self, barcode: &str, status: VolumeStatus) -> Result<Volume, ApplianceError> {
        self.update(|s| {
            let v = s.volumes.get_mut(barcode).ok_or_else(|| ApplianceError::NotFound(format!("volume {barcode}")))?;
            v.status = status;
            if status != VolumeStatus::Error {
                v.note = None;
            }
            Ok(v.clone())
        })
    }

    /// A cartridge was labeled (or relabeled): it is a new, empty volume of the label's pool,
    /// and every set that had a part on it is gone from the tapes, so from the database too.
    /// Returns the sets forgotten.
    pub fn labeled(&self, label: &Label, recycled: bool) -> Result<Vec<String>, ApplianceError> {
        self.update(|s| {
            s.pools.entry(label.pool.clone()).or_default();
            let gone: Vec<String> = s.sets_on(&label.barcode).map(|t| t.set_id.clone()).collect();
            for id in &gone {
                s.sets.remove(id);
            }
            let times = s.volumes.get(&label.barcode).map(|v| v.recycled).unwrap_or(0);
            let labeled_at = DateTime::parse_from_rfc3339(&label.labeled_at).map(|t| t.to_utc()).unwrap_or(Utc::now());
            s.volumes.insert(
                label.barcode.clone(),
                Volume {
                    barcode: label.barcode.clone(),
                    volume_id: label.volume_id.clone(),
                    pool: label.pool.clone(),
                    status: VolumeStatus::Append,
                    labeled_at,
                    last_written: None,
                    bytes: 0,
                    recycled: times + u32::from(recycled),
                    note: None,
                },
            );
            Ok(gone)
        })
    }

    /// A BAMS volume found in the library that the database did not know (a lost database, a
    /// cartridge from another library): recorded `full` until `bams tape scan` reads its sets,
    /// so nothing written on it can be overwritten by mistake.
    pub fn adopt(&self, label: &Label) -> Result<(), ApplianceError> {
        self.update(|s| {
            s.pools.entry(label.pool.clone()).or_default();
            let labeled_at = DateTime::parse_from_rfc3339(&label.labeled_at).map(|t| t.to_utc()).unwrap_or(Utc::now());
            s.volumes.entry(label.barcode.clone()).or_insert(Volume {
                barcode: label.barcode.clone(),
                volume_id: label.volume_id.clone(),
                pool: label.pool.clone(),
                status: VolumeStatus::Full,
                labeled_at,
                last_written: None,
                bytes: 0,
                recycled: 0,
                note: Some("found in the library without a database record".into()),
            });
            Ok(())
        })
    }

    /// Record that `barcode` cannot be used, and why.
    pub fn mark_error(&self, barcode: &str, why: &str) -> Result<(), ApplianceError> {
        self.update(|s| {
            if let Some(v) = s.volumes.get_mut(barcode) {
                v.status = VolumeStatus::Error;
                v.note = Some(why.to_string());
            }
            Ok(())
        })
    }

    /// A set is being written.
    pub fn set_started(&self, set: TapeSet) -> Result<(), ApplianceError> {
        self.update(|s| {
            s.pools.entry(set.pool.clone()).or_default();
            s.sets.insert(set.set_id.clone(), set);
            Ok(())
        })
    }

    /// A part of `set_id` was written on `barcode` (`bytes` of objects); `full` when the
    /// volume reached its end.
    pub fn part_written(&self, set_id: &str, barcode: &str, bytes: u64, full: bool) -> Result<(), ApplianceError> {
        self.update(|s| {
            if let Some(t) = s.sets.get_mut(set_id) {
                if !t.volumes.iter().any(|v| v == barcode) {
                    t.volumes.push(barcode.to_string());
                }
            }
            if let Some(v) = s.volumes.get_mut(barcode) {
                v.bytes += bytes;
                v.last_written = Some(Utc::now());
                if full && v.status == VolumeStatus::Append {
                    v.status = VolumeStatus::Full;
                }
            }
            Ok(())
        })
    }

    /// The set's catalog was written: it is complete.
    pub fn set_finished(&self, catalog: &super::set::SetCatalog) -> Result<(), ApplianceError> {
        self.update(|s| {
            if let Some(t) = s.sets.get_mut(&catalog.set_id) {
                t.volumes = catalog.volumes.clone();
                t.bytes = catalog.bytes;
                t.objects = catalog.objects.len() as u64;
                t.complete = true;
            }
            Ok(())
        })
    }

    /// Which volumes a write to `pool` may use, in the order to try them, as of `now`.
    pub fn plan_write(&self, pool: &str, now: DateTime<Utc>) -> Result<WritePlan, ApplianceError> {
        self.read(|s| {
            let policy = s.pools.get(pool).cloned().unwrap_or_default();
            let in_pool: Vec<&Volume> = s.volumes.values().filter(|v| v.pool == pool).collect();
            let mut append: Vec<&Volume> =
                in_pool.iter().copied().filter(|v| v.status == VolumeStatus::Append).collect();
            // Fill the fullest appendable volume first, as Bacula does, to keep few volumes open.
            append.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.barcode.cmp(&b.barcode)));
            let mut recycle: Vec<VolumeView> =
                in_pool.iter().map(|v| s.volume_view(v, now)).filter(|v| v.recyclable).collect();
            // The volume that expired longest ago goes first.
            recycle.sort_by_key(|v| (v.retained_until, v.volume.barcode.clone()));
            WritePlan {
                append: append.iter().map(|v| (v.barcode.clone(), v.volume_id.clone())).collect(),
                may_take_blank: policy.max_volumes.is_none_or(|m| (in_pool.len() as u32) < m),
                recycle: recycle.into_iter().map(|v| (v.volume.barcode, v.volume.volume_id)).collect(),
                known: s.volumes.keys().cloned().collect(),
                retained: in_pool
                    .iter()
                    .filter(|v| v.status != VolumeStatus::Append)
                    .map(|v| s.volume_view(v, now))
                    .filter(|v| !v.recyclable)
                    .count() as u32,
            }
        })
    }
}

/// The volumes a write to a pool may use (from [`MediaDb::plan_write`]).
#[derive(Debug, Clone, Default)]
pub struct WritePlan {
    /// Appendable volumes of the pool (barcode, volume id), fullest first.
    pub append: Vec<(String, String)>,
    /// Whether a blank (or unknown) cartridge may be labeled into the pool.
    pub may_take_blank: bool,
    /// Recyclable volumes of the pool (barcode, volume id), longest expired first.
    pub recycle: Vec<(String, String)>,
    /// Every barcode the database knows (any pool): not blank, not to be labeled.
    pub known: Vec<String>,
    /// Volumes of the pool that are full or archived and still retained (for the error).
    pub retained: u32,
}
