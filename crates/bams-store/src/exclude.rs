//! Exclude patterns (`--exclude`, `--exclude-file`).
//!
//! A pattern without `/` matches a file name anywhere (`*.tmp`, `node_modules`); a pattern
//! with `/` matches the absolute path (`/home/*/.cache`). `**` crosses directories. A matched
//! directory is skipped with everything below it.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Compiled exclude patterns.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

fn glob(p: &str) -> Result<Glob> {
    GlobBuilder::new(p)
        .literal_separator(true)
        .build()
        .map_err(|e| Error::invalid(format!("bad exclude pattern {p:?}: {e}")))
}

impl PathMatcher {
    /// Compile patterns; blank lines and `#` comments are ignored (for exclude files).
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let mut empty = true;
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty() && !p.starts_with('#')) {
            empty = false;
            let p = p.trim_end_matches('/');
            if p.contains('/') {
                paths.add(glob(p)?);
            } else {
                names.add(glob(p)?);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::invalid(format!("bad exclude patterns: {e}")));
        Ok(Self { names: build(names)?, paths: build(paths)?, empty })
    }

    /// Whether `path` (absolute) is excluded.
    pub fn matches(&self, path: &Path, _is_dir: bool) -> bool {
        if self.empty {
            return false;
        }
        if path.file_name().is_some_and(|n| self.names.is_match(n)) {
            return true;
        }
        self.paths.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let e = PathMatcher::new(&["*.tmp".into(), "/home/*/.cache".into(), "# comment".into(), "".into()]).unwrap();
        assert!(e.matches(Path::new("/a/b/x.tmp"), false));
        assert!(!e.matches(Path::new("/a/b/x.txt"), false));
        assert!(e.matches(Path::new("/home/bob/.cache"), true));
        assert!(!e.matches(Path::new("/home/bob/x/.cache2"), true));
        assert!(PathMatcher::new(&["[".into()]).is_err());
    }
}
