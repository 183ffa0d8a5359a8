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

/// About how many nodes a tree's plaintext holds, so its list is allocated once instead of
/// growing by doubling while parsed (a backup holds one parent tree per open directory level;
/// for a directory of 18,000 entries the doubling cost 13 MB at its peak instead of 5).
/// Every node starts with `{"name":` — a quote inside a JSON string is escaped, so the bytes
/// cannot occur inside a name — and other objects that start so only raise the estimate. A
/// node takes at least 64 bytes of plaintext, which bounds the estimate for crafted input.
fn node_count_hint(plaintext: &[u8]) -> usize {
    memchr::memmem::find_iter(plaintext, b"{\"name\":").count().min(plaintext.len() / 64)
}

/// Parses `{"nodes": [...]}` with the node list allocated for `nodes_hint` entries.
struct TreeSeed {
    nodes_hint: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for TreeSeed {
    type Value = Tree;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Tree, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TreeSeed {
    type Value = Tree;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a tree object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Tree, A::Error> {
        let mut nodes = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "nodes" {
                map.next_value::<serde::de::IgnoredAny>()?;
            } else if nodes.is_some() {
                return Err(serde::de::Error::duplicate_field("nodes"));
            } else {
                nodes = Some(map.next_value_seed(NodesSeed { hint: self.nodes_hint })?);
            }
        }
        let nodes = nodes.ok_or_else(|| serde::de::Error::missing_field("nodes"))?;
        Ok(Tree { nodes })
    }
}

/// A node list allocated for `hint` entries up front.
struct NodesSeed {
    hint: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for NodesSeed {
    type Value = Vec<Node>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Vec<Node>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NodesSeed {
    type Value = Vec<Node>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of nodes")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<Node>, A::Error> {
        let mut nodes = Vec::with_capacity(self.hint);
        while let Some(node) = seq.next_element()? {
            nodes.push(node);
        }
        Ok(nodes)
    }
}

impl Tree {
    /// Serialize to the blob plaintext, into a buffer sized once from the nodes (growing by
    /// doubling, a large directory's encoding held its old and new copies at once).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.encoded_len_estimate());
        serde_json::to_writer(&mut out, self)?;
        Ok(out)
    }

    /// A slight overestimate of the plaintext's length: field names, numbers and owner names
    /// take under 300 bytes a node, a name at most six bytes a byte (`\u0001`), an id 67.
    fn encoded_len_estimate(&self) -> usize {
        let node = |n: &Node| {
            let names = 6 * (n.name.0.len() + n.link_target.as_ref().map_or(0, |t| t.0.len()));
            let owners = 6 * (n.user.as_ref().map_or(0, String::len) + n.group.as_ref().map_or(0, String::len));
            let xattrs: usize = n.xattrs.iter().map(|x| 6 * x.name.0.len() + x.value.len() + 32).sum();
            300 + names + owners + 67 * (n.content.len() + usize::from(n.subtree.is_some())) + xattrs
        };
        16 + self.nodes.iter().map(node).sum::<usize>()
    }

    /// Parse a tree blob's plaintext. A tree is untrusted input (anyone holding the key, or a
    /// damaged writer, can craft one): every name must be one safe path component and names
    /// must be strictly increasing, so no tree can hold two entries of the same name (which a
    /// restore would apply one over the other, e.g. a symlink and then a directory through it).
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut parser = serde_json::Deserializer::from_slice(data);
        let seed = TreeSeed { nodes_hint: node_count_hint(data) };
        let mut tree = serde::de::DeserializeSeed::deserialize(seed, &mut parser)?;
        parser.end()?;
        // The hint may count an attribute object as a node: give back the slack.
        tree.nodes.shrink_to_fit();
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
        self.position(name).map(|i| &self.nodes[i])
    }

    /// Entry by exact name, to take parts out of (a backup reusing its parent snapshot's).
    pub fn find_mut(&mut self, name: &[u8]) -> Option<&mut Node> {
        self.position(name).map(|i| &mut self.nodes[i])
    }

    /// Where the entry of this exact name is in `nodes`.
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.name.0.as_slice().cmp(name)).ok()
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

    fn file(name: &str) -> Node {
        Node::plain_file(name, Vec::new(), 0, 1)
    }

    #[test]
    fn decode_allocates_the_node_list_once_and_exactly() {
        let mut tree = Tree { nodes: (0..1000).map(|i| file(&format!("f{i:04}"))).collect() };
        // Attribute objects also start with {"name": and names may hold the same bytes.
        tree.nodes[3].xattrs = vec![Xattr { name: RawName(b"user.a".to_vec()), value: "00".into() }];
        tree.nodes[4].name = RawName(br#"f0003{"name":"#.to_vec());
        // The longest a node encodes: every number at its widest, control bytes in names.
        let widest = &mut tree.nodes[5];
        widest.name = RawName(b"f0005\x01\x02\x03".to_vec());
        (widest.mode, widest.uid, widest.gid) = (u32::MAX, u32::MAX, u32::MAX);
        (widest.user, widest.group) = (Some("u".repeat(32)), Some("\u{1}".repeat(32)));
        (widest.size, widest.inode, widest.device_id, widest.links) = (u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        (widest.mtime_ns, widest.atime_ns, widest.ctime_ns) = (i64::MIN, i64::MIN, i64::MIN);
        (widest.rdev, widest.sparse) = (Some(u64::MAX), true);
        widest.link_target = Some(RawName(vec![0xff; 40]));
        widest.content = vec![Id::hash_of(b"a"), Id::hash_of(b"b")];
        widest.subtree = Some(Id::hash_of(b"c"));
        let plaintext = tree.encode().unwrap();
        assert_eq!(node_count_hint(&plaintext), 1001);
        let decoded = Tree::decode(&plaintext).unwrap();
        assert_eq!(decoded, tree);
        assert_eq!(decoded.nodes.capacity(), 1000);
        // The encoding never outgrows its first buffer.
        assert_eq!(plaintext.capacity(), tree.encoded_len_estimate());
        let widest = Tree { nodes: vec![tree.nodes[5].clone()] };
        assert_eq!(widest.encode().unwrap().capacity(), widest.encoded_len_estimate());
    }

    #[test]
    fn decode_checks_the_object_shape() {
        assert_eq!(Tree::decode(br#"{"nodes":[],"later":{"x":[1]}}"#).unwrap(), Tree::default());
        for bad in [&br#"{}"#[..], br#"{"nodes":[],"nodes":[]}"#, br#"[]"#, br#"{"nodes":[]} x"#, br#"{"nodes":{}}"#] {
            assert!(Tree::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // A crafted plaintext of nothing but node openings cannot reserve more than its size.
        let crafted = br#"{"name":"#.repeat(10_000);
        assert!(node_count_hint(&crafted) <= crafted.len() / 64);
    }
}
