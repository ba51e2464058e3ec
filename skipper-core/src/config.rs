//! The configuration file (`skipper.yaml`), parsed with serde-saphyr and validated with errors that
//! name the field and its line.
//!
//! ```yaml
//! global:
//!   domain: example.com
//!   network: skipper-net
//!   subdomain_pattern: "stage-{stage}-{project}"
//!   notification_url: https://notify.example.com/hook
//! npm: { url: http://npm:81, email: ops@example.com, password: "..." }
//! # or, instead of npm: Caddy through its admin API
//! # proxy: { kind: caddy, url: http://127.0.0.1:2019, server: srv0, upstream: published, listen: ":80", drain: 30s }
//! registries:
//!   gitea: { url: https://git.example.com, type: gitea, username: ci, token: "..." }
//! projects:
//!   web-app:
//!     registry: gitea
//!     image: git.example.com/team/web-app
//!     port: 3000
//!     healthcheck: /api/health
//!     env: { NODE_ENV: production }
//!     stages:
//!       dev:  { tag_pattern: "dev-*", auto_deploy: true,  max_instances: 5 }
//!       rel:  { tag_pattern: "v*",    auto_deploy: false, max_instances: 2 }
//!       prod: { tag_pattern: "v*", confirm: true, promote_from: rel, max_instances: 2, subdomain: launcher }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_saphyr::Spanned;
use url::Url;

use crate::error::{Error, Result};
use crate::model::{HealthCheck, Project, RouteOptions, Stage, duration_str, validate_name};
use crate::pattern::TagPattern;
use crate::reference::ImageRef;
use crate::subdomain::{self, DomainScheme};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Settings for every project.
    pub global: GlobalConfig,
    /// Nginx Proxy Manager, if configured.
    pub npm: Option<NpmSettings>,
    /// The `proxy:` section: which proxy routes the domains (`kind: npm` is the `npm:` section's,
    /// `kind: caddy` Caddy's admin API) and the drain period.
    pub proxy: Option<ProxySettings>,
    /// Registries by name.
    pub registries: BTreeMap<String, RegistrySettings>,
    /// Projects, validated, by name.
    pub projects: BTreeMap<String, Project>,
    /// Where events go (besides `global.notification_url`).
    pub notifications: Vec<NotificationTarget>,
}

/// One `notifications:` entry: where events go, in which format, which of them.
#[derive(Debug, Clone)]
pub struct NotificationTarget {
    /// The URL (a secret: chat webhooks carry their token in it).
    pub url: SecretUrl,
    /// The body's format.
    pub format: NotifyFormat,
    /// Signs each delivery (`X-Skipper-Signature: sha256=<HMAC-SHA256 of "timestamp.body">`).
    pub secret: Option<SecretString>,
    /// Only these kinds of events (empty: all).
    pub events: Vec<crate::model::EventKind>,
    /// Only these projects' events (empty: all).
    pub projects: Vec<String>,
}

impl NotificationTarget {
    /// Whether this target wants `event`.
    pub fn wants(&self, event: &crate::model::Event) -> bool {
        event.kind == crate::model::EventKind::Test
            || ((self.events.is_empty() || self.events.contains(&event.kind))
                && (self.projects.is_empty() || self.projects.contains(&event.project)))
    }
}

/// How a notification's body looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// The event as JSON (signed with `secret`, when set).
    #[default]
    Webhook,
    /// `{"text": …}`: Slack, Mattermost, Rocket.Chat.
    Slack,
    /// `{"content": …}`: Discord.
    Discord,
    /// A plain-text message with a `Title` header: ntfy.
    Ntfy,
}

/// The `global:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalConfig {
    /// Base domain (default `localhost`: browsers resolve `*.localhost` to 127.0.0.1).
    pub domain: String,
    /// The shared Docker network (default `skipper-net`).
    pub network: String,
    /// The stage label pattern.
    pub subdomain_pattern: String,
    /// Where events are POSTed as JSON, if anywhere. A secret: Slack, Discord and similar URLs
    /// are bearer tokens, so `Debug` shows only the host.
    pub notification_url: Option<SecretUrl>,
    /// How often `watch` polls registries.
    pub poll_interval: Duration,
    /// A pushed image of no known project is quick-deployed (from the image's own metadata)
    /// by the server's webhook, instead of being ignored.
    pub auto_create: bool,
}

/// A URL that is a secret (a webhook URL carrying its token in the path or query): `Debug` and
/// [`host`](Self::host) show only the scheme and host; [`expose`](Self::expose) gives the URL to
/// the one call that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Url);

impl SecretUrl {
    /// Keep `url` as a secret.
    pub fn new(url: Url) -> Self {
        Self(url)
    }

    /// The URL itself, for the request that uses it. Never log it.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// `scheme://host[:port]`, safe to show.
    pub fn host(&self) -> String {
        let host = self.0.host_str().unwrap_or("?");
        match self.0.port() {
            Some(port) => format!("{}://{host}:{port}", self.0.scheme()),
            None => format!("{}://{host}", self.0.scheme()),
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretUrl({}/[REDACTED])", self.host())
    }
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            network: "skipper-net".into(),
            subdomain_pattern: subdomain::DEFAULT_PATTERN.into(),
            notification_url: None,
            poll_interval: Duration::from_secs(300),
            auto_create: false,
        }
    }
}

impl GlobalConfig {
    /// The domain scheme these settings describe.
    pub fn domains(&self) -> DomainScheme {
        DomainScheme {
            domain: self.domain.clone(),
            pattern: self.subdomain_pattern.clone(),
        }
    }
}

/// How the proxy reaches containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamMode {
    /// Container name and app port on the shared network (the proxy runs on that network).
    #[default]
    Network,
    /// The port published on the host (`127.0.0.1:PORT`, or `upstream_host` if set).
    Published,
}

/// The `npm:` section.
#[derive(Debug, Clone)]
pub struct NpmSettings {
    /// NPM's admin URL (`http://npm:81`).
    pub url: Url,
    /// The account's email.
    pub email: String,
    /// The account's password.
    pub password: SecretString,
    /// How NPM reaches containers.
    pub upstream: UpstreamMode,
    /// With `upstream: published`, the host NPM should forward to (default `127.0.0.1`).
    pub upstream_host: Option<String>,
}

/// The `proxy:` section.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The proxy.
    pub backend: ProxyBackend,
    /// After the stage's domain switched away from an instance, wait this long before stopping
    /// it, so requests it already has finish (default 30 s, kamal-proxy's).
    pub drain: Duration,
}

/// Which reverse proxy the `proxy:` section names.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProxyBackend {
    /// `kind: npm`: Nginx Proxy Manager, configured by the `npm:` section.
    Npm,
    /// `kind: caddy`: Caddy through its admin API.
    Caddy(CaddySettings),
}

/// `proxy: { kind: caddy, ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaddySettings {
    /// The admin API (default `http://127.0.0.1:2019`).
    pub url: Url,
    /// The HTTP server in Caddy's config that holds Skipper's routes (default `srv0`).
    pub server: String,
    /// Where that server listens when Skipper creates it (default `:80`).
    pub listen: String,
    /// How Caddy reaches containers.
    pub upstream: UpstreamMode,
    /// With `upstream: published`, the host Caddy should forward to (default `127.0.0.1`).
    pub upstream_host: Option<String>,
}

/// The kind of a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryType {
    /// Docker Hub.
    Dockerhub,
    /// GitHub Container Registry.
    Ghcr,
    /// Gitea or Forgejo's container registry.
    Gitea,
    /// Any other OCI distribution v2 registry.
    Distribution,
}

/// One entry of `registries:`.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The entry's name.
    pub name: String,
    /// The registry's URL.
    pub url: Url,
    /// Its kind.
    pub kind: RegistryType,
    /// User name, if any.
    pub username: Option<String>,
    /// Token or password, if any.
    pub token: Option<SecretString>,
}

impl RegistrySettings {
    /// `host[:port]` as it appears in image references.
    pub fn host(&self) -> String {
        match (self.url.host_str(), self.url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: RawGlobal,
    npm: Option<RawNpm>,
    proxy: Option<RawProxy>,
    #[serde(default)]
    registries: BTreeMap<String, RawRegistry>,
    #[serde(default)]
    projects: BTreeMap<String, RawProject>,
    #[serde(default)]
    notifications: Vec<RawNotification>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotification {
    url: Spanned<String>,
    #[serde(default)]
    format: NotifyFormat,
    secret: Option<SecretString>,
    #[serde(default)]
    events: Vec<crate::model::EventKind>,
    #[serde(default)]
    projects: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    domain: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    subdomain_pattern: Option<Spanned<String>>,
    notification_url: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    auto_create: bool,
    /// Accepted for compatibility with Docker Watcher seed files; unused.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted so Docker Watcher seed files load")]
    server_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNpm {
    url: Spanned<String>,
    email: String,
    password: SecretString,
    #[serde(default)]
    upstream: UpstreamMode,
    upstream_host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    server: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    upstream: Option<UpstreamMode>,
    upstream_host: Option<String>,
    drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    url: Spanned<String>,
    #[serde(rename = "type")]
    kind: RegistryType,
    username: Option<String>,
    token: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    registry: Option<Spanned<String>>,
    image: Spanned<String>,
    port: Option<Spanned<u16>>,
    healthcheck: Option<RawHealth>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    network: Option<String>,
    #[serde(default)]
    route: RouteOptions,
    #[serde(default)]
    stages: BTreeMap<String, RawStage>,
    node: Option<Spanned<String>>,
}

/// `healthcheck: /path` or `healthcheck: { path, interval, timeout, deadline, settle }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawHealth {
    Path(String),
    Full(RawHealthFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthFull {
    path: Option<String>,
    #[serde(default, with = "opt_duration")]
    interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    deadline: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    settle: Option<Duration>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::duration_str")] Duration);
        Ok(Some(W::deserialize(d)?.0))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    tag_pattern: Spanned<String>,
    #[serde(default)]
    auto_deploy: bool,
    max_instances: Option<Spanned<u32>>,
    #[serde(default)]
    confirm: bool,
    promote_from: Option<Spanned<String>>,
    subdomain: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
}

fn line_of<T>(s: &Spanned<T>) -> Option<usize> {
    usize::try_from(s.referenced.line()).ok().filter(|l| *l > 0)
}

/// Turn a validation error into a config error at `field` / `line`.
fn at(field: String, line: Option<usize>) -> impl FnOnce(Error) -> Error {
    move |e| Error::Config {
        field,
        line,
        message: e.to_string(),
    }
}

/// The 1-based line of the first `key:` at or after `from` (for map keys, which carry no span).
fn find_key_line(text: &str, key: &str, from: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches(['{', ' ']);
            t.starts_with(&format!("{key}:"))
                || t.starts_with(&format!("\"{key}\":"))
                || l.contains(&format!(" {key}:"))
        })
        .map(|(i, _)| i + 1)
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            field: path.display().to_string(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text)
    }

    /// Parse and validate YAML text.
    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let line = e
                    .location()
                    .and_then(|l| usize::try_from(l.line()).ok())
                    .filter(|l| *l > 0);
                // The first line of saphyr's message is the reason; the rest is a snippet.
                let message = e.to_string();
                let message = message.lines().next().unwrap_or("invalid YAML").to_owned();
                Error::Config {
                    field: "(yaml)".into(),
                    line,
                    message,
                }
            })?
        };
        Self::from_raw(raw, text)
    }

    /// One project from its JSON (or YAML) document, the fields of a project in
    /// `skipper.yaml`, validated as the config file is; `registries` are the names a
    /// `registry:` may refer to. Errors name the field (`projects.web.port`).
    pub fn parse_project(
        name: &str,
        document: &str,
        registries: &BTreeMap<String, RegistrySettings>,
    ) -> Result<Project> {
        let text = format!(
            "{{\"projects\": {{{}: {document}}}}}",
            serde_json::Value::String(name.to_owned())
        );
        let mut raw: RawConfig = serde_saphyr::from_str(&text).map_err(|e| {
            let message = e.to_string();
            Error::Config {
                field: format!("projects.{name}"),
                line: None,
                message: message
                    .lines()
                    .next()
                    .unwrap_or("invalid document")
                    .to_owned(),
            }
        })?;
        let p = raw
            .projects
            .remove(name)
            .ok_or_else(|| Error::rejected(format!("no project {name:?} in the document")))?;
        crate::model::validate_project_name(name).map_err(at(format!("projects.{name}"), None))?;
        build_project(name, p, registries, &text, 1)
    }

    /// A project as the document `skipper.yaml` (and the API) holds: its fields, stages by
    /// name, durations as `"30s"`. [`Config::parse_project`] reads it back to the same project.
    pub fn project_document(project: &Project) -> serde_json::Value {
        let h = &project.health;
        let stages: serde_json::Map<String, serde_json::Value> = project
            .stages
            .values()
            .map(|s| {
                let mut v = serde_json::json!({
                    "tag_pattern": s.tag_pattern,
                    "auto_deploy": s.auto_deploy,
                    "max_instances": s.max_instances,
                    "confirm": s.confirm,
                });
                if let Some(p) = &s.promote_from {
                    v["promote_from"] = p.clone().into();
                }
                if let Some(d) = &s.subdomain {
                    v["subdomain"] = d.clone().into();
                }
                if let Some(n) = &s.node {
                    v["node"] = n.clone().into();
                }
                (s.name.clone(), v)
            })
            .collect();
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut health = serde_json::json!({
            "interval": d(h.interval),
            "timeout": d(h.timeout),
            "deadline": d(h.deadline),
            "settle": d(h.settle),
        });
        if let Some(p) = &h.path {
            health["path"] = p.clone().into();
        }
        let mut v = serde_json::json!({
            "image": project.image,
            "healthcheck": health,
            "env": project.env,
            "volumes": project.volumes,
            "labels": project.labels,
            "route": project.route,
            "stages": stages,
        });
        if let Some(r) = &project.registry {
            v["registry"] = r.clone().into();
        }
        if let Some(n) = &project.node {
            v["node"] = n.clone().into();
        }
        if let Some(p) = project.port {
            v["port"] = p.into();
        }
        if let Some(n) = &project.network {
            v["network"] = n.clone().into();
        }
        v
    }

    /// `projects:` as YAML, for `skipper config export` (registries and secrets are not part
    /// of it). [`Config::parse`] reads it back.
    pub fn export_projects<'a>(projects: impl IntoIterator<Item = &'a Project>) -> String {
        let map: serde_json::Map<String, serde_json::Value> = projects
            .into_iter()
            .map(|p| (p.name.clone(), Self::project_document(p)))
            .collect();
        let doc = serde_json::json!({ "projects": map });
        serde_saphyr::to_string(&doc).unwrap_or_else(|_| doc.to_string())
    }

    fn from_raw(raw: RawConfig, text: &str) -> Result<Self> {
        let mut global = GlobalConfig::default();
        if let Some(d) = raw.global.domain {
            subdomain::validate_domain(&d.value)
                .map_err(at("global.domain".into(), line_of(&d)))?;
            global.domain = d.value;
        }
        if let Some(n) = raw.global.network {
            validate_network(&n.value).map_err(at("global.network".into(), line_of(&n)))?;
            global.network = n.value;
        }
        if let Some(p) = raw.global.subdomain_pattern {
            subdomain::validate_pattern(&p.value)
                .map_err(at("global.subdomain_pattern".into(), line_of(&p)))?;
            global.subdomain_pattern = p.value;
        }
        if let Some(u) = raw.global.notification_url {
            global.notification_url =
                Some(SecretUrl::new(parse_url(&u, "global.notification_url")?));
        }
        if let Some(i) = raw.global.poll_interval {
            global.poll_interval =
                humantime::parse_duration(&i.value).map_err(|e| Error::Config {
                    field: "global.poll_interval".into(),
                    line: line_of(&i),
                    message: format!(
                        "invalid duration {:?} ({e}); write it like \"30s\"",
                        i.value
                    ),
                })?;
        }

        global.auto_create = raw.global.auto_create;

        let npm = raw
            .npm
            .map(|n| -> Result<NpmSettings> {
                Ok(NpmSettings {
                    url: parse_url(&n.url, "npm.url")?,
                    email: n.email,
                    password: n.password,
                    upstream: n.upstream,
                    upstream_host: n.upstream_host,
                })
            })
            .transpose()?;
        let proxy = raw
            .proxy
            .map(|p| build_proxy(p, npm.is_some(), text))
            .transpose()?;

        let mut registries = BTreeMap::new();
        for (name, r) in raw.registries {
            let field = format!("registries.{name}");
            validate_name("registry name", &name)
                .map_err(at(field.clone(), find_key_line(text, &name, 1)))?;
            let url = parse_url(&r.url, &format!("{field}.url"))?;
            registries.insert(
                name.clone(),
                RegistrySettings {
                    name,
                    url,
                    kind: r.kind,
                    username: r.username,
                    token: r.token,
                },
            );
        }

        let projects_line = find_key_line(text, "projects", 1).unwrap_or(1);
        let mut projects = BTreeMap::new();
        for (name, p) in raw.projects {
            let field = format!("projects.{name}");
            let name_line = find_key_line(text, &name, projects_line);
            crate::model::validate_project_name(&name).map_err(at(field.clone(), name_line))?;
            let project = build_project(&name, p, &registries, text, name_line.unwrap_or(1))?;
            projects.insert(name, project);
        }

        let mut notifications = Vec::new();
        for (i, n) in raw.notifications.into_iter().enumerate() {
            notifications.push(NotificationTarget {
                url: SecretUrl::new(parse_url(&n.url, &format!("notifications[{i}].url"))?),
                format: n.format,
                secret: n.secret,
                events: n.events,
                projects: n.projects,
            });
        }

        Ok(Self {
            global,
            npm,
            proxy,
            registries,
            projects,
            notifications,
        })
    }
}

fn build_project(
    name: &str,
    p: RawProject,
    registries: &BTreeMap<String, RegistrySettings>,
    text: &str,
    name_line: usize,
) -> Result<Project> {
    let field = format!("projects.{name}");
    let image_ref =
        ImageRef::parse(&p.image.value).map_err(at(format!("{field}.image"), line_of(&p.image)))?;
    let last_segment = p.image.value.rsplit('/').next().unwrap_or_default();
    if last_segment.contains(':') || p.image.value.contains('@') {
        return Err(Error::Config {
            field: format!("{field}.image"),
            line: line_of(&p.image),
            message: format!(
                "{:?} has a tag or digest; give the repository only ({}), stages choose tags",
                p.image.value,
                image_ref.name()
            ),
        });
    }
    let mut project = Project::new(name, &image_ref.name())?;

    if let Some(reg) = p.registry {
        if !registries.contains_key(&reg.value) {
            return Err(Error::Config {
                field: format!("{field}.registry"),
                line: line_of(&reg),
                message: format!(
                    "no registry named {:?} under `registries:` (known: {})",
                    reg.value,
                    registries.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        project.registry = Some(reg.value);
    }
    if let Some(port) = p.port {
        if port.value == 0 {
            return Err(Error::Config {
                field: format!("{field}.port"),
                line: line_of(&port),
                message: "a port is 1-65535".into(),
            });
        }
        project.port = Some(port.value);
    }
    let health_line = find_key_line(text, "healthcheck", name_line);
    project.health = match p.healthcheck {
        None => HealthCheck::default(),
        Some(RawHealth::Path(path)) => HealthCheck {
            path: Some(path),
            ..HealthCheck::default()
        },
        Some(RawHealth::Full(h)) => {
            let d = HealthCheck::default();
            HealthCheck {
                path: h.path,
                interval: h.interval.unwrap_or(d.interval),
                timeout: h.timeout.unwrap_or(d.timeout),
                deadline: h.deadline.unwrap_or(d.deadline),
                settle: h.settle.unwrap_or(d.settle),
            }
        }
    };
    project.health.validate().map_err(|message| Error::Config {
        field: format!("{field}.healthcheck"),
        line: health_line,
        message,
    })?;
    for key in p.env.keys() {
        if let Err(reason) = validate_env_name(key) {
            return Err(Error::Config {
                field: format!("{field}.env"),
                line: find_key_line(text, "env", name_line),
                message: reason,
            });
        }
    }
    project.env = p.env;
    project.volumes = p.volumes;
    project.labels = p.labels;
    if let Some(n) = &p.network {
        validate_network(n).map_err(at(
            format!("{field}.network"),
            find_key_line(text, "network", name_line),
        ))?;
    }
    project.network = p.network;
    project.route = p.route;
    if let Some(n) = &p.node {
        crate::model::validate_node(&n.value).map_err(at(format!("{field}.node"), line_of(n)))?;
    }
    project.node = p.node.map(|n| n.value);

    let stages_line = find_key_line(text, "stages", name_line).unwrap_or(name_line);
    let mut promote_lines: BTreeMap<String, Option<usize>> = BTreeMap::new();
    for (sname, s) in p.stages {
        let sfield = format!("{field}.stages.{sname}");
        validate_name("stage name", &sname)
            .map_err(at(sfield.clone(), find_key_line(text, &sname, stages_line)))?;
        TagPattern::new(&s.tag_pattern.value)
            .map_err(at(format!("{sfield}.tag_pattern"), line_of(&s.tag_pattern)))?;
        let max_instances = match s.max_instances {
            Some(m) if m.value == 0 => {
                return Err(Error::Config {
                    field: format!("{sfield}.max_instances"),
                    line: line_of(&m),
                    message: "must be at least 1".into(),
                });
            }
            Some(m) => m.value,
            None => 1,
        };
        promote_lines.insert(sname.clone(), s.promote_from.as_ref().and_then(line_of));
        if let Some(sub) = &s.subdomain {
            subdomain::validate_label(&sub.value)
                .map_err(at(format!("{sfield}.subdomain"), line_of(sub)))?;
        }
        if let Some(n) = &s.node {
            crate::model::validate_node(&n.value)
                .map_err(at(format!("{sfield}.node"), line_of(n)))?;
        }
        project.stages.insert(
            sname.clone(),
            Stage {
                name: sname,
                tag_pattern: s.tag_pattern.value,
                auto_deploy: s.auto_deploy,
                max_instances,
                confirm: s.confirm,
                promote_from: s.promote_from.map(|f| f.value),
                subdomain: s.subdomain.map(|f| f.value),
                node: s.node.map(|f| f.value),
            },
        );
    }
    // The model's own check (the engine runs it too), placed at the stage's `promote_from`.
    if let Some(e) = project.promotion_error() {
        return Err(Error::Config {
            field: format!("{field}.stages.{}.promote_from", e.stage),
            line: promote_lines.get(&e.stage).copied().flatten(),
            message: e.reason,
        });
    }
    project.validate().map_err(at(field, Some(name_line)))?;
    Ok(project)
}

fn build_proxy(p: RawProxy, has_npm: bool, text: &str) -> Result<ProxySettings> {
    let kind_line = line_of(&p.kind);
    let drain = match &p.drain {
        None => Duration::from_secs(30),
        Some(d) => humantime::parse_duration(&d.value).map_err(|e| Error::Config {
            field: "proxy.drain".into(),
            line: line_of(d),
            message: format!(
                "invalid duration {:?} ({e}); write it like \"30s\"",
                d.value
            ),
        })?,
    };
    let backend = match p.kind.value.as_str() {
        "npm" => {
            if !has_npm {
                return Err(Error::Config {
                    field: "proxy.kind".into(),
                    line: kind_line,
                    message: "kind npm routes through the `npm:` section, which is missing".into(),
                });
            }
            let caddy_only = [
                ("url", p.url.is_some()),
                ("server", p.server.is_some()),
                ("listen", p.listen.is_some()),
                ("upstream", p.upstream.is_some()),
                ("upstream_host", p.upstream_host.is_some()),
            ];
            if let Some((key, _)) = caddy_only.iter().find(|(_, set)| *set) {
                return Err(Error::Config {
                    field: format!("proxy.{key}"),
                    line: find_key_line(text, key, kind_line.unwrap_or(1)),
                    message: format!(
                        "with kind npm, NPM's settings are in the `npm:` section (npm.{key})"
                    ),
                });
            }
            ProxyBackend::Npm
        }
        "caddy" => {
            if has_npm {
                return Err(Error::Config {
                    field: "proxy.kind".into(),
                    line: kind_line,
                    message: "kind caddy routes through Caddy, but an `npm:` section is there \
                              too; remove one of them"
                        .into(),
                });
            }
            let url = match &p.url {
                Some(u) => parse_url(u, "proxy.url")?,
                None => Url::parse("http://127.0.0.1:2019").expect("a valid URL"),
            };
            let server = match p.server {
                None => "srv0".to_owned(),
                Some(s) => {
                    let ok = !s.value.is_empty()
                        && s.value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        return Err(Error::Config {
                            field: "proxy.server".into(),
                            line: line_of(&s),
                            message: format!(
                                "{:?} is not a server name: use letters, digits, '-', '_' and '.'",
                                s.value
                            ),
                        });
                    }
                    s.value
                }
            };
            let listen = match p.listen {
                None => ":80".to_owned(),
                Some(l) => {
                    let port_ok = l
                        .value
                        .rsplit_once(':')
                        .is_some_and(|(_, port)| port.parse::<u16>().is_ok_and(|p| p > 0));
                    if !port_ok {
                        return Err(Error::Config {
                            field: "proxy.listen".into(),
                            line: line_of(&l),
                            message: format!(
                                "{:?} is not a listen address: write it like \":80\" or \
                                 \"127.0.0.1:8080\"",
                                l.value
                            ),
                        });
                    }
                    l.value
                }
            };
            ProxyBackend::Caddy(CaddySettings {
                url,
                server,
                listen,
                upstream: p.upstream.unwrap_or_default(),
                upstream_host: p.upstream_host,
            })
        }
        other => {
            return Err(Error::Config {
                field: "proxy.kind".into(),
                line: kind_line,
                message: format!("unknown proxy kind {other:?} (known: caddy, npm)"),
            });
        }
    };
    Ok(ProxySettings { backend, drain })
}

fn parse_url(s: &Spanned<String>, field: &str) -> Result<Url> {
    let url = Url::parse(&s.value).map_err(|e| Error::Config {
        field: field.to_owned(),
        line: line_of(s),
        message: format!("{:?} is not a URL: {e}", s.value),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config {
            field: field.to_owned(),
            line: line_of(s),
            message: format!("{:?} must be an http:// or https:// URL", s.value),
        });
    }
    Ok(url)
}

/// Environment variable names, in the config's `env:` and on the command line (`--env K=V`):
/// `[A-Za-z_][A-Za-z0-9_]*`, so that a name with a space, `=` or a newline never reaches a
/// container. The error says what is wrong.
pub fn validate_env_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid environment variable name: use letters, digits and '_', \
             not starting with a digit"
        ))
    }
}

/// Docker network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub fn validate_network(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "network name",
            value: name.to_owned(),
            reason: "use letters, digits, '_', '.' and '-', starting with a letter or digit".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const EXAMPLE: &str = r#"global:
  domain: example.com
  network: skipper-net
  subdomain_pattern: "stage-{stage}-{project}"
  notification_url: https://notify.example.com/hook
npm: { url: http://npm:81, email: ops@example.com, password: "npm-pass" }
registries:
  gitea: { url: https://git.example.com, type: gitea, username: ci, token: "tok" }
projects:
  web-app:
    registry: gitea
    image: git.example.com/team/web-app
    port: 3000
    healthcheck: /api/health
    env: { NODE_ENV: production }
    stages:
      dev:  { tag_pattern: "dev-*", auto_deploy: true,  max_instances: 5 }
      rel:  { tag_pattern: "v*",    auto_deploy: false, max_instances: 2 }
      prod: { tag_pattern: "v*", confirm: true, promote_from: rel, max_instances: 2, subdomain: launcher }
"#;

    #[test]
    fn parses_the_example() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.global.domain, "example.com");
        assert_eq!(c.global.network, "skipper-net");
        let npm = c.npm.as_ref().unwrap();
        assert_eq!(npm.password.expose_secret(), "npm-pass");
        assert_eq!(c.registries["gitea"].kind, RegistryType::Gitea);
        assert_eq!(c.registries["gitea"].host(), "git.example.com");
        let p = &c.projects["web-app"];
        assert_eq!(p.image, "git.example.com/team/web-app");
        assert_eq!(p.port, Some(3000));
        assert_eq!(p.health.path.as_deref(), Some("/api/health"));
        assert_eq!(p.env["NODE_ENV"], "production");
        assert_eq!(p.stages.len(), 3);
        let prod = &p.stages["prod"];
        assert!(prod.confirm);
        assert_eq!(prod.promote_from.as_deref(), Some("rel"));
        assert_eq!(prod.subdomain.as_deref(), Some("launcher"));
        assert_eq!(prod.max_instances, 2);
        assert!(p.stages["dev"].auto_deploy);
        assert_eq!(
            c.global
                .domains()
                .stage_domain("web-app", "prod", prod.subdomain.as_deref()),
            "launcher.example.com"
        );
        // Secrets never show in Debug.
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("npm-pass") && !dbg.contains("\"tok\""),
            "{dbg}"
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.global, GlobalConfig::default());
        assert!(c.projects.is_empty());
    }

    fn err(text: &str) -> (String, Option<usize>, String) {
        match Config::parse(text).unwrap_err() {
            Error::Config {
                field,
                line,
                message,
            } => (field, line, message),
            other => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn node_events_may_be_filtered_as_node_dot_online_and_offline() {
        use crate::model::EventKind;
        let c = Config::parse(
            "notifications:\n  - { url: \"https://a.test/x\", events: [node.offline, node.online, node_offline] }\n",
        )
        .unwrap();
        assert_eq!(
            c.notifications[0].events,
            vec![
                EventKind::NodeOffline,
                EventKind::NodeOnline,
                EventKind::NodeOffline
            ]
        );
    }

    #[test]
    fn a_test_event_reaches_every_target_whatever_its_filters() {
        let c = Config::parse(
            "notifications:\n  - { url: \"https://a.test/x\", events: [deploy_failed], projects: [web] }\n",
        )
        .unwrap();
        let t = &c.notifications[0];
        let event = |kind, project: &str| crate::model::Event {
            kind,
            project: project.into(),
            stage: String::new(),
            image: None,
            deployment_id: None,
            instance_id: None,
            url: None,
            message: String::new(),
            at: chrono::Utc::now(),
            correlation_id: None,
        };
        use crate::model::EventKind;
        assert!(t.wants(&event(EventKind::DeployFailed, "web")));
        assert!(!t.wants(&event(EventKind::DeployFailed, "api")));
        assert!(!t.wants(&event(EventKind::DeploySucceeded, "web")));
        assert!(t.wants(&event(EventKind::Test, "")));
    }

    #[test]
    fn a_project_or_stage_names_its_node() {
        let text = "projects:\n  web:\n    image: reg/web\n    node: host-1\n    stages:\n      dev: { tag_pattern: \"*\" }\n      prod: { tag_pattern: \"v*\", node: edge_2 }\n";
        let c = Config::parse(text).unwrap();
        let p = &c.projects["web"];
        assert_eq!(p.node_of("dev"), Some("host-1"));
        assert_eq!(p.node_of("prod"), Some("edge_2"));
        // The document keeps both, and reads back to the same project.
        let doc = Config::project_document(p);
        assert_eq!(doc["node"], "host-1");
        assert_eq!(doc["stages"]["prod"]["node"], "edge_2");
        let back = Config::parse_project("web", &doc.to_string(), &BTreeMap::new()).unwrap();
        assert_eq!(&back, p);

        let (field, line, msg) = err(&text.replace("node: host-1", "node: Host/1"));
        assert_eq!(field, "projects.web.node");
        assert_eq!(line, Some(4));
        assert!(msg.contains("a-z, 0-9"), "{msg}");
        let (field, line, _) = err(&text.replace("node: edge_2", "node: \"../x\""));
        assert_eq!(field, "projects.web.stages.prod.node");
        assert_eq!(line, Some(7));
    }

    #[test]
    fn errors_name_field_and_line() {
        let bad_pattern = EXAMPLE.replace("\"dev-*\"", "\"dev-[\"");
        let (field, line, msg) = err(&bad_pattern);
        assert_eq!(field, "projects.web-app.stages.dev.tag_pattern");
        assert_eq!(line, Some(17));
        assert!(msg.contains("tag pattern"), "{msg}");

        let bad_promote = EXAMPLE.replace("promote_from: rel", "promote_from: qa");
        let (field, line, msg) = err(&bad_promote);
        assert_eq!(field, "projects.web-app.stages.prod.promote_from");
        assert_eq!(line, Some(19));
        assert!(msg.contains("\"qa\""), "{msg}");

        // A cycle is named at the promote_from of its first stage (by name).
        let cycle = EXAMPLE.replace(
            "rel:  { tag_pattern: \"v*\",",
            "rel:  { tag_pattern: \"v*\", promote_from: prod,",
        );
        let (field, line, msg) = err(&cycle);
        assert_eq!(field, "projects.web-app.stages.prod.promote_from");
        assert_eq!(line, Some(19));
        assert!(msg.contains("prod → rel → prod"), "{msg}");

        let bad_registry = EXAMPLE.replace("registry: gitea", "registry: github");
        let (field, line, _) = err(&bad_registry);
        assert_eq!(field, "projects.web-app.registry");
        assert_eq!(line, Some(11));

        let bad_image = EXAMPLE.replace("team/web-app\n", "Team/Web-App\n");
        let (field, line, msg) = err(&bad_image);
        assert_eq!(field, "projects.web-app.image");
        assert_eq!(line, Some(12));
        assert!(msg.contains("lower-case"), "{msg}");

        let tagged_image = EXAMPLE.replace("team/web-app\n", "team/web-app:v1\n");
        let (field, _, msg) = err(&tagged_image);
        assert_eq!(field, "projects.web-app.image");
        assert!(msg.contains("repository only"), "{msg}");

        let bad_name = EXAMPLE.replace("  web-app:\n", "  Web_App:\n");
        let (field, line, _) = err(&bad_name);
        assert_eq!(field, "projects.Web_App");
        assert_eq!(line, Some(10));

        let bad_sub = EXAMPLE.replace("subdomain: launcher", "subdomain: Launcher");
        let (field, line, _) = err(&bad_sub);
        assert_eq!(field, "projects.web-app.stages.prod.subdomain");
        assert_eq!(line, Some(19));

        let zero = EXAMPLE.replace("max_instances: 5", "max_instances: 0");
        let (field, line, _) = err(&zero);
        assert_eq!(field, "projects.web-app.stages.dev.max_instances");
        assert_eq!(line, Some(17));

        let bad_domain = EXAMPLE.replace("domain: example.com", "domain: exa_mple.com");
        let (field, line, _) = err(&bad_domain);
        assert_eq!(field, "global.domain");
        assert_eq!(line, Some(2));

        let bad_url = EXAMPLE.replace("https://notify.example.com/hook", "ftp://x");
        let (field, line, _) = err(&bad_url);
        assert_eq!(field, "global.notification_url");
        assert_eq!(line, Some(5));
    }

    #[test]
    fn env_names_are_checked_by_the_shared_validator() {
        for good in ["NODE_ENV", "_x", "a1", "PATH"] {
            assert_eq!(validate_env_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1A", "A B", "A=B", "A\nB", "A-B", "É"] {
            let msg = validate_env_name(bad).unwrap_err();
            assert!(
                msg.contains("not a valid environment variable name"),
                "{bad:?}: {msg}"
            );
        }
        let spaced = EXAMPLE.replace("NODE_ENV: production", "\"NODE ENV\": production");
        let (field, line, msg) = err(&spaced);
        assert_eq!(field, "projects.web-app.env");
        assert!(line.is_some());
        assert!(msg.contains("\"NODE ENV\""), "{msg}");
        let newline = EXAMPLE.replace("NODE_ENV: production", "\"A\\nB\": production");
        let (field, _, _) = err(&newline);
        assert_eq!(field, "projects.web-app.env");
    }

    #[test]
    fn yaml_errors_carry_a_line() {
        let unknown = EXAMPLE.replace("    port: 3000\n", "    prot: 3000\n");
        let (field, line, msg) = err(&unknown);
        assert_eq!(field, "(yaml)");
        assert_eq!(line, Some(13), "{msg}");
        assert!(msg.contains("prot"), "{msg}");

        let wrong_type = EXAMPLE.replace("port: 3000", "port: lots");
        let (_, line, _) = err(&wrong_type);
        assert_eq!(line, Some(13));

        let (_, line, _) = err("projects:\n  a: [1, 2\n");
        assert!(line.is_some());
    }

    #[test]
    fn healthcheck_as_a_map() {
        let text = EXAMPLE.replace(
            "healthcheck: /api/health",
            "healthcheck: { path: /up, interval: 2s, timeout: 1s, deadline: 30s }",
        );
        let c = Config::parse(&text).unwrap();
        let h = &c.projects["web-app"].health;
        assert_eq!(h.path.as_deref(), Some("/up"));
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.deadline, Duration::from_secs(30));

        let bad = EXAMPLE.replace("healthcheck: /api/health", "healthcheck: api/health");
        let (field, line, _) = err(&bad);
        assert_eq!(field, "projects.web-app.healthcheck");
        assert_eq!(line, Some(14));
    }

    #[test]
    fn the_proxy_section_names_caddy_or_npm() {
        let c = Config::parse(
            "proxy: { kind: caddy, url: http://127.0.0.1:2019, server: srv0, upstream: published, listen: \":80\", drain: 2s }\n",
        )
        .unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.drain, Duration::from_secs(2));
        let ProxyBackend::Caddy(caddy) = p.backend else {
            panic!("not caddy: {:?}", p.backend)
        };
        assert_eq!(caddy.url.as_str(), "http://127.0.0.1:2019/");
        assert_eq!(
            (caddy.server.as_str(), caddy.listen.as_str()),
            ("srv0", ":80")
        );
        assert_eq!(caddy.upstream, UpstreamMode::Published);

        // Defaults: Caddy's own admin address, srv0 on :80, the shared network, 30 s drain.
        let p = Config::parse("proxy: { kind: caddy }\n")
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!(p.drain, Duration::from_secs(30));
        let ProxyBackend::Caddy(caddy) = p.backend else {
            panic!("not caddy")
        };
        assert_eq!(caddy.url.as_str(), "http://127.0.0.1:2019/");
        assert_eq!(
            (caddy.server.as_str(), caddy.listen.as_str()),
            ("srv0", ":80")
        );
        assert_eq!(caddy.upstream, UpstreamMode::Network);

        // kind npm is the npm: section's backend.
        let npm = "npm: { url: http://npm:81, email: a@b.c, password: pw }\nproxy: { kind: npm, drain: 5s }\n";
        let c = Config::parse(npm).unwrap();
        assert!(matches!(c.proxy.unwrap().backend, ProxyBackend::Npm));
        assert!(c.npm.is_some());
        assert!(Config::parse("").unwrap().proxy.is_none());
    }

    #[test]
    fn proxy_errors_name_the_field() {
        let (field, line, msg) = err("global:\n  domain: localhost\nproxy: { kind: traefik }\n");
        assert_eq!((field.as_str(), line), ("proxy.kind", Some(3)));
        assert!(msg.contains("traefik") && msg.contains("caddy"), "{msg}");
        let (field, _, msg) = err("proxy: { kind: npm }\n");
        assert_eq!(field, "proxy.kind");
        assert!(msg.contains("npm:"), "{msg}");
        let both =
            "npm: { url: http://npm:81, email: a@b.c, password: pw }\nproxy: { kind: caddy }\n";
        assert_eq!(err(both).0, "proxy.kind");
        let npm_url = "npm: { url: http://npm:81, email: a@b.c, password: pw }\nproxy:\n  kind: npm\n  url: http://x\n";
        let (field, line, _) = err(npm_url);
        assert_eq!((field.as_str(), line), ("proxy.url", Some(4)));
        let (field, line, _) = err("proxy:\n  kind: caddy\n  url: ftp://x\n");
        assert_eq!((field.as_str(), line), ("proxy.url", Some(3)));
        let (field, line, _) = err("proxy:\n  kind: caddy\n  server: \"a/b\"\n");
        assert_eq!((field.as_str(), line), ("proxy.server", Some(3)));
        let (field, _, _) = err("proxy: { kind: caddy, listen: \"80\" }\n");
        assert_eq!(field, "proxy.listen");
        let (field, _, msg) = err("proxy: { kind: caddy, drain: soon }\n");
        assert_eq!(field, "proxy.drain");
        assert!(msg.contains("30s"), "{msg}");
        let (field, _, _) = err("proxy: { kind: caddy, upstream: sideways }\n");
        assert_eq!(field, "(yaml)");
    }

    #[test]
    fn never_panics_on_garbage() {
        for text in [
            "{",
            "- - -",
            "projects: 3",
            "global: []",
            "\u{0}",
            "projects:\n  x:\n",
        ] {
            assert!(Config::parse(text).is_err(), "{text:?}");
        }
    }
}

#[cfg(test)]
mod document_tests {
    use super::*;

    const YAML: &str = r#"
projects:
  web:
    image: localhost:5000/team/web
    port: 8080
    healthcheck: { path: /health, deadline: 45s }
    env: { A: "1" }
    stages:
      dev: { tag_pattern: "dev-*", auto_deploy: true }
      prod: { tag_pattern: "v*", confirm: true, promote_from: dev, subdomain: launcher, max_instances: 2 }
"#;

    #[test]
    fn a_project_document_reads_back_to_the_same_project() {
        let c = Config::parse(YAML).unwrap();
        let web = &c.projects["web"];
        let doc = Config::project_document(web);
        let back = Config::parse_project("web", &doc.to_string(), &c.registries).unwrap();
        assert_eq!(&back, web);
        let exported = Config::export_projects(c.projects.values());
        assert_eq!(Config::parse(&exported).unwrap().projects, c.projects);
    }

    #[test]
    fn a_bad_project_document_names_the_field() {
        let none = BTreeMap::new();
        for (doc, field) in [
            (r#"{"image": "x/y", "port": 0}"#, "projects.web.port"),
            (r#"{"image": "x/y:v1"}"#, "projects.web.image"),
            (
                r#"{"image": "x/y", "registry": "nope"}"#,
                "projects.web.registry",
            ),
            (
                r#"{"image": "x/y", "stages": {"a": {"tag_pattern": "["}}}"#,
                "projects.web.stages.a.tag_pattern",
            ),
            (r#"{"image": "x/y", "bogus": 1}"#, "projects.web"),
            (r#"{"image": "#, "projects.web"),
        ] {
            match Config::parse_project("web", doc, &none) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(Config::parse_project("Bad Name", r#"{"image": "x/y"}"#, &none).is_err());
    }
}
