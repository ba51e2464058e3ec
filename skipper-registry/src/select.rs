//! Choosing tags: which match a stage's pattern, which is newest, which are new since last poll.
//!
//! # The ordering rule
//!
//! [`select_tags`] keeps the tags that match the [`TagPattern`] and orders them newest first:
//!
//! 1. **Version tags first, highest version first.** A tag is a version when, after an optional
//!    `v`/`V`, it is a semantic version: `1.2.3`, `v1.10.0`, `1.2.3-rc.1`, `1.2.3+build.5`.
//!    Shortened versions are padded with zeros: `v1.2` is 1.2.0 and `v1` is 1.0.0 (also with a
//!    pre-release: `1.25-alpine` is 1.25.0-alpine). So `v1.10.0` > `v1.9.3`, and a pre-release
//!    ranks below its release (`v2.0.0-rc.1` < `v2.0.0`). Numeric parts with leading zeros
//!    (`1.02`), four-part versions (`1.2.3.4`) and anything else are not versions.
//!    Tags of equal version (`v1.2` and `1.2.0`) keep the later one in registry order first.
//! 2. **Then every other tag, in registry order reversed**, on the assumption that a registry
//!    lists the tag pushed last, last.
//!
//! Caveat for rule 2: the CNCF distribution registry (and Docker Hub, GHCR, Gitea) list tags in
//! *lexical* order, not push order. For non-version tags, "newest" is then only right when the
//! tags sort by time (`dev-20240611-1532`, `build-000123`); a pattern like `dev-<git sha>`
//! cannot be ordered from the listing alone. Such stages should rely on webhooks, or on
//! [`diff_tags`], which finds new tags (and re-pushed ones) whatever their order.
//!
//! Pre-release variants such as `1.25-alpine` sort below `1.25.0`; a stage that follows a
//! variant should use a pattern that matches only it (`*-alpine`).

use std::cmp::Ordering;
use std::collections::HashMap;

use semver::Version;
use skipper_core::{SeenTag, TagPattern};

/// Parse a tag as a version per the [module rule](self): an optional `v`/`V`, then a semantic
/// version whose missing minor and patch parts count as 0.
pub fn parse_version(tag: &str) -> Option<Version> {
    let rest = tag
        .strip_prefix('v')
        .or_else(|| tag.strip_prefix('V'))
        .unwrap_or(tag);
    let split = rest.find(['-', '+']).unwrap_or(rest.len());
    let (core, suffix) = rest.split_at(split);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    for p in &parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
    }
    let mut full = parts.join(".");
    for _ in parts.len()..3 {
        full.push_str(".0");
    }
    full.push_str(suffix);
    Version::parse(&full).ok()
}

/// The tags that match `pattern`, newest first (see the [module docs](self) for the rule).
/// `tags` is in registry order, as [`Registry::list_tags`](skipper_core::Registry::list_tags)
/// returns it. Duplicates are dropped.
pub fn select_tags<'a>(tags: &'a [String], pattern: &TagPattern) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    let mut versions: Vec<(Version, usize, &str)> = Vec::new();
    let mut others: Vec<(usize, &str)> = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        if !pattern.matches(tag) || !seen.insert(tag.as_str()) {
            continue;
        }
        match parse_version(tag) {
            Some(v) => versions.push((v, i, tag)),
            None => others.push((i, tag)),
        }
    }
    versions.sort_by(|(va, ia, _), (vb, ib, _)| cmp_version(vb, va).then(ib.cmp(ia)));
    others.sort_by(|(ia, _), (ib, _)| ib.cmp(ia));
    versions
        .into_iter()
        .map(|(_, _, t)| t)
        .chain(others.into_iter().map(|(_, t)| t))
        .collect()
}

/// The newest tag that matches `pattern`, if any: the first of [`select_tags`].
pub fn newest_tag<'a>(tags: &'a [String], pattern: &TagPattern) -> Option<&'a str> {
    select_tags(tags, pattern).into_iter().next()
}

/// Semantic-version precedence, with build metadata breaking ties so the order is total.
fn cmp_version(a: &Version, b: &Version) -> Ordering {
    a.cmp_precedence(b).then_with(|| a.build.cmp(&b.build))
}

/// A tag as observed in the registry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTag {
    /// The tag.
    pub tag: String,
    /// Its manifest digest, if it was resolved.
    pub digest: Option<String>,
}

impl ObservedTag {
    /// An observed tag.
    pub fn new(tag: impl Into<String>, digest: Option<String>) -> Self {
        Self {
            tag: tag.into(),
            digest,
        }
    }
}

/// A known tag that now points at another manifest (a mutable tag such as `latest` or `dev`
/// re-pushed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedTag {
    /// The tag.
    pub tag: String,
    /// The digest remembered.
    pub previous: String,
    /// The digest now.
    pub current: String,
}

/// What changed since the last poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagDiff {
    /// Tags never seen before, in the order observed (pass them newest first, from
    /// [`select_tags`], to get them newest first).
    pub new: Vec<ObservedTag>,
    /// Seen tags whose digest changed.
    pub changed: Vec<ChangedTag>,
}

impl TagDiff {
    /// Nothing new and nothing changed.
    pub fn is_empty(&self) -> bool {
        self.new.is_empty() && self.changed.is_empty()
    }
}

/// Compare what the registry holds now with what was remembered (the
/// [`SeenTag`]s of one repository, from `Store::list_seen_tags`).
///
/// - a tag with no `SeenTag` is **new**;
/// - a seen tag is **changed** when both the remembered and the observed digest are known and
///   differ;
/// - a tag whose digest is unknown on either side (not resolved this time, or never recorded)
///   is not reported as changed: there is nothing to compare. The caller records the digest it
///   learns so the next poll can compare.
///
/// Seen tags that are no longer in the registry are ignored (deleting a tag deploys nothing).
pub fn diff_tags(observed: &[ObservedTag], seen: &[SeenTag]) -> TagDiff {
    let seen: HashMap<&str, Option<&str>> = seen
        .iter()
        .map(|s| (s.tag.as_str(), s.digest.as_deref()))
        .collect();
    let mut diff = TagDiff::default();
    let mut done = std::collections::HashSet::new();
    for o in observed {
        if !done.insert(o.tag.as_str()) {
            continue;
        }
        match seen.get(o.tag.as_str()) {
            None => diff.new.push(o.clone()),
            Some(Some(previous)) => {
                if let Some(current) = o.digest.as_deref().filter(|c| c != previous) {
                    diff.changed.push(ChangedTag {
                        tag: o.tag.clone(),
                        previous: (*previous).to_owned(),
                        current: current.to_owned(),
                    });
                }
            }
            Some(None) => {}
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn all() -> TagPattern {
        TagPattern::new("*").unwrap()
    }

    #[test]
    fn versions_parse_with_prefix_and_padding() {
        let v = |s: &str| parse_version(s).map(|v| v.to_string());
        assert_eq!(v("v1.2"), Some("1.2.0".into()));
        assert_eq!(v("1"), Some("1.0.0".into()));
        assert_eq!(v("V3.4.5"), Some("3.4.5".into()));
        assert_eq!(v("1.2.3-rc.1+b5"), Some("1.2.3-rc.1+b5".into()));
        assert_eq!(v("1.25-alpine"), Some("1.25.0-alpine".into()));
        for not in [
            "latest", "dev-abc", "1.2.3.4", "1.02", "v", "", "1..2", "x1.2", "vv1",
        ] {
            assert_eq!(parse_version(not), None, "{not}");
        }
    }

    #[test]
    fn semver_order_then_others_reversed() {
        let t = tags(&[
            "latest",
            "v1.9.3",
            "v1.10.0",
            "dev-a",
            "v1.2",
            "v2.0.0-rc.1",
            "v2.0.0",
            "dev-b",
            "v1.10.0-beta.2",
        ]);
        assert_eq!(
            select_tags(&t, &all()),
            vec![
                "v2.0.0",
                "v2.0.0-rc.1",
                "v1.10.0",
                "v1.10.0-beta.2",
                "v1.9.3",
                "v1.2",
                "dev-b",
                "dev-a",
                "latest"
            ]
        );
        let v1 = TagPattern::new("v1.*").unwrap();
        assert_eq!(newest_tag(&t, &v1), Some("v1.10.0"));
        let dev = TagPattern::new("dev-*").unwrap();
        assert_eq!(select_tags(&t, &dev), vec!["dev-b", "dev-a"]);
        assert_eq!(newest_tag(&t, &TagPattern::new("nothing").unwrap()), None);
    }

    #[test]
    fn equal_versions_prefer_the_later_listed() {
        let t = tags(&["1.2.0", "v1.2", "1.2.0"]);
        assert_eq!(select_tags(&t, &all()), vec!["v1.2", "1.2.0"]);
    }

    fn seen(tag: &str, digest: Option<&str>) -> SeenTag {
        let now = chrono::Utc::now();
        SeenTag {
            repository: "localhost:5000/team/web".into(),
            tag: tag.into(),
            digest: digest.map(str::to_owned),
            first_seen: now,
            updated_at: now,
        }
    }

    #[test]
    fn diff_finds_new_and_repushed_tags() {
        let observed = vec![
            ObservedTag::new("v3", Some("sha256:c".into())),
            ObservedTag::new("latest", Some("sha256:new".into())),
            ObservedTag::new("v2", Some("sha256:b".into())),
            ObservedTag::new("dev", None),
            ObservedTag::new("v1", Some("sha256:a".into())),
            ObservedTag::new("v3", Some("sha256:c".into())),
        ];
        let known = vec![
            seen("latest", Some("sha256:old")),
            seen("v2", Some("sha256:b")),
            seen("dev", Some("sha256:d")),
            seen("v1", None),
            seen("gone", Some("sha256:z")),
        ];
        let diff = diff_tags(&observed, &known);
        assert_eq!(
            diff.new,
            vec![ObservedTag::new("v3", Some("sha256:c".into()))]
        );
        assert_eq!(
            diff.changed,
            vec![ChangedTag {
                tag: "latest".into(),
                previous: "sha256:old".into(),
                current: "sha256:new".into()
            }]
        );
        assert!(!diff.is_empty());
        assert!(diff_tags(&[], &known).is_empty());
    }

    fn tag_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..4, 0u64..12, 0u64..12, any::<bool>())
                .prop_map(|(a, b, c, v)| format!("{}{a}.{b}.{c}", if v { "v" } else { "" })),
            (0u64..4, 0u64..12).prop_map(|(a, b)| format!("v{a}.{b}")),
            (0u64..4, 0u64..3, 0u64..3).prop_map(|(a, b, r)| format!("{a}.{b}.0-rc.{r}")),
            "[a-z]{1,6}(-[a-z0-9]{1,4})?",
        ]
    }

    proptest! {
        #[test]
        fn selection_is_an_ordered_permutation(list in prop::collection::vec(tag_strategy(), 0..30)) {
            let out = select_tags(&list, &all());
            let mut unique: Vec<&str> = list.iter().map(String::as_str).collect();
            unique.sort_unstable();
            unique.dedup();
            let mut sorted_out = out.clone();
            sorted_out.sort_unstable();
            prop_assert_eq!(&sorted_out, &unique);
            // Versions first, non-increasing; then the rest.
            let first_other = out.iter().position(|t| parse_version(t).is_none()).unwrap_or(out.len());
            prop_assert!(out[first_other..].iter().all(|t| parse_version(t).is_none()));
            for pair in out[..first_other].windows(2) {
                let (a, b) = (parse_version(pair[0]).unwrap(), parse_version(pair[1]).unwrap());
                prop_assert!(a.cmp_precedence(&b) != Ordering::Less, "{} before {}", pair[0], pair[1]);
            }
            prop_assert_eq!(newest_tag(&list, &all()), out.first().copied());
        }

        #[test]
        fn diff_new_is_exactly_the_unseen(
            observed in prop::collection::vec("[a-d]{1,2}", 0..12),
            known in prop::collection::vec("[a-d]{1,2}", 0..12),
        ) {
            let obs: Vec<ObservedTag> = observed.iter().map(|t| ObservedTag::new(t.clone(), Some(format!("sha256:{t}")))).collect();
            let seen_tags: Vec<SeenTag> = known.iter().map(|t| seen(t, Some(&format!("sha256:{t}")))).collect();
            let diff = diff_tags(&obs, &seen_tags);
            prop_assert!(diff.changed.is_empty());
            for n in &diff.new {
                prop_assert!(!known.contains(&n.tag));
            }
            for t in &observed {
                if !known.contains(t) {
                    prop_assert!(diff.new.iter().any(|n| &n.tag == t));
                }
            }
        }

        #[test]
        fn parse_version_never_panics(s in "\\PC{0,30}") {
            let _ = parse_version(&s);
        }
    }
}
