//! Tag patterns (globs, compiled once with globset).

use globset::{Glob, GlobMatcher};

use crate::error::{Error, Result};

/// A compiled tag glob such as `dev-*`, `v*` or `v1.*`.
///
/// `*` matches any run of characters (tags have no `/`), `?` one character, `[abc]` a class.
#[derive(Debug, Clone)]
pub struct TagPattern {
    source: String,
    matcher: GlobMatcher,
}

impl TagPattern {
    /// Compile `pattern`.
    pub fn new(pattern: &str) -> Result<Self> {
        if pattern.is_empty() {
            return Err(Error::InvalidName {
                what: "tag pattern",
                value: String::new(),
                reason: "it is empty; use \"*\" to match every tag".into(),
            });
        }
        let glob = Glob::new(pattern).map_err(|e| Error::InvalidName {
            what: "tag pattern",
            value: pattern.to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(Self {
            source: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Whether `tag` matches.
    pub fn matches(&self, tag: &str) -> bool {
        self.matcher.is_match(tag)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_tags() {
        let dev = TagPattern::new("dev-*").unwrap();
        assert!(dev.matches("dev-abc123"));
        assert!(!dev.matches("v1.0.0"));
        assert!(!dev.matches("xdev-1"));
        let v1 = TagPattern::new("v1.*").unwrap();
        assert!(v1.matches("v1.2.3"));
        assert!(!v1.matches("v10.0"));
        assert!(TagPattern::new("*").unwrap().matches("latest"));
        assert!(TagPattern::new("v[0-9]*").unwrap().matches("v2"));
    }

    #[test]
    fn bad_patterns_are_rejected_clearly() {
        let e = TagPattern::new("v[").unwrap_err().to_string();
        assert!(e.contains("tag pattern"), "{e}");
        assert!(TagPattern::new("").is_err());
    }
}
