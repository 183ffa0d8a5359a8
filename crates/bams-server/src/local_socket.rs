//! The API on a unix socket (`socket:` in the config): how the Cockpit plugin reaches the
//! server. Cockpit logs a person in with PAM and runs its bridge as that Linux user; the
//! bridge connects here, and the kernel tells us who is at the other end (`SO_PEERCRED`), so
//! no password or token crosses. Root is an admin; members of the configured groups
//! (`bams-admin`, `bams-operator`, `bams-viewer`, supplementary groups included) get those
//! roles; anyone else is refused by the auth middleware. The socket is connectable by anyone
//! (0666): the check is the peer's identity, not the file's mode.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use axum::Router;
use bams_catalog::Role;
use nix::unistd::{Gid, Group, Uid, User};
use tracing::{info, warn};

use crate::config::SocketConfig;

/// Who is at the other end of a socket connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Their uid.
    pub uid: u32,
    /// Their Linux user name (the uid as text when it has none).
    pub username: String,
    /// The role their groups give them, if any.
    pub role: Option<Role>,
}

/// The role of Linux user `uid` (primary group `gid`) under `cfg`: the strongest of its
/// groups' roles.
pub fn peer(uid: u32, gid: u32, cfg: &SocketConfig) -> Peer {
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let username = user.as_ref().map_or_else(|| uid.to_string(), |u| u.name.clone());
    if uid == 0 {
        return Peer { uid, username, role: Some(Role::Admin) };
    }
    let groups: Vec<String> = match user.as_ref().and_then(|u| CString::new(u.name.clone()).ok()) {
        Some(name) => nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).unwrap_or_default(),
        None => vec![Gid::from_raw(gid)],
    }
    .into_iter()
    .filter_map(|g| Group::from_gid(g).ok().flatten().map(|g| g.name))
    .collect();
    let has = |name: &str| !name.is_empty() && groups.iter().any(|g| g == name);
    let role = if has(&cfg.admin_group) {
        Some(Role::Admin)
    } else if has(&cfg.operator_group) {
        Some(Role::Operator)
    } else if has(&cfg.viewer_group) {
        Some(Role::Viewer)
    } else {
        None
    };
    Peer { uid, username, role }
}

/// A bound socket, removed again when dropped.
pub struct LocalSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `path`: make its directory, replace a socket left by a previous run (never another
/// kind of file), and let anyone connect.
pub fn bind(path: &Path) -> Result<LocalSocket> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing the old socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket; not replacing it", path.display()),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("making {} connectable", path.display()))?;
    Ok(LocalSocket { listener, path: path.to_path_buf() })
}

impl LocalSocket {
    /// Serve `router` on the socket until `stop` resolves; each request carries its
    /// connection's [`Peer`].
    pub async fn serve(self, router: Router, cfg: SocketConfig, stop: impl std::future::Future<Output = ()>) {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        info!(path = %self.path.display(), "serving the API on the local socket");
        tokio::pin!(stop);
        loop {
            let stream = tokio::select! {
                () = &mut stop => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "accepting on the local socket");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(cred) = stream.peer_cred() else { continue };
            let who = peer(cred.uid(), cred.gid(), &cfg);
            let app = router.clone().layer(axum::Extension(who));
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_an_admin_and_strangers_have_no_role() {
        let cfg = SocketConfig::default();
        assert_eq!(peer(0, 0, &cfg).role, Some(Role::Admin));
        assert_eq!(peer(0, 0, &cfg).username, "root");
        // A uid no one has: no name, no groups, no role.
        let nobody = peer(3_999_999, 3_999_999, &cfg);
        assert_eq!(nobody.role, None);
        assert_eq!(nobody.username, "3999999");
        // Group names decide: root's own group `root` made the viewer group.
        let cfg = SocketConfig { viewer_group: "root".into(), ..SocketConfig::default() };
        let u = User::from_name("daemon").ok().flatten().expect("the daemon user exists on Debian");
        assert_eq!(peer(u.uid.as_raw(), 0, &cfg).role, Some(Role::Viewer), "gid 0 is the group root");
    }
}
