//! Subdomains by convention.
//!
//! - the stage's current version: `stage-{stage}-{project}` (the pattern is configurable), or the
//!   stage's own `subdomain` (e.g. `launcher` for production);
//! - each instance: `{stage label}-{tag}`, e.g. `stage-dev-app-abc123`.
//!
//! Tags are sanitised for DNS: lower-case, every character outside `[a-z0-9-]` becomes `-`, runs of
//! `-` collapse, and a label is at most 63 characters. When a label must be cut, a short hash of the
//! full, unsanitised input is appended, so two tags never share a truncated label.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The default stage label pattern.
pub const DEFAULT_PATTERN: &str = "stage-{stage}-{project}";

const MAX_LABEL: usize = 63;
const HASH_LEN: usize = 6;

/// Check a single DNS label: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn validate_label(label: &str) -> Result<()> {
    let err = |reason: &str| Error::InvalidName {
        what: "subdomain",
        value: label.to_owned(),
        reason: reason.to_owned(),
    };
    if label.is_empty() {
        return Err(err("it is empty"));
    }
    if label.len() > MAX_LABEL {
        return Err(err("a DNS label is at most 63 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("use only lower-case letters, digits and '-'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(err("a DNS label must not start or end with '-'"));
    }
    Ok(())
}

/// Check a domain name (`example.com`, `localhost`).
pub fn validate_domain(domain: &str) -> Result<()> {
    if domain.is_empty() || domain.len() > 253 {
        return Err(Error::InvalidName {
            what: "domain",
            value: domain.to_owned(),
            reason: "a domain is 1-253 characters".into(),
        });
    }
    for label in domain.split('.') {
        validate_label(label).map_err(|e| match e {
            Error::InvalidName { reason, .. } => Error::InvalidName {
                what: "domain",
                value: domain.to_owned(),
                reason: format!("label {label:?}: {reason}"),
            },
            other => other,
        })?;
    }
    Ok(())
}

/// Check a subdomain pattern: it may use `{stage}` and `{project}` and nothing else in braces, and
/// must produce a valid label for sample names.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    let stripped = pattern.replace("{stage}", "").replace("{project}", "");
    if stripped.contains('{') || stripped.contains('}') {
        return Err(Error::InvalidName {
            what: "subdomain pattern",
            value: pattern.to_owned(),
            reason: "only {stage} and {project} may be used".into(),
        });
    }
    if !pattern.contains("{project}") {
        return Err(Error::InvalidName {
            what: "subdomain pattern",
            value: pattern.to_owned(),
            reason: "it must contain {project}, or two projects would share a domain".into(),
        });
    }
    validate_label(&pattern.replace("{stage}", "s").replace("{project}", "p")).map_err(
        |e| match e {
            Error::InvalidName { reason, .. } => Error::InvalidName {
                what: "subdomain pattern",
                value: pattern.to_owned(),
                reason,
            },
            other => other,
        },
    )
}

/// Turn arbitrary text (a tag) into label characters: lower-case, `[^a-z0-9]` → `-`, collapsed,
/// trimmed of `-`.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(digest)[..HASH_LEN].to_owned()
}

/// Join `parts` into one label, sanitised. When the result is longer than 63 characters (or
/// `force_hash` is set), it is cut and `-{hash}` of the unsanitised input is appended.
pub fn join_label(parts: &[&str], force_hash: bool) -> String {
    let raw = parts.join("-");
    let label = sanitize(&raw);
    if label.len() <= MAX_LABEL && !force_hash && !label.is_empty() {
        return label;
    }
    let hash = short_hash(&raw);
    let keep = MAX_LABEL - HASH_LEN - 1;
    let cut = label[..label.len().min(keep)].trim_end_matches('-');
    if cut.is_empty() {
        hash
    } else {
        format!("{cut}-{hash}")
    }
}

/// How domains are built for a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainScheme {
    /// The base domain (`example.com`).
    pub domain: String,
    /// The stage label pattern (default [`DEFAULT_PATTERN`]).
    pub pattern: String,
}

impl Default for DomainScheme {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            pattern: DEFAULT_PATTERN.into(),
        }
    }
}

impl DomainScheme {
    /// The label for a stage's current version: its custom `subdomain`, or the pattern filled in.
    pub fn stage_label(&self, project: &str, stage: &str, custom: Option<&str>) -> String {
        match custom {
            Some(custom) => custom.to_owned(),
            None => {
                let filled = self
                    .pattern
                    .replace("{stage}", stage)
                    .replace("{project}", project);
                join_label(&[&filled], false)
            }
        }
    }

    /// The stage's domain (`stage-dev-app.example.com`, or `launcher.example.com`).
    pub fn stage_domain(&self, project: &str, stage: &str, custom: Option<&str>) -> String {
        format!(
            "{}.{}",
            self.stage_label(project, stage, custom),
            self.domain
        )
    }

    /// An instance's own domain: the stage label (the pattern, even for a custom-subdomain stage)
    /// plus the sanitised tag. `force_hash` makes it unique when two tags sanitise alike.
    pub fn instance_domain(
        &self,
        project: &str,
        stage: &str,
        tag: &str,
        force_hash: bool,
    ) -> String {
        let base = self.stage_label(project, stage, None);
        format!("{}.{}", join_label(&[&base, tag], force_hash), self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scheme() -> DomainScheme {
        DomainScheme {
            domain: "example.com".into(),
            pattern: DEFAULT_PATTERN.into(),
        }
    }

    #[test]
    fn conventional_domains() {
        let s = scheme();
        assert_eq!(
            s.stage_domain("web-app", "dev", None),
            "stage-dev-web-app.example.com"
        );
        assert_eq!(
            s.stage_domain("web-app", "prod", Some("launcher")),
            "launcher.example.com"
        );
        assert_eq!(
            s.instance_domain("app", "dev", "abc123", false),
            "stage-dev-app-abc123.example.com"
        );
        assert_eq!(
            s.instance_domain("web-app", "rel", "v1.2.0", false),
            "stage-rel-web-app-v1-2-0.example.com"
        );
        assert_eq!(
            s.instance_domain("app", "dev", "Feature_X", false),
            "stage-dev-app-feature-x.example.com"
        );
    }

    #[test]
    fn long_tags_are_cut_with_a_hash_and_never_collide() {
        let s = scheme();
        let a = "a".repeat(80) + "-one";
        let b = "a".repeat(80) + "-two";
        let da = s.instance_domain("app", "dev", &a, false);
        let db = s.instance_domain("app", "dev", &b, false);
        assert_ne!(da, db);
        for d in [&da, &db] {
            let label = d.split('.').next().unwrap();
            assert!(label.len() <= 63, "{label}");
            validate_label(label).unwrap();
        }
    }

    #[test]
    fn force_hash_separates_tags_that_sanitise_alike() {
        let s = scheme();
        let a = s.instance_domain("app", "rel", "v1.0", true);
        let b = s.instance_domain("app", "rel", "v1_0", true);
        assert_ne!(a, b);
    }

    #[test]
    fn validation() {
        validate_label("launcher").unwrap();
        assert!(validate_label("Launcher").is_err());
        assert!(validate_label("-x").is_err());
        assert!(validate_label(&"a".repeat(64)).is_err());
        validate_domain("example.com").unwrap();
        assert!(validate_domain("example..com").is_err());
        validate_pattern("stage-{stage}-{project}").unwrap();
        validate_pattern("{project}-{stage}").unwrap();
        assert!(validate_pattern("{stage}").is_err());
        assert!(validate_pattern("{project}-{tag}").is_err());
        assert!(validate_pattern("{project}_x").is_err());
    }

    proptest! {
        #[test]
        fn every_instance_label_is_a_valid_dns_label(
            project in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            stage in "[a-z0-9]{1,10}",
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
            force in any::<bool>(),
        ) {
            let d = scheme().instance_domain(&project, &stage, &tag, force);
            let label = d.strip_suffix(".example.com").unwrap();
            prop_assert!(validate_label(label).is_ok(), "{}", label);
        }

        #[test]
        fn distinct_long_tags_get_distinct_labels(
            prefix in "[a-z]{70,80}",
            a in "[a-z0-9]{1,8}",
            b in "[a-z0-9]{1,8}",
        ) {
            prop_assume!(a != b);
            let s = scheme();
            let da = s.instance_domain("p", "s", &format!("{prefix}{a}"), false);
            let db = s.instance_domain("p", "s", &format!("{prefix}{b}"), false);
            prop_assert_ne!(da, db);
        }
    }
}
