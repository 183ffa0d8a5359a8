//! Command-line definitions (`bams --help` is the reference of docs/design.md §4).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// BAMS: deduplicating, encrypted backups of files, streams and disk images.
#[derive(Parser, Debug)]
#[command(name = "bams", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every repository command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository: /path, s3://bucket/prefix or bams://host:4848/name
    #[arg(short = 'r', long = "repo", env = "BAMS_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Read the password from this file (first line)
    #[arg(long, env = "BAMS_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Open the repository with a key file instead of a password
    #[arg(long, env = "BAMS_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress, only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Verbose logging (-v info, -vv debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Concurrent uploads to the repository (more suits object storage with bandwidth to spare)
    #[arg(long, env = "BAMS_CONNECTIONS", global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
    /// Do not keep index files and snapshots of remote repositories in the local cache
    /// ($BAMS_CACHE_DIR, else ~/.cache/bams)
    #[arg(long, global = true)]
    pub no_cache: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Repository management
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Back up paths, a block device, or standard input
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List files in a snapshot
    Ls(LsArgs),
    /// Restore a snapshot (or part of it)
    Restore(RestoreArgs),
    /// Show differences between two snapshots
    Diff(DiffArgs),
    /// Remove snapshots by retention policy or id
    Forget(ForgetArgs),
    /// Copy snapshots to another repository (offsite, or back for recovery); only missing data
    /// is transferred, re-encrypted when the repositories have different keys
    Copy(CopyArgs),
    /// Remove unreferenced data
    Prune(PruneArgs),
    /// Verify the repository's structure and optionally its data
    Check(CheckArgs),
    /// Repository statistics
    Stats(StatsArgs),
    /// Manage key slots (passwords and key files)
    #[command(subcommand)]
    Key(KeyCmd),
    /// Mount snapshots as a read-only filesystem (FUSE)
    Mount(MountArgs),
    /// Remove stale locks left by crashed processes
    Unlock,
    /// Tape tier: label cartridges, write snapshots to a media pool, restore a tape set
    #[command(subcommand)]
    Tape(TapeCmd),
    /// File daemon for a protected machine: `bams agent enroll` once, then `bams agent`
    Agent(AgentArgs),
    /// Put a stored disk image on a disk, fetching only the chunks it lacks; with a boot token
    /// (the management OS), sync disks back, flash what is queued and report
    Flash(FlashArgs),
    /// Run the server: REST API, scheduler and job runner (docs/design.md §5, §6)
    Server(ServerArgs),
    /// Manage server users in the catalog (works with the server stopped too)
    #[command(subcommand)]
    User(UserCmd),
    /// Catalog maintenance
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// What the appliance can do on this machine, and why not: catalog, clock, free space,
    /// TLS, tools, tape devices, repositories not checked lately (exit 1 if something is
    /// broken)
    Doctor(ServerArgs),
    /// The server's TLS certificate: a self-signed one for a new appliance, and the
    /// fingerprint agents pin
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write the man pages of bams and every subcommand into a directory (packaging)
    #[command(hide = true)]
    Man {
        /// Directory for bams.1, bams-backup.1, …
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum TlsCmd {
    /// Make a self-signed certificate and key (cert.pem, key.pem 0600) for this machine's names
    SelfSigned {
        /// Directory for cert.pem and key.pem
        #[arg(long)]
        dir: PathBuf,
        /// More DNS names or IP addresses the certificate is valid for (besides the host name,
        /// its FQDN, localhost, 127.0.0.1 and ::1)
        #[arg(long = "name")]
        names: Vec<String>,
        /// Days it is valid
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace an existing certificate
        #[arg(long)]
        force: bool,
    },
    /// Print the SHA-256 fingerprint of a PEM certificate (as `bams agent enroll --fingerprint`
    /// takes it)
    Fingerprint {
        /// The certificate
        cert: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Where the agent keeps its credential (agent.json, mode 0600)
    #[arg(long, env = "BAMS_AGENT_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Upload limit for all of this agent's runs, in bytes per second (jobs may set a lower
    /// one in options.bandwidth_limit)
    #[arg(long, env = "BAMS_AGENT_LIMIT_UPLOAD")]
    pub limit_upload: Option<u64>,
    /// Runs this agent executes at once; it asks for more work only below this
    #[arg(long, env = "BAMS_AGENT_MAX_JOBS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_jobs: u32,
    #[command(subcommand)]
    pub cmd: Option<AgentCmd>,
}

/// `bams flash` (docs/images.md).
#[derive(Args, Debug)]
pub struct FlashArgs {
    /// The server, e.g. http://10.0.2.2:4848
    #[arg(long, env = "BAMS_SERVER")]
    pub server: Option<String>,
    /// Image to flash: UUID or UUID@VERSION (default the latest version)
    #[arg(long)]
    pub image: Option<String>,
    /// Disk (block device or image file) to flash it onto
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// API token (with --image)
    #[arg(long, env = "BAMS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// One-time boot token of this boot (the management OS)
    #[arg(long, env = "BAMS_BOOT_TOKEN", hide_env_values = true)]
    pub boot_token: Option<String>,
    /// Take bams.server= and bams.token= from /proc/cmdline (the management OS)
    #[arg(long)]
    pub from_cmdline: bool,
    /// Write a task's disk elsewhere: DISK=PATH (e.g. /dev/sda=/dev/vda)
    #[arg(long)]
    pub device_map: Vec<String>,
    /// Reboot or power off when done, as the server says
    #[arg(long)]
    pub power: bool,
    /// Trust this CA certificate (PEM) for the server
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint
    #[arg(long)]
    pub fingerprint: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Exchange a one-time enrollment token (from POST /api/v1/agents) for this agent's credential
    Enroll {
        /// The server, e.g. https://backup.example:4848
        #[arg(long)]
        server: String,
        /// The enrollment token
        #[arg(long, env = "BAMS_ENROLLMENT_TOKEN")]
        token: String,
        /// PEM file of a CA to trust for the server's certificate (self-signed appliances)
        #[arg(long, conflicts_with = "fingerprint")]
        ca_cert: Option<PathBuf>,
        /// Trust exactly the server certificate with this SHA-256 fingerprint (printed when the
        /// bams package is installed, and by `bams tls fingerprint`)
        #[arg(long)]
        fingerprint: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Configuration file (default /etc/bams/config.yaml when it exists)
    #[arg(long, env = "BAMS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object a line, for log shippers); overrides the
    /// config's `log_format`
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (password from BAMS_USER_PASSWORD, --password-file or a prompt)
    Add {
        #[command(flatten)]
        server: ServerArgs,
        /// Login name
        username: String,
        /// admin, operator or viewer
        #[arg(long, default_value = "viewer")]
        role: String,
        /// File holding the new password (first line)
        #[arg(long = "user-password-file")]
        password_file: Option<PathBuf>,
    },
    /// List users
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Set a user's password
    Passwd {
        #[command(flatten)]
        server: ServerArgs,
        /// Login name
        username: String,
        /// File holding the new password (first line)
        #[arg(long = "user-password-file")]
        password_file: Option<PathBuf>,
    },
    /// Remove a user and their tokens
    Remove {
        #[command(flatten)]
        server: ServerArgs,
        /// Login name
        username: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Rebuild the snapshot cache of every registered repository from the repositories
    Rebuild {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Apply the catalog migrations of this version (the server does it when it starts)
    Migrate {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepoCmd {
    /// Create a new repository
    Init(InitArgs),
    /// Merge small index files into a few large ones (many writers add one per backup;
    /// opening a repository reads them all). Safe beside running backups; prune waits
    Consolidate(ConsolidateArgs),
}

#[derive(Args, Debug)]
pub struct ConsolidateArgs {
    /// Only when at least this many small index files exist
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..))]
    pub min_files: u32,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// zstd level 1-19, or -1 to -7 for zstd's fast levels; 0 = no compression
    #[arg(long, default_value_t = bams_store::repo::DEFAULT_COMPRESSION, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-7..=19))]
    pub compression: i32,
    /// Target pack size in MiB [default: 64 on s3://, where each object is a billed request; 16
    /// elsewhere]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub pack_size_mib: Option<u32>,
    /// Average chunk size in KiB (min = avg/4, max = avg*4)
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=16384))]
    pub chunk_avg_kib: u32,
    /// Share blob ids and chunker settings with this repository (a copy target: `bams copy`
    /// then sends only missing chunks without re-hashing); the encryption key stays separate
    #[arg(long)]
    pub copy_ids_from: Option<String>,
    /// Password file of --copy-ids-from [default: the usual password]
    #[arg(long, env = "BAMS_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Memory of the password's key derivation (Argon2id), MiB: more makes guessing costlier
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(8..=1024))]
    pub kdf_memory_mib: u32,
    /// Passes of the password's key derivation (Argon2id)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub kdf_passes: u32,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files, directories or block devices to back up
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine)
    #[arg(long)]
    pub host: Option<String>,
    /// Exclude paths matching this glob (repeatable)
    #[arg(long = "exclude", short = 'e')]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line
    #[arg(long = "exclude-file")]
    pub exclude_files: Vec<PathBuf>,
    /// Stay on the filesystem of each path
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// The named files are disk images: finer chunks so a new version stores about what
    /// changed, holes restored as holes (block devices are always treated this way)
    #[arg(long)]
    pub image: bool,
    /// Back up standard input as one file
    #[arg(long)]
    pub stdin: bool,
    /// File name for --stdin
    #[arg(long, default_value = "stdin")]
    pub stdin_name: String,
    /// Use this snapshot as parent instead of the latest matching one
    #[arg(long, conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file again (no parent)
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag
    #[arg(long)]
    pub tag: Option<String>,
    /// Only snapshots containing this path
    #[arg(long)]
    pub path: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, prefix, or `latest`
    pub snapshot: String,
    /// Directory inside the snapshot
    pub path: Option<String>,
    /// Long listing (mode, owner, size, time)
    #[arg(short, long)]
    pub long: bool,
    /// Only the named directory, not everything below it
    #[arg(long)]
    pub no_recursive: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, prefix, or `latest`; `ID:/sub/dir` restores a subtree
    pub snapshot: String,
    /// Directory to restore into
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Restore only paths matching this glob (repeatable)
    #[arg(long = "include", short = 'i')]
    pub include: Vec<String>,
    /// Re-read restored files and compare with the snapshot
    #[arg(long)]
    pub verify: bool,
    /// Use numeric uid/gid instead of user and group names
    #[arg(long)]
    pub numeric_owner: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Older snapshot
    pub first: String,
    /// Newer snapshot
    pub second: String,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove explicitly
    pub snapshots: Vec<String>,
    /// Keep the newest N
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Keep one per hour for the last N hours with snapshots
    #[arg(long)]
    pub keep_hourly: Option<usize>,
    /// Keep one per day for N days
    #[arg(long)]
    pub keep_daily: Option<usize>,
    /// Keep one per week for N weeks
    #[arg(long)]
    pub keep_weekly: Option<usize>,
    /// Keep one per month for N months
    #[arg(long)]
    pub keep_monthly: Option<usize>,
    /// Keep one per year for N years
    #[arg(long)]
    pub keep_yearly: Option<usize>,
    /// Keep everything within this duration of the newest snapshot (e.g. 7d, 12h, 2w, 1y2m)
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Always keep snapshots with this tag
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Only consider snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only consider snapshots with this tag
    #[arg(long)]
    pub tag: Option<String>,
    /// Show what would be removed
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    /// With --prune: keep packs younger than this (see `bams prune --grace`)
    #[arg(long, default_value = "1h", value_parser = parse_grace)]
    pub grace: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Source repository
    #[arg(long)]
    pub from: String,
    /// Destination repository (must exist: `bams -r DEST repo init`)
    #[arg(long)]
    pub to: String,
    /// Source password file [default: the usual password: BAMS_PASSWORD, --password-file…]
    #[arg(long, env = "BAMS_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Destination password file [default: the usual password]
    #[arg(long, env = "BAMS_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Snapshots to copy (ids, prefixes or `latest`); default: all that match the filters
    pub snapshots: Vec<String>,
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be removed
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Repack packs with more than this percentage unused
    #[arg(long, default_value_t = 5.0)]
    pub max_unused: f64,
    /// Keep packs younger than this (`0`, `90s`, `30min`, `2h`, `1d`): they may belong to a
    /// backup still running whose lock went stale
    #[arg(long, default_value = "1h", value_parser = parse_grace)]
    pub grace: std::time::Duration,
}

/// `0`, or a number with `s`, `min`, `h` or `d`.
pub fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("bad duration {s:?}: use e.g. 0, 90s, 30min, 2h, 1d");
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = s[..split].parse().map_err(|_| bad())?;
    let unit = match &s[split..] {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).map(std::time::Duration::from_secs).ok_or_else(bad)
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and verify every pack
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a random share of packs, e.g. 10%
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Add a key slot for a new password or key file
    Add(KeyAddArgs),
    /// List key slots
    List,
    /// Remove a key slot
    Remove {
        /// Key slot id or unique prefix
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct KeyAddArgs {
    /// Read the new password from this file
    #[arg(long, conflicts_with = "new_key_file")]
    pub new_password_file: Option<PathBuf>,
    /// Use this file's contents as the new key (created with 32 random bytes if missing)
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
    /// Description shown by `key list`
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Empty directory to mount on
    pub mountpoint: PathBuf,
}

/// Which library and drive a tape command uses.
#[derive(Args, Debug, Clone)]
pub struct TapeLibraryArgs {
    /// The virtual tape library's directory (the server's is <data dir>/vtl); with --changer,
    /// the directory of the real library's media database (the server's is <data dir>/tape)
    #[arg(long, env = "BAMS_TAPE_LIBRARY_DIR", default_value = "./bams-data/vtl")]
    pub library: PathBuf,
    /// Drive to use
    #[arg(long, default_value_t = 0)]
    pub drive: u32,
    /// A real library's changer device (e.g. /dev/sg3): the robot is driven with mtx
    #[arg(long, env = "BAMS_TAPE_CHANGER")]
    pub changer: Option<String>,
    /// With --changer: the drives' non-rewinding devices in element order (e.g. /dev/nst0)
    #[arg(long = "device", requires = "changer")]
    pub devices: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum TapeCmd {
    /// Label a cartridge for a media pool (loads it into the drive)
    Label {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// Cartridge barcode
        #[arg(long)]
        barcode: String,
        /// Media pool
        #[arg(long)]
        pool: String,
        /// Relabel a cartridge that is already labeled or holds other data (erases it)
        #[arg(long)]
        force: bool,
    },
    /// Write snapshots (default: all) of the repository to volumes of a media pool
    Write {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// Media pool
        #[arg(long)]
        pool: String,
        /// Snapshot ids or prefixes
        snapshots: Vec<String>,
    },
    /// Read a tape set back into a new repository directory (loads its volumes)
    Restore {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// The set id `tape write` printed
        #[arg(long)]
        set: String,
        /// New, empty directory for the restored repository
        #[arg(long)]
        target: PathBuf,
    },
    /// Media pools: retention and recycling of their volumes
    #[command(subcommand)]
    Pool(TapePoolCmd),
    /// Volumes in the media database, with their retention (or set one's status)
    Volumes {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// Set the status of this volume (with --status)
        #[arg(long, requires = "status")]
        barcode: Option<String>,
        /// append, full, archive (never appended to or recycled) or error
        #[arg(long, requires = "barcode")]
        status: Option<String>,
    },
    /// Tape sets in the media database, with their expiry
    Sets {
        #[command(flatten)]
        library: TapeLibraryArgs,
    },
}

/// A pool's policy on the command line.
#[derive(Args, Debug, Clone)]
pub struct TapePoolPolicyArgs {
    /// Days a set is kept (omit to keep sets forever; 0 lets them expire at once)
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Most volumes the pool may take (omit for no limit)
    #[arg(long)]
    pub max_volumes: Option<u32>,
    /// Never relabel the pool's expired volumes
    #[arg(long)]
    pub no_recycle: bool,
}

#[derive(Subcommand, Debug)]
pub enum TapePoolCmd {
    /// Create a media pool
    Create {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// Pool name
        name: String,
        #[command(flatten)]
        policy: TapePoolPolicyArgs,
    },
    /// Replace a pool's policy (applies to the sets already written)
    Update {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// Pool name
        name: String,
        #[command(flatten)]
        policy: TapePoolPolicyArgs,
    },
    /// Delete a pool that holds no volume
    Delete {
        #[command(flatten)]
        library: TapeLibraryArgs,
        /// Pool name
        name: String,
    },
    /// List pools
    List {
        #[command(flatten)]
        library: TapeLibraryArgs,
    },
}
