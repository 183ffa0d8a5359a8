//! Snapshots: the root of one backup (`snapshots/<id>`, sealed JSON).

use chrono::{DateTime, Local, Utc};
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// Counters a backup reports and the snapshot keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Files seen for the first time.
    pub files_new: u64,
    /// Files whose metadata changed since the parent (re-read).
    pub files_changed: u64,
    /// Files taken from the parent without reading.
    pub files_unmodified: u64,
    /// Directories.
    pub dirs: u64,
    /// Total size of all files in the snapshot.
    pub total_bytes: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// New data blobs stored.
    pub data_blobs_added: u64,
    /// New tree blobs stored.
    pub tree_blobs_added: u64,
    /// Plaintext bytes of new blobs.
    pub data_added: u64,
    /// Stored (compressed + encrypted) bytes of new blobs.
    pub data_added_packed: u64,
    /// Bytes of disk images found to be files the repository already held as blobs (from
    /// a file backup), stored as references instead of again.
    #[serde(default)]
    pub image_bytes_shared: u64,
    /// Files or directories that could not be read.
    pub errors: u64,
    /// Wall time of the backup in seconds.
    pub duration_secs: f64,
}

/// One backup's root object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started.
    pub time: DateTime<Local>,
    /// Host the data came from.
    pub host: String,
    /// User who ran it.
    #[serde(default)]
    pub username: String,
    /// Source paths as given (absolute).
    pub paths: Vec<String>,
    /// Operator tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The snapshot used to skip unchanged files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Root tree.
    pub tree: Id,
    /// Some files could not be read.
    #[serde(default)]
    pub partial: bool,
    /// Job that made it (server-run backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Snapshot this was copied from (`bams copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Id>,
    /// Program that wrote it.
    pub program: String,
    /// Counters.
    pub summary: Summary,
}

impl Snapshot {
    /// UTC time for comparisons.
    pub fn time_utc(&self) -> DateTime<Utc> {
        self.time.with_timezone(&Utc)
    }
}

/// A snapshot together with its id (its file name).
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    /// File id.
    pub id: Id,
    /// Contents.
    pub snapshot: Snapshot,
}

/// Key of a snapshot object.
pub fn snapshot_key(id: &Id) -> String {
    format!("snapshots/{id}")
}
