//! Trees: one directory listing per blob, nodes sorted by name.
//!
//! A tree blob's plaintext is JSON `{"nodes": [Node, …]}`. Names and link targets that are not
//! valid UTF-8 are stored as `{"hex": "…"}` so every Linux filename round-trips byte-exactly.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::id::Id;

/// What kind of filesystem object a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Regular file (also a backed-up block device or stdin stream).
    File,
    /// Directory; its children are in `subtree`.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Block device node (metadata only).
    Blockdev,
    /// Character device node.
    Chardev,
    /// Named pipe.
    Fifo,
    /// Unix socket (restored as nothing; recorded for completeness).
    Socket,
}

/// Bytes serialized as a string when UTF-8, else as `{"hex": …}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct RawName(pub Vec<u8>);

impl RawName {
    /// As an `OsStr` for filesystem calls.
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }
    /// Lossy text for display.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl From<&OsStr> for RawName {
    fn from(s: &OsStr) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Utf8(String),
    Raw { hex: String },
}

impl Serialize for RawName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => NameRepr::Utf8(t.to_string()).serialize(s),
            Err(_) => NameRepr::Raw { hex: hex::encode(&self.0) }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RawName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match NameRepr::deserialize(d)? {
            NameRepr::Utf8(s) => Ok(Self(s.into_bytes())),
            NameRepr::Raw { hex } => hex::decode(hex).map(Self).map_err(serde::de::Error::custom),
        }
    }
}

/// One extended attribute (POSIX ACLs are the `system.posix_acl_*` attributes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name.
    pub name: RawName,
    /// Value, hex.
    pub value: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One directory entry with its metadata and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Entry name (one path component).
    pub name: RawName,
    /// Object type.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name when resolvable, used first on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name when resolvable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Size in bytes (files: content length).
    #[serde(default)]
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Access time, nanoseconds since the epoch.
    pub atime_ns: i64,
    /// Status change time (not restorable; used to detect changes).
    pub ctime_ns: i64,
    /// Inode number on the source (change detection, hardlinks).
    #[serde(default)]
    pub inode: u64,
    /// Source device id (hardlinks, one-file-system).
    #[serde(default)]
    pub device_id: u64,
    /// Hard link count on the source.
    #[serde(default)]
    pub links: u64,
    /// Device number for block/char device nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<RawName>,
    /// File content: blob ids in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Directory listing blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Extended attributes including POSIX ACLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// The source had holes (or is a device image): restore zero runs as holes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sparse: bool,
}

/// Refuse a name that is not exactly one path component: empty, `.`, `..`, or holding `/` or
/// NUL would let a restore or a mount reach outside the directory the entry belongs to.
pub fn check_name(name: &RawName) -> Result<()> {
    let n = &name.0;
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        return Err(Error::corrupt(format!("unsafe file name {:?} in tree", name.display())));
    }
    Ok(())
}

/// A directory listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes.
    pub nodes: Vec<Node>,
}

impl Node {
    /// A regular file made by BAMS itself (a stream, an image version's parts): mode 0600,
    /// owned by root, all times `now_ns`.
    pub fn plain_file(name: &str, content: Vec<Id>, size: u64, now_ns: i64) -> Self {
        Self {
            name: RawName(name.as_bytes().to_vec()),
            kind: NodeKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            size,
            mtime_ns: now_ns,
            atime_ns: now_ns,
            ctime_ns: now_ns,
            inode: 0,
            device_id: 0,
            links: 1,
            rdev: None,
            link_target: None,
            content,
            subtree: None,
            xattrs: Vec::new(),
            sparse: false,
        }
    }
}

impl Tree {
    /// Serialize to the blob plaintext.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Parse a tree blob's plaintext. A tree is untrusted input (anyone holding the key, or a
    /// damaged writer, can craft one): every name must be one safe path component and names
    /// must be strictly increasing, so no tree can hold two entries of the same name (which a
    /// restore would apply one over the other, e.g. a symlink and then a directory through it).
    pub fn decode(data: &[u8]) -> Result<Self> {
        let tree: Self = serde_json::from_slice(data)?;
        for (i, node) in tree.nodes.iter().enumerate() {
            check_name(&node.name)?;
            if i > 0 && tree.nodes[i - 1].name >= node.name {
                return Err(Error::corrupt(format!("tree lists {:?} twice or out of order", node.name.display())));
            }
        }
        Ok(tree)
    }

    /// Entry by exact name (nodes are sorted, so binary search).
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.0.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }

    /// Sort nodes by name; must hold before encoding.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_roundtrip() {
        let name = RawName(vec![b'a', 0xff, b'b']);
        let json = serde_json::to_string(&name).unwrap();
        assert!(json.contains("hex"));
        assert_eq!(serde_json::from_str::<RawName>(&json).unwrap(), name);
        let plain = RawName(b"plain".to_vec());
        assert_eq!(serde_json::to_string(&plain).unwrap(), "\"plain\"");
    }
}
