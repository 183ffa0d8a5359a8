//! Bare-metal images as the catalog knows them: images owned by users, their numbered
//! versions (each a snapshot in an image repository), image sets that freeze a list of
//! (image, version, update) entries, and the machines that network-boot them with their MAC
//! addresses, boot plans and history. The meaning (who may do what, how a boot proceeds) is
//! `bams-images`'s; this module keeps the rows consistent.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::row::{to_json, RowExt};
use crate::{now_ms, Catalog};

/// What an image is for (the image service's own categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// A whole-disk operating system.
    System,
    /// A boot disk or partition.
    Boot,
    /// A user's data disk.
    UserData,
    /// A scratch image whose versions are forgotten after `expires_at`.
    Temporal,
    /// A base others start from.
    Base,
}

impl ImageKind {
    /// The name stored in the catalog and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Boot => "boot",
            Self::UserData => "user-data",
            Self::Temporal => "temporal",
            Self::Base => "base",
        }
    }
}

impl std::str::FromStr for ImageKind {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "system" => Self::System,
            "boot" => Self::Boot,
            "user-data" => Self::UserData,
            "temporal" => Self::Temporal,
            "base" => Self::Base,
            _ => {
                return Err(CatalogError::Invalid(format!(
                    "unknown image kind {s:?} (system, boot, user-data, temporal, base)"
                )))
            }
        })
    }
}

/// An image.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Image {
    /// Numeric id (internal; the API names images by `uuid`).
    #[serde(skip)]
    pub id: i64,
    /// The image's UUID.
    pub uuid: String,
    /// Name, unique per owner.
    pub name: String,
    /// Owner's user id.
    pub owner_id: i64,
    /// Owner's user name.
    pub owner: String,
    /// What it is for.
    pub kind: ImageKind,
    /// Device it is flashed onto on a machine (`/dev/sda`).
    pub disk: String,
    /// The seed's `DiskUUID`, kept as given.
    pub disk_uuid: Option<String>,
    /// Size of the empty first version in bytes.
    pub size: i64,
    /// Free text.
    pub description: String,
    /// Temporal images: when their versions are forgotten.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// Repository holding the versions.
    pub repository: i64,
    /// Number of versions.
    pub versions: i64,
    /// Highest version number, when there is one.
    pub latest: Option<i64>,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl Image {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            uuid: r.str("uuid")?,
            name: r.str("name")?,
            owner_id: r.i64("owner_id")?,
            owner: r.str("owner")?,
            kind: r.str("kind")?.parse()?,
            disk: r.str("disk")?,
            disk_uuid: r.opt_str("disk_uuid")?,
            size: r.i64("size")?,
            description: r.str("description")?,
            expires_at: r.opt_i64("expires_at")?,
            repository: r.i64("repository_id")?,
            versions: r.i64("versions")?,
            latest: r.opt_i64("latest")?,
            created_at: r.i64("created_at")?,
        })
    }
}

/// A new image's row.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// UUID (made by the caller).
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner_id: i64,
    /// Kind.
    pub kind: ImageKind,
    /// Target device.
    pub disk: String,
    /// The seed's disk UUID.
    pub disk_uuid: Option<String>,
    /// Size of the empty first version.
    pub size: i64,
    /// Free text.
    pub description: String,
    /// Expiry (temporal images).
    pub expires_at: Option<i64>,
    /// Repository for the versions.
    pub repository_id: i64,
}

/// Changes to an image (absent fields stay).
#[derive(Debug, Clone, Default)]
pub struct ImageChange {
    /// New name.
    pub name: Option<String>,
    /// New kind.
    pub kind: Option<ImageKind>,
    /// New target device.
    pub disk: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<i64>>,
    /// New owner.
    pub owner_id: Option<i64>,
}

/// One version of an image.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageVersion {
    /// Version number (1, 2, …; never reused).
    pub number: i64,
    /// Snapshot holding it in the image's repository.
    pub snapshot_id: String,
    /// Disk size in bytes.
    pub size: i64,
    /// Plaintext bytes this version added to the repository (the rest was already there).
    pub bytes_added: i64,
    /// Bytes that crossed the network to make it.
    pub bytes_sent: i64,
    /// `empty` (a new image), `upload` (a whole image sent) or `sync` (a machine's changed
    /// chunks).
    pub source: String,
    /// Who made it.
    pub created_by: String,
    /// When.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl ImageVersion {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            number: r.i64("number")?,
            snapshot_id: r.str("snapshot_id")?,
            size: r.i64("size")?,
            bytes_added: r.i64("bytes_added")?,
            bytes_sent: r.i64("bytes_sent")?,
            source: r.str("source")?,
            created_by: r.str("created_by")?,
            created_at: r.i64("created_at")?,
        })
    }
}

/// A version about to be recorded.
#[derive(Debug, Clone)]
pub struct NewImageVersion {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Disk size.
    pub size: i64,
    /// Bytes added to the repository.
    pub bytes_added: i64,
    /// Bytes sent over the network.
    pub bytes_sent: i64,
    /// `empty`, `upload` or `sync`.
    pub source: String,
    /// Who made it.
    pub created_by: String,
}

/// One disk of a boot: which version of which image, and whether the machine's changes to it
/// are synced back as a new version when it is next reclaimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootEntry {
    /// Image UUID.
    pub image: String,
    /// Version number.
    pub version: i64,
    /// Sync the disk back as a new version at the next boot.
    #[serde(default)]
    pub update: bool,
}

/// A named, frozen list of boot entries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageSet {
    /// Numeric id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Owner's user id.
    pub owner_id: i64,
    /// Owner's name.
    pub owner: String,
    /// The disks, in flashing order.
    pub entries: Vec<BootEntry>,
    /// Free text.
    pub description: String,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl ImageSet {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            owner_id: r.i64("owner_id")?,
            owner: r.str("owner")?,
            entries: r.json("entries")?,
            description: r.str("description")?,
            created_at: r.i64("created_at")?,
        })
    }
}

/// What a machine boots: a set's entries (or one image's), frozen when queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootPlan {
    /// The set it came from, if any.
    pub set: Option<String>,
    /// The disks.
    pub entries: Vec<BootEntry>,
    /// Who queued it.
    pub queued_by: String,
    /// When.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub queued_at: i64,
}

/// Where a machine is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Known, nothing done yet.
    Registered,
    /// The management OS is writing its disks.
    Flashing,
    /// Flashed and verified; running its own system.
    Booted,
    /// The management OS is sending a disk back as a new version.
    Syncing,
    /// Booted from its local disk with nothing queued.
    Neutral,
    /// The last boot failed (see `error`).
    Failed,
}

impl MachineState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Flashing => "flashing",
            Self::Booted => "booted",
            Self::Syncing => "syncing",
            Self::Neutral => "neutral",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for MachineState {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "registered" => Self::Registered,
            "flashing" => Self::Flashing,
            "booted" => Self::Booted,
            "syncing" => Self::Syncing,
            "neutral" => Self::Neutral,
            "failed" => Self::Failed,
            _ => return Err(CatalogError::Invalid(format!("unknown machine state {s:?}"))),
        })
    }
}

/// A machine that network-boots from this server.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Machine {
    /// Numeric id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// CPU architecture (`x86_64`).
    pub arch: String,
    /// Accepted by an administrator: only managed machines are ever flashed.
    pub managed: bool,
    /// Where it is in its cycle.
    pub state: MachineState,
    /// Why the last boot failed.
    pub error: Option<String>,
    /// Its MAC addresses (lowercase, colon-separated).
    pub macs: Vec<String>,
    /// What its disks hold now.
    pub current: Option<BootPlan>,
    /// What it gets at its next network boot.
    pub next: Option<BootPlan>,
    /// After flashing: `reboot` or `poweroff`.
    pub after_flash: String,
    /// Last time it asked for its boot script or reported.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<i64>,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl Machine {
    fn from_row(r: &AnyRow) -> Result<Self> {
        let macs = r.str("macs")?;
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            arch: r.str("arch")?,
            managed: r.flag("managed")?,
            state: r.str("state")?.parse()?,
            error: r.opt_str("error")?,
            macs: macs.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            current: r.opt_json("current_set")?,
            next: r.opt_json("next_set")?,
            after_flash: r.str("after_flash")?,
            last_seen: r.opt_i64("last_seen")?,
            created_at: r.i64("created_at")?,
        })
    }
}

/// One line of a machine's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MachineEvent {
    /// When.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub time: i64,
    /// The state it entered.
    pub state: MachineState,
    /// What happened.
    pub message: String,
    /// Numbers (a flash report).
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Changes to a machine (absent fields stay).
#[derive(Debug, Clone, Default)]
pub struct MachineChange {
    /// New name.
    pub name: Option<String>,
    /// New architecture.
    pub arch: Option<String>,
    /// Accept (true) or release (false).
    pub managed: Option<bool>,
    /// `reboot` or `poweroff`.
    pub after_flash: Option<String>,
    /// Replace the MAC addresses.
    pub macs: Option<Vec<String>>,
}

const IMAGE_SELECT: &str = "SELECT i.id, i.uuid, i.name, i.owner_id, u.username AS owner, i.kind, i.disk, \
     i.disk_uuid, i.size, i.description, i.expires_at, i.repository_id, i.created_at, \
     (SELECT COUNT(*) FROM image_versions v WHERE v.image_id = i.id) AS versions, \
     (SELECT MAX(v.number) FROM image_versions v WHERE v.image_id = i.id) AS latest \
     FROM images i JOIN users u ON u.id = i.owner_id";

const VERSION_COLS: &str = "number, snapshot_id, size, bytes_added, bytes_sent, source, created_by, created_at";

const SET_SELECT: &str = "SELECT s.id, s.name, s.owner_id, u.username AS owner, s.entries, s.description, \
     s.created_at FROM image_sets s JOIN users u ON u.id = s.owner_id";

fn machine_select(backend: crate::Backend) -> String {
    let macs = match backend {
        crate::Backend::Sqlite => {
            "COALESCE((SELECT GROUP_CONCAT(mac, ',') FROM \
                                   (SELECT mac FROM machine_macs WHERE machine_id = m.id ORDER BY mac)), '')"
        }
        crate::Backend::Postgres => {
            "COALESCE((SELECT STRING_AGG(mac, ',' ORDER BY mac) FROM machine_macs \
                                     WHERE machine_id = m.id), '')"
        }
    };
    format!(
        "SELECT m.id, m.name, m.arch, m.managed, m.state, m.error, m.current_set, m.next_set, m.after_flash, \
         m.last_seen, m.created_at, {macs} AS macs FROM machines m"
    )
}

/// Give machine `id` the MAC address `mac` (which no other machine may have).
async fn add_mac(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: i64, mac: &str) -> Result<()> {
    let r = sqlx::query("INSERT INTO machine_macs (mac, machine_id) VALUES ($1, $2)")
        .bind(mac)
        .bind(id)
        .execute(&mut **tx)
        .await;
    named_conflict(r.map_err(Into::into), || format!("MAC address {mac} belongs to another machine"))?;
    Ok(())
}

impl Catalog {
    // ---- images ----

    /// Record a new image (its first version is added separately).
    pub async fn create_image(&self, new: &NewImage) -> Result<Image> {
        let r = sqlx::query(
            "INSERT INTO images (uuid, name, owner_id, kind, disk, disk_uuid, size, description, expires_at, \
             repository_id, next_version, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11)",
        )
        .bind(&new.uuid)
        .bind(&new.name)
        .bind(new.owner_id)
        .bind(new.kind.as_str())
        .bind(&new.disk)
        .bind(new.disk_uuid.as_deref())
        .bind(new.size)
        .bind(&new.description)
        .bind(new.expires_at)
        .bind(new.repository_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        named_conflict(r.map_err(Into::into), || {
            format!("an image named {:?} already exists for its owner", new.name)
        })?;
        self.get_image(&new.uuid).await
    }

    /// Images, all or one owner's, by name.
    pub async fn list_images(&self, owner_id: Option<i64>) -> Result<Vec<Image>> {
        let rows = match owner_id {
            Some(o) => {
                sqlx::query(&format!("{IMAGE_SELECT} WHERE i.owner_id = $1 ORDER BY i.name, i.id"))
                    .bind(o)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{IMAGE_SELECT} ORDER BY u.username, i.name, i.id")).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(Image::from_row).collect()
    }

    /// One image by UUID.
    pub async fn get_image(&self, uuid: &str) -> Result<Image> {
        let row = sqlx::query(&format!("{IMAGE_SELECT} WHERE i.uuid = $1"))
            .bind(uuid)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("image {uuid}")))?;
        Image::from_row(&row)
    }

    /// Change an image's name, kind, disk, description, expiry or owner.
    pub async fn update_image(&self, uuid: &str, change: &ImageChange) -> Result<Image> {
        let cur = self.get_image(uuid).await?;
        let expires = match change.expires_at {
            Some(e) => e,
            None => cur.expires_at,
        };
        let r = sqlx::query(
            "UPDATE images SET name = $1, kind = $2, disk = $3, description = $4, expires_at = $5, owner_id = $6 \
             WHERE id = $7",
        )
        .bind(change.name.as_deref().unwrap_or(&cur.name))
        .bind(change.kind.unwrap_or(cur.kind).as_str())
        .bind(change.disk.as_deref().unwrap_or(&cur.disk))
        .bind(change.description.as_deref().unwrap_or(&cur.description))
        .bind(expires)
        .bind(change.owner_id.unwrap_or(cur.owner_id))
        .bind(cur.id)
        .execute(&self.pool)
        .await;
        named_conflict(r.map_err(Into::into), || "an image of that name already exists for its owner".into())?;
        self.get_image(uuid).await
    }

    /// Remove an image and its version rows (the snapshots are the caller's to forget).
    pub async fn delete_image(&self, uuid: &str) -> Result<()> {
        let image = self.get_image(uuid).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM image_versions WHERE image_id = $1").bind(image.id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM images WHERE id = $1").bind(image.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Temporal images whose expiry has passed and that still have versions.
    pub async fn expired_images(&self, now: i64) -> Result<Vec<Image>> {
        let rows = sqlx::query(&format!(
            "{IMAGE_SELECT} WHERE i.kind = 'temporal' AND i.expires_at IS NOT NULL AND i.expires_at <= $1 \
             AND EXISTS (SELECT 1 FROM image_versions v WHERE v.image_id = i.id) ORDER BY i.id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Image::from_row).collect()
    }

    // ---- versions ----

    /// Record a stored version under the next number (numbers are never reused, even after a
    /// version is deleted).
    pub async fn add_image_version(&self, image_id: i64, v: &NewImageVersion) -> Result<ImageVersion> {
        let mut tx = self.pool.begin().await?;
        let (next,): (i64,) =
            sqlx::query_as("UPDATE images SET next_version = next_version + 1 WHERE id = $1 RETURNING next_version")
                .bind(image_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| CatalogError::NotFound(format!("image {image_id}")))?;
        let number = next - 1;
        sqlx::query(
            "INSERT INTO image_versions (image_id, number, snapshot_id, size, bytes_added, bytes_sent, source, \
             created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(image_id)
        .bind(number)
        .bind(&v.snapshot_id)
        .bind(v.size)
        .bind(v.bytes_added)
        .bind(v.bytes_sent)
        .bind(&v.source)
        .bind(&v.created_by)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_image_version(image_id, number).await
    }

    /// An image's versions, oldest first.
    pub async fn list_image_versions(&self, image_id: i64) -> Result<Vec<ImageVersion>> {
        let rows =
            sqlx::query(&format!("SELECT {VERSION_COLS} FROM image_versions WHERE image_id = $1 ORDER BY number"))
                .bind(image_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(ImageVersion::from_row).collect()
    }

    /// One version by number.
    pub async fn get_image_version(&self, image_id: i64, number: i64) -> Result<ImageVersion> {
        let row =
            sqlx::query(&format!("SELECT {VERSION_COLS} FROM image_versions WHERE image_id = $1 AND number = $2"))
                .bind(image_id)
                .bind(number)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| CatalogError::NotFound(format!("version {number}")))?;
        ImageVersion::from_row(&row)
    }

    /// Remove one version's row.
    pub async fn delete_image_version(&self, image_id: i64, number: i64) -> Result<()> {
        let n = sqlx::query("DELETE FROM image_versions WHERE image_id = $1 AND number = $2")
            .bind(image_id)
            .bind(number)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("version {number}")));
        }
        Ok(())
    }

    // ---- image sets ----

    /// Record a set.
    pub async fn create_image_set(
        &self,
        name: &str,
        owner_id: i64,
        entries: &[BootEntry],
        description: &str,
    ) -> Result<ImageSet> {
        let r = sqlx::query(
            "INSERT INTO image_sets (name, owner_id, entries, description, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(name)
        .bind(owner_id)
        .bind(to_json(&entries))
        .bind(description)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("an image set named {name:?} already exists"))?;
        self.get_image_set(&sqlx::Row::try_get::<i64, _>(&row, 0)?.to_string()).await
    }

    /// Sets, all or one owner's.
    pub async fn list_image_sets(&self, owner_id: Option<i64>) -> Result<Vec<ImageSet>> {
        let rows = match owner_id {
            Some(o) => {
                sqlx::query(&format!("{SET_SELECT} WHERE s.owner_id = $1 ORDER BY s.name"))
                    .bind(o)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query(&format!("{SET_SELECT} ORDER BY s.name")).fetch_all(&self.pool).await?,
        };
        rows.iter().map(ImageSet::from_row).collect()
    }

    /// One set by id (digits) or name.
    pub async fn get_image_set(&self, id_or_name: &str) -> Result<ImageSet> {
        let row = match id_or_name.parse::<i64>() {
            Ok(id) => sqlx::query(&format!("{SET_SELECT} WHERE s.id = $1")).bind(id).fetch_optional(&self.pool).await?,
            Err(_) => {
                sqlx::query(&format!("{SET_SELECT} WHERE s.name = $1"))
                    .bind(id_or_name)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        ImageSet::from_row(&row.ok_or_else(|| CatalogError::NotFound(format!("image set {id_or_name}")))?)
    }

    /// Remove a set (machines keep the entries they were queued with: plans are frozen).
    pub async fn delete_image_set(&self, id: i64) -> Result<()> {
        let n = sqlx::query("DELETE FROM image_sets WHERE id = $1").bind(id).execute(&self.pool).await?.rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("image set {id}")));
        }
        Ok(())
    }

    // ---- machines ----

    /// Register a machine with one MAC address (unmanaged, state `registered`).
    pub async fn register_machine(&self, name: &str, mac: &str, arch: &str, managed: bool) -> Result<Machine> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO machines (name, arch, managed, state, after_flash, last_seen, created_at) \
             VALUES ($1, $2, $3, 'registered', 'reboot', $4, $4) RETURNING id",
        )
        .bind(name)
        .bind(arch)
        .bind(i64::from(managed))
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("a machine named {name:?} already exists"))?;
        let id: i64 = sqlx::Row::try_get(&row, 0)?;
        add_mac(&mut tx, id, mac).await?;
        sqlx::query("INSERT INTO machine_events (machine_id, time, state, message) VALUES ($1, $2, 'registered', $3)")
            .bind(id)
            .bind(now)
            .bind(format!("registered by MAC address {mac}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_machine(id).await
    }

    /// All machines by name.
    pub async fn list_machines(&self) -> Result<Vec<Machine>> {
        let rows =
            sqlx::query(&format!("{} ORDER BY m.name", machine_select(self.backend))).fetch_all(&self.pool).await?;
        rows.iter().map(Machine::from_row).collect()
    }

    /// One machine by id.
    pub async fn get_machine(&self, id: i64) -> Result<Machine> {
        self.one_by_id(&format!("{} WHERE m.id = $1", machine_select(self.backend)), id, "machine", Machine::from_row)
            .await
    }

    /// The machine owning a MAC address (lowercase, colon-separated).
    pub async fn machine_by_mac(&self, mac: &str) -> Result<Option<Machine>> {
        let id: Option<(i64,)> = sqlx::query_as("SELECT machine_id FROM machine_macs WHERE mac = $1")
            .bind(mac)
            .fetch_optional(&self.pool)
            .await?;
        match id {
            Some((id,)) => Ok(Some(self.get_machine(id).await?)),
            None => Ok(None),
        }
    }

    /// The machine whose boot under way carries this token hash (and it has not expired).
    pub async fn machine_by_token(&self, token_hash: &str, now: i64) -> Result<Option<Machine>> {
        let id: Option<(i64,)> = sqlx::query_as("SELECT id FROM machines WHERE token_hash = $1 AND token_expires > $2")
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        match id {
            Some((id,)) => Ok(Some(self.get_machine(id).await?)),
            None => Ok(None),
        }
    }

    /// Change a machine's name, architecture, managed flag, after-flash action or MACs.
    pub async fn update_machine(&self, id: i64, change: &MachineChange) -> Result<Machine> {
        let cur = self.get_machine(id).await?;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE machines SET name = $1, arch = $2, managed = $3, after_flash = $4 WHERE id = $5")
            .bind(change.name.as_deref().unwrap_or(&cur.name))
            .bind(change.arch.as_deref().unwrap_or(&cur.arch))
            .bind(i64::from(change.managed.unwrap_or(cur.managed)))
            .bind(change.after_flash.as_deref().unwrap_or(&cur.after_flash))
            .bind(id)
            .execute(&mut *tx)
            .await;
        named_conflict(r.map_err(Into::into), || "a machine of that name already exists".into())?;
        if let Some(macs) = &change.macs {
            if macs.is_empty() {
                return Err(CatalogError::Invalid("a machine needs at least one MAC address".into()));
            }
            sqlx::query("DELETE FROM machine_macs WHERE machine_id = $1").bind(id).execute(&mut *tx).await?;
            for mac in macs {
                add_mac(&mut tx, id, mac).await?;
            }
        }
        tx.commit().await?;
        self.get_machine(id).await
    }

    /// Remove a machine, its MACs and history.
    pub async fn delete_machine(&self, id: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM machine_events WHERE machine_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM machine_macs WHERE machine_id = $1").bind(id).execute(&mut *tx).await?;
        let n = sqlx::query("DELETE FROM machines WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("machine {id}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queue (or with `None`, clear) what the machine gets at its next network boot.
    pub async fn set_next_boot(&self, id: i64, plan: Option<&BootPlan>) -> Result<Machine> {
        let n = sqlx::query("UPDATE machines SET next_set = $1 WHERE id = $2")
            .bind(plan.map(to_json))
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("machine {id}")));
        }
        self.get_machine(id).await
    }

    /// Replace what the machine's disks hold (a sync back cleared an `update` flag).
    pub async fn set_current_boot(&self, id: i64, plan: &BootPlan) -> Result<()> {
        sqlx::query("UPDATE machines SET current_set = $1 WHERE id = $2")
            .bind(to_json(plan))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Give the boot under way a token (its hash) valid until `expires`.
    pub async fn set_boot_token(&self, id: i64, token_hash: Option<&str>, expires: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE machines SET token_hash = $1, token_expires = $2 WHERE id = $3")
            .bind(token_hash)
            .bind(expires)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The machine was heard from.
    pub async fn touch_machine(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE machines SET last_seen = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Move a machine to `state` and write it to its history.
    pub async fn set_machine_state(
        &self,
        id: i64,
        state: MachineState,
        error: Option<&str>,
        message: &str,
        details: Option<&serde_json::Value>,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("UPDATE machines SET state = $1, error = $2, last_seen = $3 WHERE id = $4")
            .bind(state.as_str())
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("machine {id}")));
        }
        sqlx::query(
            "INSERT INTO machine_events (machine_id, time, state, message, details) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(now)
        .bind(state.as_str())
        .bind(message)
        .bind(details.map(to_json))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A boot finished flashing: its plan becomes what the disks hold, nothing is queued, the
    /// token is spent. Only when the plan is still the one the boot started with (an admin may
    /// have queued another meanwhile, which then stays queued).
    pub async fn complete_boot(&self, id: i64, plan: &BootPlan) -> Result<()> {
        let cur = self.get_machine(id).await?;
        let next_after = if cur.next.as_ref() == Some(plan) { None } else { cur.next.clone() };
        sqlx::query(
            "UPDATE machines SET current_set = $1, next_set = $2, token_hash = NULL, token_expires = NULL \
             WHERE id = $3",
        )
        .bind(to_json(plan))
        .bind(next_after.as_ref().map(to_json))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A machine's history, newest first.
    pub async fn machine_events(&self, id: i64, limit: i64) -> Result<Vec<MachineEvent>> {
        let rows = sqlx::query(
            "SELECT time, state, message, details FROM machine_events WHERE machine_id = $1 \
             ORDER BY time DESC, id DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MachineEvent {
                    time: r.i64("time")?,
                    state: r.str("state")?.parse()?,
                    message: r.str("message")?,
                    details: r.opt_json("details")?,
                })
            })
            .collect()
    }
}
