//! Webhook parsers: turn a registry's or forge's push notification into [`PushEvent`]s.
//!
//! Each parser takes the raw request body (and, for signed sources, the signature header and
//! the shared secret) and returns the pushes it announces — possibly none, for events that are
//! not pushes of a tag (a deletion, a pull, an untagged platform manifest, a ping). Anything
//! malformed or unsigned is a [`WebhookError`] saying why; [`WebhookError::is_authentication`]
//! tells a 401 from a 400.
//!
//! | source | payload | authenticity |
//! |---|---|---|
//! | [`Generic`](WebhookSource::Generic) | `{"image": "registry/org/app:tag", "digest"?: "sha256:…"}` | a shared token: [`verify_token`] |
//! | [`Distribution`](WebhookSource::Distribution) | the registry's notification envelope (`application/vnd.docker.distribution.events.v1+json`) | a shared token in the endpoint's configured `Authorization` header: [`verify_token`] |
//! | [`DockerHub`](WebhookSource::DockerHub) | `push_data.tag`, `repository.repo_name` | Docker Hub cannot sign or send headers: a token in the webhook URL, checked with [`verify_token`] |
//! | [`GitHub`](WebhookSource::GitHub) | `registry_package` / `package` event | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, checked by [`parse_github`] |
//! | [`Gitea`](WebhookSource::Gitea) | package event (Gitea and Forgejo) | `X-Gitea-Signature` (or `X-Forgejo-Signature`): hex HMAC-SHA256 of the body, checked by [`parse_gitea`] |
//!
//! GitHub and Gitea sign only the body, so a captured delivery can be replayed. A replay can
//! only ask again for a push that happened (deploying a tag is idempotent), and the HTTP layer
//! should drop repeated delivery ids (`X-GitHub-Delivery`, `X-Gitea-Delivery`).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use skipper_core::ImageRef;
use subtle::ConstantTimeEq;

/// The header GitHub signs deliveries with.
pub const GITHUB_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The header Gitea signs deliveries with (Forgejo also sends [`FORGEJO_SIGNATURE_HEADER`]).
pub const GITEA_SIGNATURE_HEADER: &str = "X-Gitea-Signature";
/// The header Forgejo signs deliveries with.
pub const FORGEJO_SIGNATURE_HEADER: &str = "X-Forgejo-Signature";
/// The `Content-Type` of a distribution registry's notification envelope.
pub const DISTRIBUTION_EVENTS_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.events.v1+json";

/// Where a push notification came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WebhookSource {
    /// Skipper's own `{"image": "…"}` (CI scripts, anything else).
    Generic,
    /// A CNCF distribution registry's notification endpoint (also Harbor's and Zot's
    /// distribution-compatible notifications).
    Distribution,
    /// A Docker Hub repository webhook.
    DockerHub,
    /// A GitHub `registry_package` or `package` event (GHCR).
    #[serde(rename = "github")]
    GitHub,
    /// A Gitea or Forgejo package webhook.
    Gitea,
}

impl WebhookSource {
    /// Every source.
    pub const ALL: [Self; 5] = [
        Self::Generic,
        Self::Distribution,
        Self::DockerHub,
        Self::GitHub,
        Self::Gitea,
    ];

    /// The stable name (`generic`, `distribution`, `docker_hub`, `github`, `gitea`), as used in
    /// webhook routes and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Distribution => "distribution",
            Self::DockerHub => "docker_hub",
            Self::GitHub => "github",
            Self::Gitea => "gitea",
        }
    }
}

impl fmt::Display for WebhookSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WebhookSource {
    type Err = WebhookError;
    fn from_str(s: &str) -> Result<Self, WebhookError> {
        let norm = s.to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == norm || (norm == "dockerhub" && *k == Self::DockerHub))
            .or_else(|| (norm == "forgejo").then_some(Self::Gitea))
            .ok_or_else(|| WebhookError::UnknownSource { name: s.to_owned() })
    }
}

/// One image pushed, as announced by a webhook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushEvent {
    /// The image pushed: always with a tag, and with the digest when the source gave one.
    pub image: ImageRef,
    /// Who announced it.
    pub source: WebhookSource,
}

/// Why a webhook delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The delivery carries no signature (or token) although one is required.
    #[error("{origin} webhook: missing {header}; configure the webhook's secret")]
    MissingSignature {
        /// The source.
        origin: WebhookSource,
        /// The header (or token) expected.
        header: &'static str,
    },
    /// The signature (or token) is malformed or does not match.
    #[error("{origin} webhook: {header} {reason}")]
    BadSignature {
        /// The source.
        origin: WebhookSource,
        /// The header (or token) checked.
        header: &'static str,
        /// What is wrong (never the expected value).
        reason: &'static str,
    },
    /// The body is not the payload this source sends.
    #[error("{origin} webhook: malformed payload: {reason}")]
    Malformed {
        /// The source.
        origin: WebhookSource,
        /// What is missing or wrong, with the JSON path.
        reason: String,
    },
    /// The payload names an image that is not a valid reference.
    #[error("{origin} webhook: invalid image {value:?}: {reason}")]
    InvalidImage {
        /// The source.
        origin: WebhookSource,
        /// The image text built from the payload.
        value: String,
        /// Why it is not a valid reference.
        reason: String,
    },
    /// A webhook route named a source that does not exist.
    #[error(
        "unknown webhook source {name:?}; expected one of generic, distribution, docker_hub, github, gitea"
    )]
    UnknownSource {
        /// The name given.
        name: String,
    },
}

impl WebhookError {
    /// Whether the delivery was refused for its signature or token (answer 401) rather than
    /// its content (answer 400).
    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            Self::MissingSignature { .. } | Self::BadSignature { .. }
        )
    }
}

/// Converts into an `Unauthorized` or `Invalid`-kind [`skipper_core::Error`].
impl From<WebhookError> for skipper_core::Error {
    fn from(e: WebhookError) -> Self {
        let kind = if e.is_authentication() {
            skipper_core::ErrorKind::Unauthorized
        } else {
            skipper_core::ErrorKind::Invalid
        };
        skipper_core::Error::backend("webhook", kind, e.to_string())
    }
}

type Result<T, E = WebhookError> = std::result::Result<T, E>;

/// Check a shared token (from an `Authorization: Bearer …` header, or a webhook URL) against
/// the configured one, in constant time. For the sources that cannot sign.
///
/// Both sides are hashed first so the comparison leaks neither content nor length.
pub fn verify_token(
    origin: WebhookSource,
    presented: Option<&str>,
    expected: &SecretString,
) -> Result<()> {
    let presented = presented
        .map(|p| p.strip_prefix("Bearer ").unwrap_or(p).trim())
        .filter(|p| !p.is_empty())
        .ok_or(WebhookError::MissingSignature {
            origin,
            header: "token",
        })?;
    let expected = expected.expose_secret();
    if expected.is_empty() {
        // An empty configured secret must not make every request authentic.
        return Err(WebhookError::BadSignature {
            origin,
            header: "token",
            reason: "cannot be checked: the configured secret is empty",
        });
    }
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    if bool::from(a.ct_eq(&b)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature {
            origin,
            header: "token",
            reason: "does not match",
        })
    }
}

/// Verify a hex HMAC-SHA256 of `body` in constant time. `signature` is the header's value, with
/// an optional `sha256=` prefix only when `prefix_required` is false.
fn verify_hmac(
    origin: WebhookSource,
    header: &'static str,
    body: &[u8],
    signature: Option<&str>,
    secret: &SecretString,
    prefix_required: bool,
) -> Result<()> {
    let signature = signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::MissingSignature { origin, header })?;
    let hex_part = match signature.strip_prefix("sha256=") {
        Some(h) => h,
        None if prefix_required => {
            return Err(WebhookError::BadSignature {
                origin,
                header,
                reason: "must look like sha256=<hex>",
            });
        }
        None => signature,
    };
    let given = hex::decode(hex_part).map_err(|_| WebhookError::BadSignature {
        origin,
        header,
        reason: "is not hex",
    })?;
    let key = secret.expose_secret();
    if key.is_empty() {
        return Err(WebhookError::BadSignature {
            origin,
            header,
            reason: "cannot be checked: the configured secret is empty",
        });
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|_| WebhookError::BadSignature {
            origin,
            header,
            reason: "cannot be checked: the secret is unusable as an HMAC key",
        })?;
    mac.update(body);
    // `verify_slice` compares in constant time (via `subtle`).
    mac.verify_slice(&given)
        .map_err(|_| WebhookError::BadSignature {
            origin,
            header,
            reason: "does not match the body (wrong secret, or the body was altered)",
        })
}

/// Check GitHub's `X-Hub-Signature-256: sha256=<hex>` over the raw body.
pub fn verify_github_signature(
    body: &[u8],
    signature: Option<&str>,
    secret: &SecretString,
) -> Result<()> {
    verify_hmac(
        WebhookSource::GitHub,
        GITHUB_SIGNATURE_HEADER,
        body,
        signature,
        secret,
        true,
    )
}

/// Check Gitea's `X-Gitea-Signature` (Forgejo: `X-Forgejo-Signature`): the hex HMAC-SHA256 of
/// the raw body. A `sha256=` prefix (as in the `X-Hub-Signature-256` Gitea also sends) is
/// accepted.
pub fn verify_gitea_signature(
    body: &[u8],
    signature: Option<&str>,
    secret: &SecretString,
) -> Result<()> {
    verify_hmac(
        WebhookSource::Gitea,
        GITEA_SIGNATURE_HEADER,
        body,
        signature,
        secret,
        false,
    )
}

fn parse_json(origin: WebhookSource, body: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
        origin,
        reason: format!("not JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(WebhookError::Malformed {
            origin,
            reason: "the body is not a JSON object".into(),
        });
    }
    Ok(value)
}

/// The string at `path`, `None` when absent or null; an error when present but not a string.
fn opt_str<'a>(origin: WebhookSource, v: &'a Value, path: &[&str]) -> Result<Option<&'a str>> {
    let mut cur = v;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
    match cur {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_str())),
        other => Err(WebhookError::Malformed {
            origin,
            reason: format!("{} is {}, not a string", path.join("."), json_type(other)),
        }),
    }
}

fn req_str<'a>(origin: WebhookSource, v: &'a Value, path: &[&str]) -> Result<&'a str> {
    opt_str(origin, v, path)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WebhookError::Malformed {
            origin,
            reason: format!("{} is missing", path.join(".")),
        })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Build the event's reference: `text` must parse, carry a tag, and match `digest` if both
/// name one.
fn image(origin: WebhookSource, text: &str, digest: Option<&str>) -> Result<PushEvent> {
    let invalid = |reason: String| WebhookError::InvalidImage {
        origin,
        value: text.to_owned(),
        reason,
    };
    let mut image = ImageRef::parse(text).map_err(|e| invalid(e.to_string()))?;
    if image.tag().is_none() {
        return Err(invalid("it names no tag".into()));
    }
    if let Some(d) = digest.filter(|d| !d.is_empty()) {
        match image.digest() {
            Some(existing) if existing != d => {
                return Err(invalid(format!(
                    "its digest differs from the payload's digest {d}"
                )));
            }
            Some(_) => {}
            None => image = image.with_digest(d).map_err(|e| invalid(e.to_string()))?,
        }
    }
    Ok(PushEvent {
        image,
        source: origin,
    })
}

/// Skipper's generic payload: `{"image": "registry/org/app:tag"}`, optionally with
/// `"digest": "sha256:…"` (or the digest in the reference, `…:tag@sha256:…`). A reference
/// without a tag means `latest`, as with `docker pull`; a digest alone is refused (a push names a
/// tag).
pub fn parse_generic(body: &[u8]) -> Result<Vec<PushEvent>> {
    let origin = WebhookSource::Generic;
    let v = parse_json(origin, body)?;
    let text = req_str(origin, &v, &["image"])?;
    let digest = opt_str(origin, &v, &["digest"])?;
    Ok(vec![image(origin, text, digest)?])
}

const MANIFEST_MEDIA_TYPES: [&str; 5] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// A distribution registry's notification envelope
/// (`{"events":[{"action":"push","target":{…},"request":{"host":…}}]}`).
///
/// Only `push` events of a manifest with a tag count; pulls, deletes, blob pushes and untagged
/// (per-platform) manifests are skipped. The registry name is the event's `request.host` (the
/// name the pusher used), unless `registry` overrides it — for a registry known to Skipper by
/// another name than its clients use. Repeated images in one envelope are reported once.
pub fn parse_distribution(body: &[u8], registry: Option<&str>) -> Result<Vec<PushEvent>> {
    let origin = WebhookSource::Distribution;
    let v = parse_json(origin, body)?;
    let events =
        v.get("events")
            .and_then(Value::as_array)
            .ok_or_else(|| WebhookError::Malformed {
                origin,
                reason: "events is missing or not an array".into(),
            })?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, event) in events.iter().enumerate() {
        let at = |field: &str| format!("events[{i}].{field}");
        if !event.is_object() {
            return Err(WebhookError::Malformed {
                origin,
                reason: format!("events[{i}] is not an object"),
            });
        }
        let action =
            opt_str(origin, event, &["action"])?.ok_or_else(|| WebhookError::Malformed {
                origin,
                reason: format!("{} is missing", at("action")),
            })?;
        if action != "push" {
            continue;
        }
        let Some(tag) = opt_str(origin, event, &["target", "tag"])?.filter(|t| !t.is_empty())
        else {
            continue;
        };
        let media = opt_str(origin, event, &["target", "mediaType"])?;
        if media.is_some_and(|m| !MANIFEST_MEDIA_TYPES.contains(&m)) {
            continue;
        }
        let repository = opt_str(origin, event, &["target", "repository"])?
            .filter(|r| !r.is_empty())
            .ok_or_else(|| WebhookError::Malformed {
                origin,
                reason: format!("{} is missing", at("target.repository")),
            })?;
        let host = match registry {
            Some(r) => r.to_owned(),
            None => match opt_str(origin, event, &["request", "host"])?.filter(|h| !h.is_empty()) {
                Some(h) => h.to_owned(),
                None => opt_str(origin, event, &["target", "url"])?
                    .and_then(|u| url::Url::parse(u).ok())
                    .and_then(|u| {
                        u.host_str().map(|h| match u.port() {
                            Some(p) => format!("{h}:{p}"),
                            None => h.to_owned(),
                        })
                    })
                    .ok_or_else(|| WebhookError::Malformed {
                        origin,
                        reason: format!(
                            "{} and {} are missing: cannot tell the registry",
                            at("request.host"),
                            at("target.url")
                        ),
                    })?,
            },
        };
        if registry.is_none() && !(host.contains('.') || host.contains(':') || host == "localhost")
        {
            // A bare `registry` host would be read as a Docker Hub path: refuse rather than
            // watch the wrong image.
            return Err(WebhookError::InvalidImage {
                origin,
                value: format!("{host}/{repository}:{tag}"),
                reason: format!(
                    "the registry host {host:?} is not recognisable as one (no '.' or ':'); pass the registry name explicitly"
                ),
            });
        }
        let digest = opt_str(origin, event, &["target", "digest"])?;
        let event = image(origin, &format!("{host}/{repository}:{tag}"), digest)?;
        if seen.insert(event.image.to_string()) {
            out.push(event);
        }
    }
    Ok(out)
}

/// A Docker Hub repository webhook: `docker.io/<repository.repo_name>:<push_data.tag>`.
/// Docker Hub sends no digest and cannot sign: check a URL token with [`verify_token`].
pub fn parse_docker_hub(body: &[u8]) -> Result<Vec<PushEvent>> {
    let origin = WebhookSource::DockerHub;
    let v = parse_json(origin, body)?;
    let repo = req_str(origin, &v, &["repository", "repo_name"])?;
    let tag = req_str(origin, &v, &["push_data", "tag"])?;
    Ok(vec![image(
        origin,
        &format!("docker.io/{repo}:{tag}"),
        None,
    )?])
}

/// A GitHub `registry_package` or `package` webhook (for GHCR), after verifying
/// `X-Hub-Signature-256` (`signature`, the header's value) over the raw `body` with `secret`.
///
/// The image is `ghcr.io/<package.namespace>/<package.name>:<package_version.container_metadata.tag.name>`
/// (lower-cased, as GHCR serves it), with `container_metadata.tag.digest` when it is a full
/// digest. Actions other than `published`, non-container packages, untagged versions (the
/// per-platform manifests of a multi-arch push) and pings yield no event.
pub fn parse_github(
    body: &[u8],
    signature: Option<&str>,
    secret: &SecretString,
) -> Result<Vec<PushEvent>> {
    let origin = WebhookSource::GitHub;
    verify_github_signature(body, signature, secret)?;
    let v = parse_json(origin, body)?;
    let (key, package) = match (v.get("registry_package"), v.get("package")) {
        (Some(p), _) if p.is_object() => ("registry_package", p),
        (_, Some(p)) if p.is_object() => ("package", p),
        _ if v.get("zen").is_some() || v.get("hook_id").is_some() => return Ok(Vec::new()),
        _ => {
            return Err(WebhookError::Malformed {
                origin,
                reason: "neither registry_package nor package is an object".into(),
            });
        }
    };
    let action = req_str(origin, &v, &["action"])?;
    if action != "published" {
        return Ok(Vec::new());
    }
    let is_container = ["package_type", "ecosystem"].iter().any(|f| {
        package.get(*f).and_then(Value::as_str).is_some_and(|t| {
            t.eq_ignore_ascii_case("container") || t.eq_ignore_ascii_case("docker")
        })
    }) || package
        .pointer("/package_version/container_metadata")
        .is_some_and(Value::is_object);
    if !is_container {
        return Ok(Vec::new());
    }
    let tag = opt_str(
        origin,
        package,
        &["package_version", "container_metadata", "tag", "name"],
    )
    .map_err(|e| prefix(e, key))?;
    let Some(tag) = tag.filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    let namespace = req_str(origin, package, &["namespace"]).map_err(|e| prefix(e, key))?;
    let name = req_str(origin, package, &["name"]).map_err(|e| prefix(e, key))?;
    let digest = opt_str(
        origin,
        package,
        &["package_version", "container_metadata", "tag", "digest"],
    )
    .map_err(|e| prefix(e, key))?
    .filter(|d| is_full_digest(d));
    let text = format!(
        "ghcr.io/{}/{}:{tag}",
        namespace.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    );
    Ok(vec![image(origin, &text, digest)?])
}

/// A Gitea or Forgejo package webhook, after verifying `X-Gitea-Signature` /
/// `X-Forgejo-Signature` (`signature`, the header's value) over the raw `body` with `secret`.
///
/// The image is `<host of package.html_url>/<package.owner.login>/<package.name>:<package.version>`
/// (lower-cased owner and name, as Gitea's registry serves them). Only `created` events of
/// `container` packages count; versions that are digests (untagged manifests) yield no event.
pub fn parse_gitea(
    body: &[u8],
    signature: Option<&str>,
    secret: &SecretString,
) -> Result<Vec<PushEvent>> {
    let origin = WebhookSource::Gitea;
    verify_gitea_signature(body, signature, secret)?;
    let v = parse_json(origin, body)?;
    if !v.get("package").is_some_and(Value::is_object) {
        return Err(WebhookError::Malformed {
            origin,
            reason:
                "package is missing: not a package event (subscribe the webhook to package events)"
                    .into(),
        });
    }
    let action = req_str(origin, &v, &["action"])?;
    let kind = req_str(origin, &v, &["package", "type"])?;
    if action != "created" || kind != "container" {
        return Ok(Vec::new());
    }
    let version = req_str(origin, &v, &["package", "version"])?;
    if version.contains(':') {
        return Ok(Vec::new());
    }
    let owner = match opt_str(origin, &v, &["package", "owner", "login"])? {
        Some(o) if !o.is_empty() => o,
        _ => req_str(origin, &v, &["package", "owner", "username"])?,
    };
    let name = req_str(origin, &v, &["package", "name"])?;
    let html_url = req_str(origin, &v, &["package", "html_url"])?;
    let host = url::Url::parse(html_url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .ok_or_else(|| WebhookError::Malformed {
            origin,
            reason: format!("package.html_url {html_url:?} is not a URL with a host"),
        })?;
    let text = format!(
        "{host}/{}/{}:{version}",
        owner.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    );
    Ok(vec![image(origin, &text, None)?])
}

fn prefix(e: WebhookError, key: &str) -> WebhookError {
    match e {
        WebhookError::Malformed { origin, reason } => WebhookError::Malformed {
            origin,
            reason: format!("{key}.{reason}"),
        },
        other => other,
    }
}

fn is_full_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn sign(key: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn generic_payloads() {
        let ev = parse_generic(br#"{"image": "localhost:5000/team/web:v2"}"#).unwrap();
        assert_eq!(ev[0].image.to_string(), "localhost:5000/team/web:v2");
        assert_eq!(ev[0].source, WebhookSource::Generic);
        let d = format!("sha256:{}", "b".repeat(64));
        let ev =
            parse_generic(format!(r#"{{"image": "ghcr.io/o/a:v1", "digest": "{d}"}}"#).as_bytes())
                .unwrap();
        assert_eq!(ev[0].image.digest(), Some(d.as_str()));
        let ev = parse_generic(br#"{"image": "nginx"}"#).unwrap();
        assert_eq!(ev[0].image.to_string(), "docker.io/library/nginx:latest");

        for (body, needle) in [
            (&b"{"[..], "not JSON"),
            (b"[]", "not a JSON object"),
            (b"{}", "image is missing"),
            (br#"{"image": 3}"#, "image is a number"),
            (br#"{"image": "Bad/Name:v1"}"#, "lower-case"),
            (br#"{"image": "a:v1", "digest": "md5:x"}"#, "digest"),
        ] {
            let e = parse_generic(body).unwrap_err();
            assert!(!e.is_authentication());
            assert!(e.to_string().contains(needle), "{e}");
        }
        let digest_only = format!(r#"{{"image": "ghcr.io/o/a@{d}"}}"#);
        let e = parse_generic(digest_only.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no tag"), "{e}");
    }

    #[test]
    fn token_checks() {
        let s = secret("t0ken");
        let o = WebhookSource::DockerHub;
        assert!(verify_token(o, Some("t0ken"), &s).is_ok());
        assert!(verify_token(o, Some("Bearer t0ken"), &s).is_ok());
        assert!(matches!(
            verify_token(o, None, &s),
            Err(WebhookError::MissingSignature { .. })
        ));
        assert!(matches!(
            verify_token(o, Some("t0ke"), &s),
            Err(WebhookError::BadSignature { .. })
        ));
        assert!(verify_token(o, Some("x"), &secret("")).is_err());
    }

    #[test]
    fn hmac_checks() {
        let body = br#"{"action":"published"}"#;
        let good = format!("sha256={}", sign("k", body));
        assert!(verify_github_signature(body, Some(&good), &secret("k")).is_ok());
        let e = verify_github_signature(body, Some(&good), &secret("other")).unwrap_err();
        assert!(e.is_authentication());
        assert!(e.to_string().contains("does not match"), "{e}");
        // GitHub's form needs the prefix; Gitea's takes bare hex or the prefix.
        let bare = sign("k", body);
        assert!(verify_github_signature(body, Some(&bare), &secret("k")).is_err());
        assert!(verify_gitea_signature(body, Some(&bare), &secret("k")).is_ok());
        assert!(verify_gitea_signature(body, Some(&good), &secret("k")).is_ok());
        assert!(matches!(
            verify_gitea_signature(body, Some("zz"), &secret("k")),
            Err(WebhookError::BadSignature {
                reason: "is not hex",
                ..
            })
        ));
        assert!(matches!(
            verify_gitea_signature(body, None, &secret("k")),
            Err(WebhookError::MissingSignature { .. })
        ));
        assert!(verify_gitea_signature(body, Some(&bare), &secret("")).is_err());
        // A truncated signature does not match.
        assert!(verify_gitea_signature(body, Some(&bare[..32]), &secret("k")).is_err());
    }

    #[test]
    fn distribution_needs_a_recognisable_host() {
        let body = br#"{"events":[{"action":"push","target":{"repository":"app","tag":"v1"},"request":{"host":"registry"}}]}"#;
        let e = parse_distribution(body, None).unwrap_err();
        assert!(e.to_string().contains("not recognisable"), "{e}");
        let ev = parse_distribution(body, Some("registry.internal:5000")).unwrap();
        assert_eq!(ev[0].image.to_string(), "registry.internal:5000/app:v1");
    }

    #[test]
    fn sources_round_trip_names() {
        for s in WebhookSource::ALL {
            assert_eq!(s.as_str().parse::<WebhookSource>().unwrap(), s);
        }
        assert_eq!(
            "forgejo".parse::<WebhookSource>().unwrap(),
            WebhookSource::Gitea
        );
        assert_eq!(
            "docker-hub".parse::<WebhookSource>().unwrap(),
            WebhookSource::DockerHub
        );
        assert!("gitlab".parse::<WebhookSource>().is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
            let s = secret("k");
            let _ = parse_generic(&body);
            let _ = parse_distribution(&body, None);
            let _ = parse_docker_hub(&body);
            let sig = format!("sha256={}", sign("k", &body));
            let _ = parse_github(&body, Some(&sig), &s);
            let _ = parse_gitea(&body, Some(&sig), &s);
        }

        #[test]
        fn any_change_to_a_signed_body_is_refused(
            body in prop::collection::vec(any::<u8>(), 1..100),
            flip in any::<prop::sample::Index>(),
        ) {
            let sig = format!("sha256={}", sign("key", &body));
            prop_assert!(verify_github_signature(&body, Some(&sig), &secret("key")).is_ok());
            let mut altered = body.clone();
            let i = flip.index(altered.len());
            altered[i] ^= 0x01;
            prop_assert!(verify_github_signature(&altered, Some(&sig), &secret("key")).is_err());
        }
    }
}
