//! What travels over the wire: NPM's version, its proxy-host objects, and the fields Skipper
//! writes.
//!
//! Reading is tolerant (NPM before 2.12 answers booleans as `0`/`1`, `meta` may be `null`);
//! writing is strict (NPM validates bodies with `additionalProperties: false`, so only fields the
//! server's version knows are ever sent).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use skipper_core::{Route, RouteOptions, Upstream};

/// The `meta` key that marks a proxy host as managed by Skipper (`meta: {"skipper": true}`).
pub const MANAGED_MARKER: &str = "skipper";

/// `meta` keys NPM writes itself after configuring nginx; never sent back.
const READ_ONLY_META: [&str; 2] = ["nginx_online", "nginx_err"];

/// An Nginx Proxy Manager version, as `GET /api/` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NpmVersion {
    /// Major version.
    #[serde(deserialize_with = "number")]
    pub major: u32,
    /// Minor version.
    #[serde(deserialize_with = "number")]
    pub minor: u32,
    /// Patch version (NPM calls it `revision`).
    #[serde(deserialize_with = "number")]
    pub revision: u32,
}

impl NpmVersion {
    /// A version.
    pub const fn new(major: u32, minor: u32, revision: u32) -> Self {
        Self {
            major,
            minor,
            revision,
        }
    }

    /// Whether proxy hosts accept `trust_forwarded_proto` (from 2.14.0; older servers reject the
    /// field as unknown).
    pub fn supports_trust_forwarded_proto(self) -> bool {
        self >= Self::new(2, 14, 0)
    }

    /// Whether booleans come back as `true`/`false` (from 2.12.0; before, as `1`/`0`).
    pub fn has_json_booleans(self) -> bool {
        self >= Self::new(2, 12, 0)
    }

    /// Whether a missing or invalid token gets 404 `Not Found - /<path>` instead of 403
    /// (2.13.0 to 2.15.1).
    pub fn has_token_not_found_quirk(self) -> bool {
        (Self::new(2, 13, 0)..=Self::new(2, 15, 1)).contains(&self)
    }
}

impl fmt::Display for NpmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)
    }
}

/// The body of `GET /api/`.
#[derive(Debug, Deserialize)]
pub(crate) struct Health {
    #[serde(default)]
    pub(crate) version: Option<NpmVersion>,
}

/// The body of `POST /api/tokens` and `GET /api/tokens`.
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) expires: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    pub(crate) requires_2fa: bool,
}

/// A proxy host as NPM returns it (the fields Skipper reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct ProxyHost {
    /// NPM's id.
    pub id: u64,
    /// The domains served.
    #[serde(default)]
    pub domain_names: Vec<String>,
    /// `http` or `https`.
    #[serde(default, deserialize_with = "string")]
    pub forward_scheme: String,
    /// The upstream host.
    #[serde(default, deserialize_with = "string")]
    pub forward_host: String,
    /// The upstream port.
    #[serde(default, deserialize_with = "number")]
    pub forward_port: u16,
    /// The certificate, 0 for none.
    #[serde(default, deserialize_with = "number")]
    pub certificate_id: u64,
    /// The access list, 0 for none.
    #[serde(default, deserialize_with = "number")]
    pub access_list_id: u64,
    /// Redirect HTTP to HTTPS.
    #[serde(default, deserialize_with = "flag")]
    pub ssl_forced: bool,
    /// HSTS.
    #[serde(default, deserialize_with = "flag")]
    pub hsts_enabled: bool,
    /// HSTS for subdomains.
    #[serde(default, deserialize_with = "flag")]
    pub hsts_subdomains: bool,
    /// HTTP/2.
    #[serde(default, deserialize_with = "flag")]
    pub http2_support: bool,
    /// Block common exploits.
    #[serde(default, deserialize_with = "flag")]
    pub block_exploits: bool,
    /// Cache assets.
    #[serde(default, deserialize_with = "flag")]
    pub caching_enabled: bool,
    /// Websocket upgrades.
    #[serde(default, deserialize_with = "flag")]
    pub allow_websocket_upgrade: bool,
    /// Whether the host is enabled.
    #[serde(default = "yes", deserialize_with = "flag")]
    pub enabled: bool,
    /// Trust `X-Forwarded-Proto` from upstream (2.14+; `None` when the server has no such field).
    #[serde(default, deserialize_with = "optional_flag")]
    pub trust_forwarded_proto: Option<bool>,
    /// Extra nginx configuration.
    #[serde(default, deserialize_with = "string")]
    pub advanced_config: String,
    /// Free-form metadata; NPM adds `nginx_online` and `nginx_err`, Skipper adds its marker.
    #[serde(default, deserialize_with = "object")]
    pub meta: Map<String, Value>,
}

impl ProxyHost {
    /// Whether Skipper manages this host (`meta.skipper` is true).
    pub fn is_managed(&self) -> bool {
        self.meta.get(MANAGED_MARKER).is_some_and(truthy)
    }

    /// Whether this host serves `domain` (case-insensitively, as NPM compares domains).
    pub fn serves(&self, domain: &str) -> bool {
        self.domain_names
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// `meta.nginx_online`, where NPM has set it.
    pub fn nginx_online(&self) -> Option<bool> {
        self.meta.get("nginx_online").and_then(|v| match v {
            Value::Null => None,
            v => Some(truthy(v)),
        })
    }

    /// `meta.nginx_err`, where set.
    pub fn nginx_err(&self) -> Option<&str> {
        self.meta.get("nginx_err").and_then(Value::as_str)
    }

    /// Where this host forwards to.
    pub fn upstream(&self) -> Upstream {
        Upstream {
            scheme: self.forward_scheme.clone(),
            host: self.forward_host.clone(),
            port: self.forward_port,
        }
    }

    /// This host's settings as Skipper's [`RouteOptions`].
    pub fn route_options(&self) -> RouteOptions {
        RouteOptions {
            websocket: self.allow_websocket_upgrade,
            block_exploits: self.block_exploits,
            http2: self.http2_support,
            certificate_id: (self.certificate_id > 0).then_some(self.certificate_id),
            ssl_forced: self.ssl_forced,
            access_list_id: (self.access_list_id > 0).then_some(self.access_list_id),
            advanced_config: (!self.advanced_config.is_empty())
                .then(|| self.advanced_config.clone()),
            // Skipper's own choice, not NPM's: a listed host is one Skipper manages.
            adopt: false,
        }
    }

    /// One [`Route`] per domain this host serves.
    pub fn routes(&self) -> Vec<Route> {
        let upstream = self.upstream();
        let options = self.route_options();
        self.domain_names
            .iter()
            .map(|domain| Route {
                domain: domain.clone(),
                upstream: upstream.clone(),
                options: options.clone(),
            })
            .collect()
    }

    /// `meta` to send so the host carries Skipper's marker: the existing keys kept, NPM's own
    /// read-only keys left out (NPM replaces `meta` wholesale on update).
    pub(crate) fn meta_with_marker(&self) -> Map<String, Value> {
        let mut meta: Map<String, Value> = self
            .meta
            .iter()
            .filter(|(k, _)| !READ_ONLY_META.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert(MANAGED_MARKER.into(), Value::Bool(true));
        meta
    }
}

/// The proxy-host fields Skipper decides, in NPM's names and shapes. Serialises to exactly the
/// fields to write; the same struct read from an existing host gives the values to compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Settings {
    pub(crate) forward_scheme: String,
    pub(crate) forward_host: String,
    pub(crate) forward_port: u16,
    pub(crate) allow_websocket_upgrade: bool,
    pub(crate) block_exploits: bool,
    pub(crate) http2_support: bool,
    // Always an integer (0 = none). NPM also accepts `"new"`, which requests a Let's Encrypt
    // certificate during create; Skipper never sends it: NPM then clears `ssl_forced`,
    // `http2_support` and HSTS on the new host (upstream issue 3956), so the route would come up
    // without the HTTPS redirect it asked for and the next ensure would see a difference forever.
    // Certificates are made beforehand (`POST /api/nginx/certificates`) and passed by id.
    pub(crate) certificate_id: u64,
    pub(crate) ssl_forced: bool,
    pub(crate) access_list_id: u64,
    pub(crate) advanced_config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trust_forwarded_proto: Option<bool>,
}

impl Settings {
    /// What `route` asks for. `trust_forwarded_proto` is `Some` only when it is configured and
    /// the server's version has the field.
    pub(crate) fn desired(route: &Route, trust_forwarded_proto: Option<bool>) -> Self {
        let o = &route.options;
        let certificate_id = o.certificate_id.unwrap_or(0);
        // NPM forces ssl_forced and http2_support off on a host without a certificate
        // (`cleanSslHstsData`); asking for them would never converge.
        let has_cert = certificate_id > 0;
        Self {
            forward_scheme: route.upstream.scheme.to_ascii_lowercase(),
            forward_host: route.upstream.host.clone(),
            forward_port: route.upstream.port,
            allow_websocket_upgrade: o.websocket,
            block_exploits: o.block_exploits,
            http2_support: o.http2 && has_cert,
            certificate_id,
            ssl_forced: o.ssl_forced && has_cert,
            access_list_id: o.access_list_id.unwrap_or(0),
            advanced_config: o.advanced_config.clone().unwrap_or_default(),
            trust_forwarded_proto,
        }
    }

    /// What `host` has now, in the same shape (with `trust_forwarded_proto` only if `with_tfp`).
    pub(crate) fn current(host: &ProxyHost, with_tfp: bool) -> Self {
        Self {
            forward_scheme: host.forward_scheme.to_ascii_lowercase(),
            forward_host: host.forward_host.clone(),
            forward_port: host.forward_port,
            allow_websocket_upgrade: host.allow_websocket_upgrade,
            block_exploits: host.block_exploits,
            http2_support: host.http2_support,
            certificate_id: host.certificate_id,
            ssl_forced: host.ssl_forced,
            access_list_id: host.access_list_id,
            advanced_config: host.advanced_config.clone(),
            trust_forwarded_proto: if with_tfp {
                Some(host.trust_forwarded_proto.unwrap_or(false))
            } else {
                None
            },
        }
    }

    /// The fields as a JSON object.
    pub(crate) fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// The fields of `self` that differ from `current`, with `self`'s values.
    pub(crate) fn changes_from(&self, current: &Self) -> Map<String, Value> {
        let now = current.to_map();
        self.to_map()
            .into_iter()
            .filter(|(k, v)| now.get(k) != Some(v))
            .collect()
    }

    /// The body of a create for `domain`.
    pub(crate) fn create_body(&self, domain: &str) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("domain_names".into(), Value::from(vec![domain.to_owned()]));
        body.extend(self.to_map());
        let mut meta = Map::new();
        meta.insert(MANAGED_MARKER.into(), Value::Bool(true));
        body.insert("meta".into(), Value::Object(meta));
        body
    }
}

/// Characters NPM's schema forbids in a domain name.
const FORBIDDEN_DOMAIN_CHARS: &str = "&|@!#%^();:/\\}{=+?<>,~'\"";

/// Why `route` cannot be sent to NPM, if it cannot.
pub(crate) fn route_problem(route: &Route) -> Option<String> {
    let d = &route.domain;
    if d.is_empty() {
        return Some("the domain is empty".into());
    }
    if let Some(c) = d
        .chars()
        .find(|c| c.is_whitespace() || FORBIDDEN_DOMAIN_CHARS.contains(*c))
    {
        return Some(format!(
            "Nginx Proxy Manager does not accept {c:?} in a domain name"
        ));
    }
    let scheme = route.upstream.scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Some(format!(
            "the upstream scheme must be http or https, not {:?}",
            route.upstream.scheme
        ));
    }
    if route.upstream.host.is_empty() || route.upstream.host.len() > 255 {
        return Some("the upstream host must be 1 to 255 characters".into());
    }
    if route.upstream.port == 0 {
        return Some("the upstream port must be 1 to 65535".into());
    }
    None
}

// ---- tolerant deserialisers -------------------------------------------------------------------

fn yes() -> bool {
    true
}

/// Whether a JSON value means "on": `true`, a non-zero number, `"1"`/`"true"`.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => matches!(s.trim(), "1" | "true" | "TRUE" | "True"),
        _ => false,
    }
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(truthy(&Value::deserialize(d)?))
}

fn optional_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        v => Some(truthy(&v)),
    })
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

fn number<'de, D, N>(d: D) -> Result<N, D::Error>
where
    D: Deserializer<'de>,
    N: TryFrom<u64> + Default,
{
    use serde::de::Error;
    let n = match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        // `certificate_id` may still read "new" on a host whose certificate request is pending.
        Value::Null | Value::Bool(false) => Some(0),
        _ => None,
    };
    match n {
        Some(n) => N::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range"))),
        None => Ok(N::default()),
    }
}

fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(m) => m,
        // Very old rows keep meta as a JSON string.
        Value::String(s) => match serde_json::from_str(&s) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        _ => Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn route() -> Route {
        Route {
            domain: "app.example.com".into(),
            upstream: Upstream {
                scheme: "http".into(),
                host: "app-1".into(),
                port: 8080,
            },
            options: RouteOptions::default(),
        }
    }

    #[test]
    fn reads_integer_booleans_of_old_servers() {
        let host: ProxyHost = serde_json::from_value(json!({
            "id": 3, "domain_names": ["a.example.com"], "forward_scheme": "http",
            "forward_host": "a", "forward_port": "80", "ssl_forced": 0, "block_exploits": 1,
            "allow_websocket_upgrade": 1, "http2_support": 0, "enabled": 1, "certificate_id": 0,
            "access_list_id": 0, "advanced_config": null, "meta": {"skipper": 1, "nginx_online": 1}
        }))
        .unwrap();
        assert!(host.block_exploits && host.allow_websocket_upgrade && host.enabled);
        assert!(!host.ssl_forced);
        assert_eq!(host.forward_port, 80);
        assert!(host.is_managed());
        assert_eq!(host.nginx_online(), Some(true));
        assert_eq!(host.trust_forwarded_proto, None);
    }

    #[test]
    fn meta_merge_keeps_foreign_keys_and_drops_nginx_state() {
        let host: ProxyHost = serde_json::from_value(json!({
            "id": 1, "meta": {"letsencrypt_agree": false, "nginx_online": true, "nginx_err": null}
        }))
        .unwrap();
        assert_eq!(
            Value::Object(host.meta_with_marker()),
            json!({"letsencrypt_agree": false, "skipper": true})
        );
    }

    #[test]
    fn ssl_options_without_certificate_are_normalised_like_npm_does() {
        let mut r = route();
        r.options.http2 = true;
        r.options.ssl_forced = true;
        let s = Settings::desired(&r, None);
        assert!(!s.http2_support && !s.ssl_forced);
        r.options.certificate_id = Some(4);
        let s = Settings::desired(&r, None);
        assert!(s.http2_support && s.ssl_forced);
    }

    #[test]
    fn changes_list_only_differing_fields() {
        let want = Settings::desired(&route(), None);
        let mut have = want.clone();
        have.forward_port = 9090;
        assert_eq!(
            Value::Object(want.changes_from(&have)),
            json!({"forward_port": 8080})
        );
        assert!(want.changes_from(&want).is_empty());
    }

    #[test]
    fn route_problems_are_caught_before_sending() {
        assert!(route_problem(&route()).is_none());
        let mut r = route();
        r.domain = "a/b".into();
        assert!(route_problem(&r).is_some());
        let mut r = route();
        r.upstream.scheme = "tcp".into();
        assert!(route_problem(&r).is_some());
    }

    #[test]
    fn versions_gate_features() {
        assert!(!NpmVersion::new(2, 13, 9).supports_trust_forwarded_proto());
        assert!(NpmVersion::new(2, 14, 0).supports_trust_forwarded_proto());
        assert!(NpmVersion::new(2, 15, 1).has_token_not_found_quirk());
        assert!(!NpmVersion::new(2, 12, 6).has_token_not_found_quirk());
        assert_eq!(NpmVersion::new(2, 12, 3).to_string(), "2.12.3");
    }
}
