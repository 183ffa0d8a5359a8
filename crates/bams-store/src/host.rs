//! Who and where we run: recorded in snapshots, locks and key slots.

/// This machine's host name, or `unknown`.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

/// The current user's name, or the numeric uid.
pub fn username() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name)
}

/// `user@host` for audit fields.
pub fn user_at_host() -> String {
    format!("{}@{}", username(), hostname())
}
