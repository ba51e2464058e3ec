//! Image references, parsed and normalised the way Docker does.
//!
//! `[registry[:port]/]path[:tag][@algorithm:digest]`:
//! - `nginx` → `docker.io/library/nginx:latest`
//! - `localhost:5000/a/b` → `localhost:5000/a/b:latest`
//! - `ghcr.io/org/app@sha256:…` keeps the digest and gets no tag.
//!
//! The first path component is a registry when it contains `.` or `:` or is `localhost`, as in
//! Docker's `distribution/reference`. Repository paths must be lower-case.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parse and normalise a reference. See the module docs for the grammar.
    pub fn parse(input: &str) -> Result<Self> {
        let err = |reason: &str| Error::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.trim() != input || input.chars().any(char::is_whitespace) {
            return Err(err("it contains whitespace"));
        }

        if local_image_id(input).is_some() {
            return Err(err(
                "it is a local image id, not a repository and tag (deploy resolves an image id \
                 to the image's tag)",
            ));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|r| err(&r))?;
                (rest, Some(digest.to_owned()))
            }
            None => (input, None),
        };

        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&rest[..colon], Some(rest[colon + 1..].to_owned()))
            }
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(|r| err(&r))?;
        }
        if name.is_empty() {
            return Err(err("the repository name is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(err("the repository name is longer than 255 characters"));
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                validate_registry(first).map_err(|r| err(&r))?;
                (first.to_owned(), path)
            }
            _ => (DOCKER_HUB.to_owned(), name),
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository names must be lower-case"));
        }
        for component in path.split('/') {
            validate_component(component).map_err(|r| err(&r))?;
        }

        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port): `docker.io`, `localhost:5000`, `ghcr.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry: `library/nginx`, `team/web-app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the input had neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:…`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self> {
        validate_tag(tag).map_err(|reason| Error::InvalidReference {
            input: format!("{}:{tag}", self.name()),
            reason,
        })?;
        Ok(Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same reference pinned to a digest (the tag is kept for display).
    pub fn with_digest(&self, digest: &str) -> Result<Self> {
        validate_digest(digest).map_err(|reason| Error::InvalidReference {
            input: format!("{}@{digest}", self.name()),
            reason,
        })?;
        Ok(Self {
            digest: Some(digest.to_owned()),
            ..self.clone()
        })
    }

    /// Whether both references name the same repository (registry and path).
    pub fn same_repository(&self, other: &Self) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }

    /// The short form `docker` prints: `nginx:latest` for Docker Hub official images.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        let mut out = name;
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The local image id `input` names, if it is one: `sha256:` and 12 to 64 lower-case hex digits
/// (as `docker images --no-trunc` prints them, or a prefix of one), which Docker reads as an
/// image id, never as the Docker Hub repository `sha256`.
pub fn local_image_id(input: &str) -> Option<&str> {
    let hex = input.strip_prefix("sha256:")?;
    let ok = (12..=64).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(input)
}

/// Check a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() {
        return Err("the tag is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err("the tag is longer than 128 characters".into());
    }
    let mut chars = tag.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(format!(
            "the tag {tag:?} must start with a letter, digit or '_'"
        ));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("the tag {tag:?} contains {bad:?}"));
    }
    Ok(())
}

fn validate_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algo, hex)) = digest.split_once(':') else {
        return Err(format!(
            "the digest {digest:?} must look like sha256:<64 hex digits>"
        ));
    };
    let valid_algo = !algo.is_empty()
        && algo.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '_' | '-')
        });
    if !valid_algo {
        return Err(format!("the digest algorithm {algo:?} is not valid"));
    }
    let hex_ok = hex.len() >= 32
        && hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if !hex_ok || (algo == "sha256" && hex.len() != 64) {
        return Err(format!(
            "the digest {digest:?} must look like sha256:<64 lower-case hex digits>"
        ));
    }
    Ok(())
}

fn validate_registry(host: &str) -> std::result::Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [ipv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(format!("the registry {host:?} has an unclosed '['"));
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("the registry {host:?} is not a valid IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "the registry host {name:?} is not a valid host name"
            ));
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("the registry port {port:?} is not a valid port"));
    }
    Ok(())
}

/// A path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn validate_component(c: &str) -> std::result::Result<(), String> {
    if c.is_empty() {
        return Err("the repository path has an empty component".into());
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "the path component {c:?} must start and end with a lower-case letter or digit"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "the path component {c:?} contains the invalid separator {sep:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(norm("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(norm("localhost/app:v1"), "localhost/app:v1");
        assert_eq!(
            norm("127.0.0.1:5000/team/app:dev-1"),
            "127.0.0.1:5000/team/app:dev-1"
        );
        assert_eq!(norm("ghcr.io/org/app:v1.2.3"), "ghcr.io/org/app:v1.2.3");
        assert_eq!(norm("[::1]:5000/app:v1"), "[::1]:5000/app:v1");
        let d = "sha256:".to_owned() + &"a".repeat(64);
        assert_eq!(
            norm(&format!("ghcr.io/org/app@{d}")),
            format!("ghcr.io/org/app@{d}")
        );
        assert_eq!(
            norm(&format!("app:v1@{d}")),
            format!("docker.io/library/app:v1@{d}")
        );
    }

    #[test]
    fn accessors() {
        let r = ImageRef::parse("localhost:5000/team/web-app:dev-1").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "team/web-app");
        assert_eq!(r.tag(), Some("dev-1"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.name(), "localhost:5000/team/web-app");
        assert_eq!(ImageRef::parse("nginx").unwrap().familiar(), "nginx:latest");
        assert_eq!(r.with_tag("v2").unwrap().tag(), Some("v2"));
        assert!(r.with_tag("-bad").is_err());
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            " nginx",
            "Nginx",
            "docker.io/Library/nginx",
            "nginx:",
            "nginx:-x",
            "nginx:a b",
            "nginx@sha256:abc",
            "nginx@sha256:".to_owned().leak(),
            "a//b",
            "a/",
            "/a",
            "a__-b",
            "-a",
            "a-",
            "host:0/app",
            "host:99999/app",
            "ho_st.io/app",
            "[::1/app",
            "nginx:tag:more",
        ] {
            let e = ImageRef::parse(bad);
            assert!(e.is_err(), "{bad:?} should be rejected, got {e:?}");
            let msg = e.unwrap_err().to_string();
            assert!(msg.contains("invalid image reference"), "{msg}");
        }
        let long = "a".repeat(256);
        assert!(ImageRef::parse(&long).is_err());
        let long_tag = format!("app:{}", "t".repeat(129));
        assert!(ImageRef::parse(&long_tag).is_err());
    }

    #[test]
    fn an_image_id_is_not_a_hub_repository_named_sha256() {
        let id = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(local_image_id(&id), Some(id.as_str()));
        assert_eq!(
            local_image_id("sha256:0123456789ab"),
            Some("sha256:0123456789ab")
        );
        for not_an_id in [
            "sha256:0123456789a",
            "sha256:0123456789AB",
            "sha256:xyz0123456789ab",
            "0123456789abcdef",
            "app:sha256",
        ] {
            assert_eq!(local_image_id(not_an_id), None, "{not_an_id}");
        }
        let e = ImageRef::parse(&id).unwrap_err().to_string();
        assert!(e.contains("local image id"), "{e}");
        // The digest form is still a reference.
        assert!(ImageRef::parse(&format!("app@{id}")).is_ok());
        assert!(
            ImageRef::parse("sha256:v1").is_ok(),
            "a repository named sha256 with a tag"
        );
    }

    #[test]
    fn upper_case_error_says_lower_case() {
        let msg = ImageRef::parse("ghcr.io/Org/App").unwrap_err().to_string();
        assert!(msg.contains("lower-case"), "{msg}");
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,5}([._-][a-z0-9]{1,5}){0,2}"
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(
            registry in prop::option::of(prop_oneof![
                Just("localhost:5000".to_owned()),
                Just("ghcr.io".to_owned()),
                Just("127.0.0.1:5000".to_owned()),
                "[a-z]{1,8}\\.(io|com)",
            ]),
            path in prop::collection::vec(component(), 1..4),
            tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in prop::option::of("[a-f0-9]{64}"),
        ) {
            let mut path = path;
            if registry.is_none() {
                // Without a registry, a first component with '.' would be read as a host (as Docker does).
                path[0] = path[0].replace('.', "-");
            }
            let mut s = String::new();
            if let Some(r) = &registry { s.push_str(r); s.push('/'); }
            s.push_str(&path.join("/"));
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            if let Some(d) = &digest { s.push_str("@sha256:"); s.push_str(d); }
            let parsed = ImageRef::parse(&s).unwrap();
            let again = ImageRef::parse(&parsed.to_string()).unwrap();
            prop_assert_eq!(&parsed, &again);
            prop_assert_eq!(parsed.to_string(), again.to_string());
            let familiar = ImageRef::parse(&parsed.familiar()).unwrap();
            prop_assert_eq!(&parsed, &familiar);
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = ImageRef::parse(&s);
        }
    }
}
