//! The authorization policy, written once as data.
//!
//! Every route has one [`Rule`]: the privileges it needs (any one of them) and the object they
//! are checked on. Objects have paths, as in Proxmox Backup Server's ACLs:
//! `/repositories/NAME`, `/pools/NAME`, `/jobs`, `/agents`, `/appliance/{disks,bacula,tape,
//! iscsi,logs}`, `/system` (users, permissions, audit log, diagnostics, metrics). A user's
//! privileges on a path come from their global role (admin, operator, viewer) unless ACL
//! entries for that user sit on the path or, propagating, on one of its parents: the most
//! specific entries replace what was inherited (so `no-access` on one repository hides it from
//! an operator). Reading backed-up content (browse names, download, diff, restore) is its own
//! privilege, `Datastore.Read`, which the viewer role lacks.
//!
//! The auth middleware looks the rule up for every request (a route without one is refused);
//! rules on a repository or pool are checked by the handler once it knows which one
//! (`Caller::require_repository`), lists are filtered to what the caller may audit.

use std::sync::Arc;

use bams_catalog::{AclEntry, Role};
use serde::Serialize;

/// A set of privileges (bit flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privs(u32);

impl Privs {
    /// Nothing.
    pub const NONE: Self = Self(0);
    /// See the appliance's state: disks, Bacula, tape, iSCSI, logs, metrics.
    pub const SYS_AUDIT: Self = Self(1 << 0);
    /// Operate the appliance: load/unload/transfer tapes, inventory, mark volumes.
    pub const SYS_OPERATE: Self = Self(1 << 1);
    /// Configure the appliance: create/delete disks, targets, pools of tapes, Bacula config.
    pub const SYS_MODIFY: Self = Self(1 << 2);
    /// Users, permissions, other users' tokens, the audit log, diagnostics bundles.
    pub const SYS_ADMIN: Self = Self(1 << 3);
    /// See repositories, pools, snapshot lists and usage (not what is inside snapshots).
    pub const DATASTORE_AUDIT: Self = Self(1 << 4);
    /// Read backed-up content: browse file names, download, diff, restore.
    pub const DATASTORE_READ: Self = Self(1 << 5);
    /// Write new backups (repository endpoint uploads, snapshot cache refresh).
    pub const DATASTORE_BACKUP: Self = Self(1 << 6);
    /// Remove data: forget snapshots, prune, delete objects through the endpoint.
    pub const DATASTORE_PRUNE: Self = Self(1 << 7);
    /// Create, change and remove repositories and pools.
    pub const DATASTORE_MODIFY: Self = Self(1 << 8);
    /// See jobs, schedules, runs and their logs, the dashboard.
    pub const JOBS_AUDIT: Self = Self(1 << 9);
    /// Run and cancel jobs.
    pub const JOBS_RUN: Self = Self(1 << 10);
    /// Create, change and remove jobs and schedules.
    pub const JOBS_MODIFY: Self = Self(1 << 11);
    /// See agents.
    pub const AGENTS_AUDIT: Self = Self(1 << 12);
    /// Create, disable, enable and revoke agents.
    pub const AGENTS_MODIFY: Self = Self(1 << 13);
    /// See images, their versions, image sets and machines.
    pub const IMAGES_AUDIT: Self = Self(1 << 14);
    /// Download any image's versions and boot them on machines.
    pub const IMAGES_READ: Self = Self(1 << 15);
    /// Create images and image sets, and manage (upload, download, delete, boot) one's own.
    pub const IMAGES_OWN: Self = Self(1 << 16);
    /// Manage anyone's images and image sets.
    pub const IMAGES_MODIFY: Self = Self(1 << 17);
    /// Queue and clear boots on accepted machines.
    pub const MACHINES_OPERATE: Self = Self(1 << 18);
    /// Accept, change and remove machines.
    pub const MACHINES_MODIFY: Self = Self(1 << 19);
    /// Everything.
    pub const ALL: Self = Self((1 << 20) - 1);

    /// No privilege at all.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
    /// Both sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    /// Holds at least one of `any` (or `any` is empty).
    pub const fn any_of(self, any: Self) -> bool {
        any.0 == 0 || self.0 & any.0 != 0
    }
    /// Names, for messages and `GET /api/v1/auth/permissions`.
    pub fn names(self) -> Vec<&'static str> {
        PRIV_NAMES.iter().filter(|(p, _)| self.0 & p.0 != 0).map(|(_, n)| *n).collect()
    }
}

const PRIV_NAMES: [(Privs, &str); 20] = [
    (Privs::SYS_AUDIT, "Sys.Audit"),
    (Privs::SYS_OPERATE, "Sys.Operate"),
    (Privs::SYS_MODIFY, "Sys.Modify"),
    (Privs::SYS_ADMIN, "Sys.Admin"),
    (Privs::DATASTORE_AUDIT, "Datastore.Audit"),
    (Privs::DATASTORE_READ, "Datastore.Read"),
    (Privs::DATASTORE_BACKUP, "Datastore.Backup"),
    (Privs::DATASTORE_PRUNE, "Datastore.Prune"),
    (Privs::DATASTORE_MODIFY, "Datastore.Modify"),
    (Privs::JOBS_AUDIT, "Jobs.Audit"),
    (Privs::JOBS_RUN, "Jobs.Run"),
    (Privs::JOBS_MODIFY, "Jobs.Modify"),
    (Privs::AGENTS_AUDIT, "Agents.Audit"),
    (Privs::AGENTS_MODIFY, "Agents.Modify"),
    (Privs::IMAGES_AUDIT, "Images.Audit"),
    (Privs::IMAGES_READ, "Images.Read"),
    (Privs::IMAGES_OWN, "Images.Own"),
    (Privs::IMAGES_MODIFY, "Images.Modify"),
    (Privs::MACHINES_OPERATE, "Machines.Operate"),
    (Privs::MACHINES_MODIFY, "Machines.Modify"),
];

const fn all(list: &[Privs]) -> Privs {
    let mut out = Privs::NONE;
    let mut i = 0;
    while i < list.len() {
        out = out.union(list[i]);
        i += 1;
    }
    out
}

use Privs as P;

/// The roles and their privileges: the three global roles, plus roles meant for ACL entries.
pub const ROLES: &[(&str, Privs, &str)] = &[
    ("admin", P::ALL, "everything"),
    (
        "operator",
        all(&[
            P::SYS_AUDIT,
            P::SYS_OPERATE,
            P::DATASTORE_AUDIT,
            P::DATASTORE_READ,
            P::DATASTORE_BACKUP,
            P::DATASTORE_PRUNE,
            P::JOBS_AUDIT,
            P::JOBS_RUN,
            P::AGENTS_AUDIT,
            P::IMAGES_AUDIT,
            P::IMAGES_READ,
            P::MACHINES_OPERATE,
        ]),
        "run jobs, restore, read backed-up files and images, operate tapes, boot machines",
    ),
    (
        "viewer",
        all(&[P::SYS_AUDIT, P::DATASTORE_AUDIT, P::JOBS_AUDIT, P::AGENTS_AUDIT, P::IMAGES_AUDIT]),
        "see state and history; no backed-up content",
    ),
    (
        "user",
        all(&[P::IMAGES_AUDIT, P::IMAGES_OWN, P::MACHINES_OPERATE]),
        "the image service: own images and image sets, boot them on machines; nothing of the backups",
    ),
    ("reader", all(&[P::DATASTORE_AUDIT, P::DATASTORE_READ]), "browse, download and restore backed-up files"),
    ("backup", all(&[P::DATASTORE_AUDIT, P::DATASTORE_BACKUP]), "write new backups"),
    ("no-access", P::NONE, "nothing (hides an object from a user's global role)"),
];

/// Privileges of a role name; `None` for an unknown role.
pub fn role_privs(role: &str) -> Option<Privs> {
    ROLES.iter().find(|(n, _, _)| *n == role).map(|(_, p, _)| *p)
}

fn global_privs(role: Role) -> Privs {
    role_privs(role.as_str()).unwrap_or(Privs::NONE)
}

/// What a rule's privileges are checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// No credentials needed.
    Public,
    /// Any authenticated user (handlers limit it to the caller's own things).
    Own,
    /// Own things, or anyone's with the privileges on the path.
    SelfOr(&'static str),
    /// A fixed object path.
    Path(&'static str),
    /// The repository the request names; the handler checks it. The middleware asks only
    /// that the caller holds the privileges on some repository.
    Repository,
    /// The pool the request names (checked by the handler, like `Repository`).
    Pool,
    /// Agent credentials only (`/api/v1/agent/*`).
    Agent,
    /// The image (or image set) the request names; the handler checks it, owners included.
    /// The middleware asks only that the caller holds the privileges somewhere under
    /// `/images`.
    Image,
}

/// One route's policy.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// HTTP method.
    pub method: &'static str,
    /// Route template as registered (`/api/v1/jobs/{id}`).
    pub route: &'static str,
    /// Needs any one of these.
    pub privs: Privs,
    /// Checked on.
    pub on: On,
}

const fn r(method: &'static str, route: &'static str, privs: Privs, on: On) -> Rule {
    Rule { method, route, privs, on }
}

const NO: Privs = P::NONE;
const SYSTEM: On = On::Path("/system");
const JOBS: On = On::Path("/jobs");
const AGENTS: On = On::Path("/agents");
const DISKS: On = On::Path("/appliance/disks");
const BACULA: On = On::Path("/appliance/bacula");
const TAPE: On = On::Path("/appliance/tape");
const ISCSI: On = On::Path("/appliance/iscsi");
const LOGS: On = On::Path("/appliance/logs");
const REPO: On = On::Repository;
const POOL: On = On::Pool;
const IMAGE: On = On::Image;
const MACHINES: On = On::Path("/machines");
const IMAGE_WRITE: Privs = P::IMAGES_OWN.union(P::IMAGES_MODIFY);
const IMAGE_READ: Privs = P::IMAGES_OWN.union(P::IMAGES_READ).union(P::IMAGES_MODIFY);
const ENDPOINT_READ: Privs = P::DATASTORE_BACKUP.union(P::DATASTORE_READ);

/// The policy: one rule per route and method.
pub const POLICY: &[Rule] = &[
    r("GET", "/healthz", NO, On::Public),
    r("POST", "/api/v1/auth/login", NO, On::Public),
    r("POST", "/api/v1/agents/enroll", NO, On::Public),
    r("POST", "/api/v1/auth/logout", NO, On::Own),
    r("GET", "/api/v1/auth/me", NO, On::Own),
    r("POST", "/api/v1/auth/totp", NO, On::Own),
    r("POST", "/api/v1/auth/totp/confirm", NO, On::Own),
    r("POST", "/api/v1/auth/totp/disable", NO, On::Own),
    r("GET", "/api/v1/auth/permissions", NO, On::Own),
    r("GET", "/api/v1/openapi.json", NO, On::Own),
    r("GET", "/api/v1/tokens", NO, On::Own),
    r("POST", "/api/v1/tokens", NO, On::Own),
    r("DELETE", "/api/v1/tokens/{id}", P::SYS_ADMIN, On::SelfOr("/system")),
    r("GET", "/metrics", P::SYS_AUDIT, SYSTEM),
    r("GET", "/api/v1/users", P::SYS_ADMIN, SYSTEM),
    r("POST", "/api/v1/users", P::SYS_ADMIN, SYSTEM),
    r("GET", "/api/v1/users/{id}", P::SYS_ADMIN, On::SelfOr("/system")),
    r("PATCH", "/api/v1/users/{id}", P::SYS_ADMIN, On::SelfOr("/system")),
    r("DELETE", "/api/v1/users/{id}", P::SYS_ADMIN, SYSTEM),
    r("GET", "/api/v1/acl", P::SYS_ADMIN, SYSTEM),
    r("POST", "/api/v1/acl", P::SYS_ADMIN, SYSTEM),
    r("DELETE", "/api/v1/acl/{id}", P::SYS_ADMIN, SYSTEM),
    r("GET", "/api/v1/acl/roles", NO, On::Own),
    r("GET", "/api/v1/audit", P::SYS_ADMIN, SYSTEM),
    r("GET", "/api/v1/diagnostics/bundle", P::SYS_ADMIN, SYSTEM),
    r("GET", "/api/v1/system", P::SYS_AUDIT, SYSTEM),
    r("GET", "/api/v1/notifications", P::SYS_ADMIN, SYSTEM),
    r("POST", "/api/v1/notifications/test", P::SYS_ADMIN, SYSTEM),
    // Repositories and their contents.
    r("GET", "/api/v1/repositories", P::DATASTORE_AUDIT, REPO),
    r("POST", "/api/v1/repositories", P::DATASTORE_MODIFY, On::Path("/repositories")),
    r("GET", "/api/v1/repositories/{id}", P::DATASTORE_AUDIT, REPO),
    r("DELETE", "/api/v1/repositories/{id}", P::DATASTORE_MODIFY, REPO),
    r("GET", "/api/v1/repositories/{id}/stats", P::DATASTORE_AUDIT, REPO),
    r("GET", "/api/v1/snapshots", P::DATASTORE_AUDIT, REPO),
    r("POST", "/api/v1/snapshots/sync", P::DATASTORE_BACKUP, REPO),
    r("GET", "/api/v1/snapshots/diff", P::DATASTORE_READ, REPO),
    r("GET", "/api/v1/snapshots/{id}/tree", P::DATASTORE_READ, REPO),
    r("GET", "/api/v1/snapshots/{id}/file", P::DATASTORE_READ, REPO),
    r("POST", "/api/v1/snapshots/{id}/restore", P::DATASTORE_READ, REPO),
    r("GET", "/api/v1/snapshots/{id}/archive", P::DATASTORE_READ, REPO),
    r("GET", "/api/v1/snapshots/search", P::DATASTORE_READ, REPO),
    r("POST", "/api/v1/snapshots/forget", P::DATASTORE_PRUNE, REPO),
    r("GET", "/api/v1/repo/{name}/list", ENDPOINT_READ, REPO),
    r("GET", "/api/v1/repo/{name}/object", ENDPOINT_READ, REPO),
    r("HEAD", "/api/v1/repo/{name}/object", ENDPOINT_READ, REPO),
    r("PUT", "/api/v1/repo/{name}/object", P::DATASTORE_BACKUP, REPO),
    // Locks are the backup's own (Backup); anything else needs Prune (checked in the handler).
    r("DELETE", "/api/v1/repo/{name}/object", P::DATASTORE_BACKUP.union(P::DATASTORE_PRUNE), REPO),
    r("GET", "/api/v1/pools", P::DATASTORE_AUDIT, POOL),
    r("POST", "/api/v1/pools", P::DATASTORE_MODIFY, On::Path("/pools")),
    r("GET", "/api/v1/pools/{id}", P::DATASTORE_AUDIT, POOL),
    r("PUT", "/api/v1/pools/{id}", P::DATASTORE_MODIFY, POOL),
    r("DELETE", "/api/v1/pools/{id}", P::DATASTORE_MODIFY, POOL),
    // Jobs, schedules, runs.
    r("GET", "/api/v1/dashboard", P::JOBS_AUDIT, JOBS),
    r("GET", "/api/v1/jobs", P::JOBS_AUDIT, JOBS),
    r("POST", "/api/v1/jobs", P::JOBS_MODIFY, JOBS),
    r("GET", "/api/v1/jobs/{id}", P::JOBS_AUDIT, JOBS),
    r("PUT", "/api/v1/jobs/{id}", P::JOBS_MODIFY, JOBS),
    r("DELETE", "/api/v1/jobs/{id}", P::JOBS_MODIFY, JOBS),
    r("POST", "/api/v1/jobs/{id}/run", P::JOBS_RUN, JOBS),
    r("GET", "/api/v1/schedules", P::JOBS_AUDIT, JOBS),
    r("POST", "/api/v1/schedules", P::JOBS_MODIFY, JOBS),
    r("GET", "/api/v1/schedules/{id}", P::JOBS_AUDIT, JOBS),
    r("GET", "/api/v1/schedules/preview", P::JOBS_AUDIT, JOBS),
    r("PUT", "/api/v1/schedules/{id}", P::JOBS_MODIFY, JOBS),
    r("DELETE", "/api/v1/schedules/{id}", P::JOBS_MODIFY, JOBS),
    r("GET", "/api/v1/runs", P::JOBS_AUDIT, JOBS),
    r("GET", "/api/v1/runs/{id}", P::JOBS_AUDIT, JOBS),
    r("POST", "/api/v1/runs/{id}/cancel", P::JOBS_RUN, JOBS),
    r("GET", "/api/v1/runs/{id}/log", P::JOBS_AUDIT, JOBS),
    r("GET", "/api/v1/runs/{id}/log/stream", P::JOBS_AUDIT, JOBS),
    r("GET", "/api/v1/runs/{id}/events", P::JOBS_AUDIT, JOBS),
    // Agents.
    r("GET", "/api/v1/agents", P::AGENTS_AUDIT, AGENTS),
    r("POST", "/api/v1/agents", P::AGENTS_MODIFY, AGENTS),
    r("GET", "/api/v1/agents/{id}", P::AGENTS_AUDIT, AGENTS),
    r("POST", "/api/v1/agents/{id}/disable", P::AGENTS_MODIFY, AGENTS),
    r("POST", "/api/v1/agents/{id}/enable", P::AGENTS_MODIFY, AGENTS),
    r("POST", "/api/v1/agents/{id}/revoke", P::AGENTS_MODIFY, AGENTS),
    r("POST", "/api/v1/agent/poll", NO, On::Agent),
    r("POST", "/api/v1/agent/runs/{id}/events", NO, On::Agent),
    r("POST", "/api/v1/agent/runs/{id}/finish", NO, On::Agent),
    // Appliance.
    r("GET", "/api/v1/disk/repositories", P::SYS_AUDIT, DISKS),
    r("POST", "/api/v1/disk/repositories", P::SYS_MODIFY, DISKS),
    r("GET", "/api/v1/disk/repositories/{id}", P::SYS_AUDIT, DISKS),
    r("DELETE", "/api/v1/disk/repositories/{id}", P::SYS_MODIFY, DISKS),
    r("GET", "/api/v1/bacula/config", P::SYS_AUDIT, BACULA),
    r("POST", "/api/v1/bacula/config", P::SYS_MODIFY, BACULA),
    r("GET", "/api/v1/bacula/status", P::SYS_AUDIT, BACULA),
    r("POST", "/api/v1/bacula/inventory", P::SYS_OPERATE, BACULA),
    r("POST", "/api/v1/bacula/restart", P::SYS_MODIFY, BACULA),
    r("GET", "/api/v1/tape/library", P::SYS_AUDIT, TAPE),
    r("POST", "/api/v1/tape/inventory", P::SYS_OPERATE, TAPE),
    r("GET", "/api/v1/tape/drives", P::SYS_AUDIT, TAPE),
    r("GET", "/api/v1/tape/slots", P::SYS_AUDIT, TAPE),
    r("POST", "/api/v1/tape/drives/{id}/load", P::SYS_OPERATE, TAPE),
    r("POST", "/api/v1/tape/drives/{id}/unload", P::SYS_OPERATE, TAPE),
    r("POST", "/api/v1/tape/transfer", P::SYS_OPERATE, TAPE),
    r("GET", "/api/v1/tape/pools", P::SYS_AUDIT, TAPE),
    r("POST", "/api/v1/tape/pools", P::SYS_MODIFY, TAPE),
    r("GET", "/api/v1/tape/pools/{name}", P::SYS_AUDIT, TAPE),
    r("PUT", "/api/v1/tape/pools/{name}", P::SYS_MODIFY, TAPE),
    r("DELETE", "/api/v1/tape/pools/{name}", P::SYS_MODIFY, TAPE),
    r("GET", "/api/v1/tape/volumes", P::SYS_AUDIT, TAPE),
    r("GET", "/api/v1/tape/volumes/{barcode}", P::SYS_AUDIT, TAPE),
    r("PATCH", "/api/v1/tape/volumes/{barcode}", P::SYS_OPERATE, TAPE),
    // Labeling erases the cartridge: configuring, not operating.
    r("POST", "/api/v1/tape/volumes/{barcode}/label", P::SYS_MODIFY, TAPE),
    r("GET", "/api/v1/tape/sets", P::SYS_AUDIT, TAPE),
    r("GET", "/api/v1/tape/sets/{id}", P::SYS_AUDIT, TAPE),
    r("GET", "/api/v1/iscsi/targets", P::SYS_AUDIT, ISCSI),
    r("POST", "/api/v1/iscsi/targets", P::SYS_MODIFY, ISCSI),
    r("GET", "/api/v1/iscsi/targets/{id}", P::SYS_AUDIT, ISCSI),
    r("PUT", "/api/v1/iscsi/targets/{id}", P::SYS_MODIFY, ISCSI),
    r("DELETE", "/api/v1/iscsi/targets/{id}", P::SYS_MODIFY, ISCSI),
    r("POST", "/api/v1/iscsi/targets/{id}/apply", P::SYS_MODIFY, ISCSI),
    r("POST", "/api/v1/iscsi/targets/{id}/luns", P::SYS_MODIFY, ISCSI),
    r("DELETE", "/api/v1/iscsi/targets/{id}/luns/{lun}", P::SYS_MODIFY, ISCSI),
    r("GET", "/api/v1/iscsi/sessions", P::SYS_AUDIT, ISCSI),
    r("GET", "/api/v1/logs/{service}", P::SYS_AUDIT, LOGS),
    r("GET", "/api/v1/logs/{service}/stream", P::SYS_AUDIT, LOGS),
    r("GET", "/api/v1/logs/{service}/events", P::SYS_AUDIT, LOGS),
    // Bare-metal images (bams-images): checked per image by the handlers (owners included).
    r("GET", "/api/v1/images", P::IMAGES_AUDIT, IMAGE),
    r("POST", "/api/v1/images", IMAGE_WRITE, IMAGE),
    r("GET", "/api/v1/images/{uuid}", P::IMAGES_AUDIT, IMAGE),
    r("PATCH", "/api/v1/images/{uuid}", IMAGE_WRITE, IMAGE),
    r("DELETE", "/api/v1/images/{uuid}", IMAGE_WRITE, IMAGE),
    r("GET", "/api/v1/images/{uuid}/versions", P::IMAGES_AUDIT, IMAGE),
    r("POST", "/api/v1/images/{uuid}/versions", IMAGE_WRITE, IMAGE),
    r("GET", "/api/v1/images/{uuid}/versions/{version}", IMAGE_READ, IMAGE),
    r("DELETE", "/api/v1/images/{uuid}/versions/{version}", IMAGE_WRITE, IMAGE),
    r("GET", "/api/v1/images/{uuid}/versions/{version}/manifest", IMAGE_READ, IMAGE),
    r("POST", "/api/v1/images/{uuid}/versions/{version}/ranges", IMAGE_READ, IMAGE),
    r("GET", "/api/v1/image-sets", P::IMAGES_AUDIT, IMAGE),
    r("POST", "/api/v1/image-sets", IMAGE_WRITE, IMAGE),
    r("GET", "/api/v1/image-sets/{id}", P::IMAGES_AUDIT, IMAGE),
    r("DELETE", "/api/v1/image-sets/{id}", IMAGE_WRITE, IMAGE),
    r("GET", "/api/v1/machines", P::IMAGES_AUDIT, MACHINES),
    r("POST", "/api/v1/machines", P::MACHINES_MODIFY, MACHINES),
    r("GET", "/api/v1/machines/{id}", P::IMAGES_AUDIT, MACHINES),
    r("PATCH", "/api/v1/machines/{id}", P::MACHINES_MODIFY, MACHINES),
    r("DELETE", "/api/v1/machines/{id}", P::MACHINES_MODIFY, MACHINES),
    r("POST", "/api/v1/machines/{id}/accept", P::MACHINES_MODIFY, MACHINES),
    r("POST", "/api/v1/machines/{id}/boot", P::MACHINES_OPERATE, MACHINES),
    r("DELETE", "/api/v1/machines/{id}/boot", P::MACHINES_OPERATE, MACHINES),
    r("GET", "/api/v1/machines/{id}/history", P::IMAGES_AUDIT, MACHINES),
    // Network boot: a boot ROM cannot log in; the management OS proves itself with the
    // one-time boot token its kernel command line carries (checked by the handlers).
    r("GET", "/boot/{file}", NO, On::Public),
    r("GET", "/boot/files/{name}", NO, On::Public),
    r("GET", "/v1/boot/{mac}", NO, On::Public),
    r("GET", "/api/v1/boot/task", NO, On::Public),
    r("POST", "/api/v1/boot/report", NO, On::Public),
    r("GET", "/api/v1/boot/images/{uuid}/{version}/manifest", NO, On::Public),
    r("GET", "/api/v1/boot/images/{uuid}/{version}/raw", NO, On::Public),
    r("POST", "/api/v1/boot/images/{uuid}/{version}/ranges", NO, On::Public),
    r("POST", "/api/v1/boot/images/{uuid}/{version}/needed", NO, On::Public),
    r("POST", "/api/v1/boot/images/{uuid}/{version}/sync", NO, On::Public),
    // The bare-metal seed's control-server routes, kept so its scripts work unchanged.
    r("POST", "/user", P::SYS_ADMIN, SYSTEM),
    r("POST", "/user/{name}/image", IMAGE_WRITE, IMAGE),
    r("GET", "/image/{uuid}/{version}", IMAGE_READ, IMAGE),
    r("POST", "/image/{uuid}", IMAGE_WRITE, IMAGE),
    r("POST", "/machine/{mac}/boot", P::MACHINES_OPERATE, MACHINES),
    r("GET", "/machines", P::IMAGES_AUDIT, MACHINES),
    r("GET", "/machine/{mac}", P::IMAGES_AUDIT, MACHINES),
    // The web UI's pages (crate::ui): each shows what its rule's privileges allow.
    r("GET", "/", NO, On::Public),
    r("GET", "/login", NO, On::Public),
    r("GET", "/favicon.ico", NO, On::Public),
    r("GET", "/static/{name}", NO, On::Public),
    r("GET", "/dashboard", NO, On::Own),
    r("GET", "/jobs", P::JOBS_AUDIT, JOBS),
    r("GET", "/jobs/new", P::JOBS_MODIFY, JOBS),
    r("GET", "/jobs/{id}", P::JOBS_AUDIT, JOBS),
    r("GET", "/jobs/{id}/edit", P::JOBS_MODIFY, JOBS),
    r("GET", "/runs", P::JOBS_AUDIT, JOBS),
    r("GET", "/runs/{id}", P::JOBS_AUDIT, JOBS),
    r("GET", "/runs/{id}/log.txt", P::JOBS_AUDIT, JOBS),
    r("GET", "/snapshots", P::DATASTORE_AUDIT, REPO),
    r("GET", "/snapshots/{id}", P::DATASTORE_AUDIT, REPO),
    r("GET", "/snapshots/{id}/browse", P::DATASTORE_READ, REPO),
    r("GET", "/snapshots/{id}/diff", P::DATASTORE_READ, REPO),
    r("GET", "/snapshots/find", P::DATASTORE_READ, REPO),
    r("GET", "/repositories", P::DATASTORE_AUDIT, REPO),
    r("GET", "/agents", P::AGENTS_AUDIT, AGENTS),
    r("GET", "/bare-metal/images", P::IMAGES_AUDIT, IMAGE),
    r("GET", "/bare-metal/images/{uuid}", P::IMAGES_AUDIT, IMAGE),
    r("GET", "/bare-metal/machines", P::IMAGES_AUDIT, MACHINES),
    r("GET", "/bare-metal/machines/{id}", P::IMAGES_AUDIT, MACHINES),
    r("GET", "/logs", P::SYS_AUDIT, LOGS),
    r("GET", "/storage/disks", P::SYS_AUDIT, DISKS),
    r("GET", "/storage/tape", P::SYS_AUDIT, TAPE),
    r("GET", "/storage/iscsi", P::SYS_AUDIT, ISCSI),
    r("GET", "/storage/bacula", P::SYS_AUDIT, BACULA),
    r("GET", "/admin/users", P::SYS_ADMIN, SYSTEM),
    r("GET", "/admin/tokens", NO, On::Own),
    r("GET", "/admin/permissions", P::SYS_ADMIN, SYSTEM),
    r("GET", "/account", NO, On::Own),
    r("GET", "/admin/audit", P::SYS_ADMIN, SYSTEM),
    r("GET", "/admin/notifications", P::SYS_ADMIN, SYSTEM),
];

/// The rule for a request; HEAD falls back to GET's rule where HEAD has none of its own.
pub fn rule_for(method: &str, route: &str) -> Option<&'static Rule> {
    POLICY
        .iter()
        .find(|r| r.method == method && r.route == route)
        .or_else(|| (method == "HEAD").then(|| POLICY.iter().find(|r| r.method == "GET" && r.route == route)).flatten())
}

/// A user's grants: global role plus ACL entries, resolved per path.
#[derive(Debug, Clone)]
pub struct Grants {
    role: Role,
    entries: Arc<Vec<AclEntry>>,
}

/// Path of a repository object.
pub fn repository_path(name: &str) -> String {
    format!("/repositories/{name}")
}

/// Path of a pool object.
pub fn pool_path(name: &str) -> String {
    format!("/pools/{name}")
}

/// Check an ACL path: absolute, plain components of safe characters, a known top level.
pub fn validate_path(path: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let ok_chars = |p: &str| {
        !p.is_empty() && p.len() <= 128 && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let known = ["repositories", "pools", "jobs", "agents", "appliance", "system", "images", "machines"];
    if path == "/" {
        return Ok(());
    }
    if !path.starts_with('/') || parts.iter().any(|p| !ok_chars(p) || *p == "." || *p == "..") {
        return Err(format!("ACL path {path:?} must look like /repositories/NAME"));
    }
    if !known.contains(&parts[0]) {
        return Err(format!("ACL path {path:?}: the first part must be one of {}", known.join(", ")));
    }
    Ok(())
}

impl Grants {
    /// Grants of a user with `role` and these ACL entries (theirs only).
    pub fn new(role: Role, entries: Arc<Vec<AclEntry>>) -> Self {
        Self { role, entries }
    }

    /// Privileges on `path`: the global role, replaced at each level (from `/` down to the
    /// path) by the user's entries there — propagating ones on ancestors, any on the path.
    pub fn at(&self, path: &str) -> Privs {
        self.resolve(path).0
    }

    /// Privileges on an object known by several paths (a repository and the pool on it):
    /// the union of those decided by ACL entries, or the global role when none is.
    pub fn at_any(&self, paths: &[String]) -> Privs {
        let resolved: Vec<(Privs, bool)> = paths.iter().map(|p| self.resolve(p)).collect();
        if resolved.iter().any(|(_, specific)| *specific) {
            resolved.iter().filter(|(_, s)| *s).fold(Privs::NONE, |acc, (p, _)| acc.union(*p))
        } else {
            global_privs(self.role)
        }
    }

    fn resolve(&self, path: &str) -> (Privs, bool) {
        let mut privs = global_privs(self.role);
        let mut specific = false;
        let mut prefixes = vec!["/".to_string()];
        let mut acc = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            acc.push('/');
            acc.push_str(part);
            prefixes.push(acc.clone());
        }
        let last = prefixes.len() - 1;
        for (i, prefix) in prefixes.iter().enumerate() {
            let here: Vec<&AclEntry> =
                self.entries.iter().filter(|e| e.path == *prefix && (i == last || e.propagate)).collect();
            if !here.is_empty() {
                privs = here.iter().fold(Privs::NONE, |p, e| p.union(role_privs(&e.role).unwrap_or(Privs::NONE)));
                specific = i > 0;
            }
        }
        (privs, specific)
    }

    /// Holds any of `privs` on some object below `top` (or globally): the middleware's first
    /// check for rules whose object the handler resolves.
    pub fn anywhere_below(&self, top: &str, privs: Privs) -> bool {
        self.at(top).any_of(privs)
            || self.entries.iter().any(|e| {
                (e.path == "/" || e.path.starts_with(&format!("{top}/")) || e.path == top)
                    && role_privs(&e.role).unwrap_or(Privs::NONE).any_of(privs)
            })
    }
}

/// A role as listed by `GET /api/v1/acl/roles`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RoleInfo {
    /// Name.
    pub name: &'static str,
    /// Privileges.
    pub privileges: Vec<&'static str>,
    /// What it is for.
    pub description: &'static str,
}

/// Every role with its privileges.
pub fn roles() -> Vec<RoleInfo> {
    ROLES.iter().map(|(name, p, d)| RoleInfo { name, privileges: p.names(), description: d }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, role: &str, propagate: bool) -> AclEntry {
        AclEntry {
            id: 1,
            path: path.into(),
            user_id: 1,
            username: "u".into(),
            role: role.into(),
            propagate,
            created_at: 0,
        }
    }

    #[test]
    fn specific_entries_replace_inherited_privileges() {
        let g = Grants::new(
            Role::Viewer,
            Arc::new(vec![entry("/repositories/a", "reader", true), entry("/repositories", "no-access", false)]),
        );
        assert!(!g.at("/repositories/b").any_of(Privs::DATASTORE_READ));
        assert!(g.at("/repositories/b").any_of(Privs::DATASTORE_AUDIT), "non-propagating entry stays on its path");
        assert!(g.at("/repositories").is_none());
        assert!(g.at("/repositories/a").any_of(Privs::DATASTORE_READ));
        let op = Grants::new(Role::Operator, Arc::new(vec![entry("/repositories/secret", "no-access", true)]));
        assert!(!op.at("/repositories/secret").any_of(Privs::DATASTORE_AUDIT));
        assert!(op.at("/repositories/other").any_of(Privs::DATASTORE_READ));
        assert!(!Grants::new(Role::Viewer, Arc::default()).anywhere_below("/repositories", Privs::DATASTORE_READ));
        assert!(g.anywhere_below("/repositories", Privs::DATASTORE_READ));
    }

    #[test]
    fn paths_are_validated() {
        for ok in ["/", "/repositories/daily", "/appliance/tape", "/system"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "repositories",
            "/repositories/../system",
            "/nowhere",
            "/repositories//x",
            "/a\0b",
            "/repositories/x y",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }
}
