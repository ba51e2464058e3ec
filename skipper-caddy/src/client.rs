//! [`CaddyClient`]: conditional changes of Caddy's JSON config through its admin API, and the
//! route operations on top of them.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};
use skipper_core::{ProxyManager, Route};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use url::Url;

use crate::api::{
    desired_route, etag, id_of, is_skippers, parse_route, proxy_id, proxy_upstreams, route_id,
    route_problem, serves, serves_only, with_upstreams,
};
use crate::config::CaddyConfig;
use crate::error::{CaddyError, Result};

/// A client for Caddy's admin API, and Skipper's [`ProxyManager`] on top of it.
///
/// Cheap to share (`Arc<CaddyClient>`); all methods take `&self`. Every request opens a fresh
/// connection: Caddy closes idle keep-alive connections of its admin endpoint on every config
/// reload, and a request sent on such a connection would fail although Caddy is fine. See the
/// [crate docs](crate) for how each operation maps to the admin API.
#[derive(Debug)]
pub struct CaddyClient {
    http: reqwest::Client,
    base: Url,
    config: CaddyConfig,
    /// One change at a time from this client: Skipper's own concurrent operations (two stages
    /// deploying at once) never fail each other's `If-Match`.
    changes: Mutex<()>,
}

/// A config value as read, with the `ETag` that makes a change conditional on it.
struct Read {
    value: Value,
    etag: String,
}

/// The one change an ensure needs.
enum Change {
    /// `PATCH /id/skipper-proxy-<domain>/upstreams`: the switch.
    Upstreams(Value),
    /// `PATCH /id/skipper-route-<domain>`: Skipper's route differs in more than its upstreams.
    Replace,
    /// `PATCH …/routes/<index>`: take over a route made by hand (the project allows it).
    Adopt(usize),
    /// `PUT …/routes/<index>`: a new route, before the first route that is not Skipper's.
    InsertAt(usize),
    /// `POST …/routes`: a new route, at the end.
    Append,
    /// `PUT …/routes`: the server has no `routes` yet.
    FirstRoute,
}

impl CaddyClient {
    /// A client for the admin API at `config.url`. Makes no request (call
    /// [`check`](Self::check) to see that Caddy answers).
    pub fn new(config: CaddyConfig) -> Result<Self> {
        if !matches!(config.url.scheme(), "http" | "https") {
            return Err(CaddyError::Config {
                reason: format!("the URL must be http or https, not {}", config.url),
            });
        }
        let server_ok = !config.server.is_empty()
            && config
                .server
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !server_ok {
            return Err(CaddyError::Config {
                reason: format!(
                    "the server name {:?} must be letters, digits, '-', '_' and '.'",
                    config.server
                ),
            });
        }
        if config.listen.is_empty() {
            return Err(CaddyError::Config {
                reason: "the listen address is empty".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // A fresh connection per call (see the type's docs).
            .pool_max_idle_per_host(0)
            .user_agent(concat!("skipper-caddy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| CaddyError::Client { source })?;
        Ok(Self {
            http,
            base: config.base(),
            config,
            changes: Mutex::new(()),
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &CaddyConfig {
        &self.config
    }

    /// `GET /config/`: whether the admin API answers.
    pub async fn check(&self) -> Result<()> {
        self.get("/config/").await.map(|_| ())
    }

    /// Make `route.domain` forward to `route.upstream`: create Skipper's route (and the server,
    /// when Caddy's config has none), switch its upstreams in place, or do nothing when it is as
    /// wanted. The [`ProxyManager::ensure_route`] behind the trait.
    pub async fn ensure(&self, route: &Route) -> Result<()> {
        if let Some(reason) = route_problem(route) {
            return Err(CaddyError::InvalidRoute {
                domain: route.domain.clone(),
                reason,
            });
        }
        if route.options.advanced_config.is_some() {
            debug!(domain = %route.domain, "advanced_config is nginx configuration; not used by Caddy");
        }
        let domain = route.domain.to_ascii_lowercase();
        let desired = desired_route(route);
        let _one_at_a_time = self.changes.lock().await;
        let server = self.server_or_create().await?;
        let Some(change) = self.plan(&server.value, &domain, &desired, route.options.adopt)? else {
            debug!(domain, "route already as wanted");
            return Ok(());
        };
        let (method, path, body) = self.request_for(&change, &domain, &desired);
        match &change {
            Change::Upstreams(_) => {
                info!(domain, upstream = %route.upstream, "switching the route's upstream in place")
            }
            Change::Adopt(index) => {
                info!(
                    domain,
                    index, "taking over a route made by hand (route.adopt)"
                )
            }
            _ => info!(domain, upstream = %route.upstream, "changing Skipper's route"),
        }
        match self
            .change(method, &path, &body, &server.etag, &domain)
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if err.is_ambiguous() || matches!(err, CaddyError::ConcurrentEdit { .. }) => {
                // Never send the change again blindly (a POST or an index-addressed change would
                // hit another route once the array moved): read back, and adopt what is there
                // if it is what we wanted.
                warn!(domain, error = %err, "change not confirmed; reading the config back");
                match self.get(&self.server_path()).await {
                    Ok(read) if self.converged(&read.value, &domain, &desired) => {
                        info!(
                            domain,
                            "the route is as wanted after all; adopting it (the answer was lost)"
                        );
                        Ok(())
                    }
                    Ok(_) => Err(err),
                    Err(read_err) => {
                        warn!(domain, error = %read_err, "could not read the config back");
                        Err(err)
                    }
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Remove Skipper's route for `domain`. No route is fine; a route made by hand for the
    /// domain is left alone.
    pub async fn remove(&self, domain: &str) -> Result<()> {
        let domain = domain.to_ascii_lowercase();
        let _one_at_a_time = self.changes.lock().await;
        let read = self.get(&self.server_path()).await?;
        if !self.has_route(&read.value, &domain) {
            if routes_of(&read.value).iter().any(|r| serves(r, &domain)) {
                debug!(
                    domain,
                    "only a route Skipper did not create serves the domain; left alone"
                );
            } else {
                debug!(domain, "no route to remove");
            }
            return Ok(());
        }
        info!(domain, "removing Skipper's route");
        let path = format!("/id/{}", route_id(&domain));
        match self
            .change(Method::DELETE, &path, &Value::Null, &read.etag, &domain)
            .await
        {
            Ok(()) => Ok(()),
            // Gone between the read and the delete.
            Err(CaddyError::Api { status: 404, .. }) => Ok(()),
            Err(err) if err.is_ambiguous() || matches!(err, CaddyError::ConcurrentEdit { .. }) => {
                warn!(domain, error = %err, "removal not confirmed; reading the config back");
                match self.get(&self.server_path()).await {
                    Ok(read) if !self.has_route(&read.value, &domain) => Ok(()),
                    _ => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// The routes Skipper created in its server (routes made by hand are not listed).
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let read = self.get(&self.server_path()).await?;
        Ok(routes_of(&read.value)
            .iter()
            .filter(|r| is_skippers(r))
            .filter_map(parse_route)
            .collect())
    }

    // ---- decisions ----------------------------------------------------------------------------

    fn plan(
        &self,
        server: &Value,
        domain: &str,
        desired: &Value,
        adopt: bool,
    ) -> Result<Option<Change>> {
        let Some(routes) = server.get("routes").and_then(Value::as_array) else {
            return Ok(Some(Change::FirstRoute));
        };
        let ours = route_id(domain);
        if let Some(current) = routes.iter().find(|r| id_of(r) == Some(ours.as_str())) {
            if let Some(index) = routes
                .iter()
                .take_while(|r| id_of(r) != Some(ours.as_str()))
                .position(|r| serves(r, domain))
            {
                warn!(
                    domain,
                    index,
                    "a route before Skipper's also serves the domain and may take its requests"
                );
            }
            if current == desired {
                return Ok(None);
            }
            let wanted = proxy_upstreams(desired, domain).unwrap_or(&Value::Null);
            if with_upstreams(current, domain, wanted).as_ref() == Some(desired) {
                return Ok(Some(Change::Upstreams(wanted.clone())));
            }
            return Ok(Some(Change::Replace));
        }
        if let Some(index) = routes.iter().position(|r| serves(r, domain)) {
            if !adopt {
                return Err(CaddyError::NotAdopted {
                    domain: domain.to_owned(),
                    server: self.config.server.clone(),
                    index,
                });
            }
            if !serves_only(&routes[index], domain) {
                return Err(CaddyError::NotAdoptable {
                    domain: domain.to_owned(),
                    server: self.config.server.clone(),
                    index,
                });
            }
            return Ok(Some(Change::Adopt(index)));
        }
        // Skipper's routes go before everything else (a catch-all made by hand would otherwise
        // take their requests), in the order they were made.
        Ok(Some(match routes.iter().position(|r| !is_skippers(r)) {
            Some(index) => Change::InsertAt(index),
            None => Change::Append,
        }))
    }

    fn request_for(
        &self,
        change: &Change,
        domain: &str,
        desired: &Value,
    ) -> (Method, String, Value) {
        let routes = format!("{}/routes", self.server_path());
        match change {
            Change::Upstreams(ups) => (
                Method::PATCH,
                format!("/id/{}/upstreams", proxy_id(domain)),
                ups.clone(),
            ),
            Change::Replace => (
                Method::PATCH,
                format!("/id/{}", route_id(domain)),
                desired.clone(),
            ),
            Change::Adopt(i) => (Method::PATCH, format!("{routes}/{i}"), desired.clone()),
            Change::InsertAt(i) => (Method::PUT, format!("{routes}/{i}"), desired.clone()),
            Change::Append => (Method::POST, routes, desired.clone()),
            Change::FirstRoute => (Method::PUT, routes, json!([desired])),
        }
    }

    fn has_route(&self, server: &Value, domain: &str) -> bool {
        let ours = route_id(domain);
        routes_of(server)
            .iter()
            .any(|r| id_of(r) == Some(ours.as_str()))
    }

    fn converged(&self, server: &Value, domain: &str, desired: &Value) -> bool {
        let ours = route_id(domain);
        routes_of(server)
            .iter()
            .any(|r| id_of(r) == Some(ours.as_str()) && r == desired)
    }

    // ---- the server ---------------------------------------------------------------------------

    /// `/config/apps/http/servers/<server>`.
    fn server_path(&self) -> String {
        format!("/config/apps/http/servers/{}", self.config.server)
    }

    /// The server object, created first when Caddy's config has none.
    async fn server_or_create(&self) -> Result<Read> {
        let path = self.server_path();
        let read = self.get(&path).await?;
        if read.value.is_object() {
            return Ok(read);
        }
        if !read.value.is_null() {
            return Err(CaddyError::Unexpected {
                request: format!("GET {path}"),
                reason: "the server is not a JSON object".into(),
            });
        }
        self.create_server().await?;
        let read = self.get(&path).await?;
        if read.value.is_object() {
            Ok(read)
        } else {
            Err(CaddyError::Unexpected {
                request: format!("GET {path}"),
                reason: "the server is still missing after Skipper created it".into(),
            })
        }
    }

    /// Create the server (and `apps`, `http`, `servers` as needed) with one conditional change
    /// at the first level that is missing.
    async fn create_server(&self) -> Result<()> {
        let root = self.get("/config/").await?;
        let mut server = json!({ "listen": [self.config.listen], "routes": [] });
        if self.config.listens_on_loopback() {
            server["automatic_https"] = json!({ "disable": true });
        }
        let grace = format!("{}ms", self.config.grace_period.as_millis());
        let name = self.config.server.as_str();
        let servers = json!({ name: server.clone() });
        let mut http = json!({ "grace_period": grace, "servers": servers.clone() });
        if !self.config.shutdown_delay.is_zero() {
            http["shutdown_delay"] = format!("{}ms", self.config.shutdown_delay.as_millis()).into();
        }
        let apps = json!({ "http": http.clone() });
        let at = |v: &Value, key: &str| v.get(key).filter(|v| !v.is_null()).cloned();
        let (method, path, body) = match at(&root.value, "apps") {
            None if root.value.is_null() => {
                (Method::POST, "/config/".to_owned(), json!({ "apps": apps }))
            }
            None => (Method::PUT, "/config/apps".to_owned(), apps),
            Some(a) => match at(&a, "http") {
                None => (Method::PUT, "/config/apps/http".to_owned(), http),
                Some(h) => {
                    if h.get("grace_period").is_none() {
                        warn!(
                            "Caddy's HTTP app has no grace_period: a config reload waits for \
                             every open connection; set apps.http.grace_period"
                        );
                    }
                    if h.get("shutdown_delay").is_none() && !self.config.shutdown_delay.is_zero() {
                        warn!(
                            "Caddy's HTTP app has no shutdown_delay: on Caddy 2.6 a config change \
                             can cut a request on a kept-alive connection; set \
                             apps.http.shutdown_delay (Skipper uses {:?})",
                            self.config.shutdown_delay
                        );
                    }
                    match at(&h, "servers") {
                        None => (Method::PUT, "/config/apps/http/servers".to_owned(), servers),
                        Some(_) => (Method::PUT, self.server_path(), server),
                    }
                }
            },
        };
        info!(server = name, listen = %self.config.listen, "creating the HTTP server for Skipper's routes in Caddy");
        if self.admin_is_local() && tcp_migrate_req_off() {
            warn!(
                "net.ipv4.tcp_migrate_req is 0 on this host: each Caddy config change can reset \
                 a few new connections (the old listener's queue); `sysctl -w \
                 net.ipv4.tcp_migrate_req=1` hands them to the new listener"
            );
        }
        match self.change(method, &path, &body, &root.etag, name).await {
            Ok(()) => Ok(()),
            // Someone (maybe an earlier attempt whose answer was lost) made it meanwhile: the
            // caller reads the server again either way.
            Err(err) if err.is_ambiguous() || matches!(err, CaddyError::ConcurrentEdit { .. }) => {
                warn!(error = %err, "creating the server not confirmed; reading it back");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Whether the admin API is on a loopback address, so Caddy runs on this host (and this
    /// host's kernel settings are Caddy's).
    fn admin_is_local(&self) -> bool {
        match self.base.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
    }

    // ---- requests -----------------------------------------------------------------------------

    /// `GET path`: the value (`null` for a key that does not exist) and its `ETag`.
    async fn get(&self, path: &str) -> Result<Read> {
        let label = format!("GET {path}");
        let (status, tag, bytes) = self.send(Method::GET, path, None, None).await?;
        if !status.is_success() {
            let message = error_message(status, &bytes);
            // Caddy 2.6 answers a path through a missing key (`apps` of an empty config) with
            // 400 "invalid traversal path": nothing there.
            if status.as_u16() == 400 && message.contains("invalid traversal path") {
                return Ok(Read {
                    value: Value::Null,
                    etag: etag(path, b"null\n"),
                });
            }
            return Err(CaddyError::Api {
                request: label,
                status: status.as_u16(),
                message,
            });
        }
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| CaddyError::Unexpected {
                request: label,
                reason: format!("not JSON: {e}"),
            })?
        };
        let etag = tag.unwrap_or_else(|| etag(path, &bytes));
        Ok(Read { value, etag })
    }

    /// One change, conditional on `if_match` (a 412 becomes [`CaddyError::ConcurrentEdit`]).
    async fn change(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        if_match: &str,
        domain: &str,
    ) -> Result<()> {
        let label = format!("{method} {path}");
        let body = (!body.is_null()).then_some(body);
        let (status, _, bytes) = self.send(method, path, body, Some(if_match)).await?;
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 412 {
            return Err(CaddyError::ConcurrentEdit {
                request: label,
                domain: domain.to_owned(),
            });
        }
        Err(CaddyError::Api {
            request: label,
            status: status.as_u16(),
            message: error_message(status, &bytes),
        })
    }

    /// One HTTP exchange. Logs method, path and status; never bodies.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(reqwest::StatusCode, Option<String>, Vec<u8>)> {
        let label = format!("{method} {path}");
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| CaddyError::Config {
                reason: format!("cannot build the URL for {label}: {e}"),
            })?;
        let mut request = self.http.request(method, url);
        if let Some(tag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, tag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source: reqwest::Error| CaddyError::Transport {
            request: label.clone(),
            timed_out: source.is_timeout(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let tag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(transport)?.to_vec();
        debug!(request = %label, status = status.as_u16(), "Caddy answered");
        Ok((status, tag, bytes))
    }
}

#[async_trait]
impl ProxyManager for CaddyClient {
    async fn ensure_route(&self, route: &Route) -> skipper_core::Result<()> {
        Ok(self.ensure(route).await?)
    }

    async fn remove_route(&self, domain: &str) -> skipper_core::Result<()> {
        Ok(self.remove(domain).await?)
    }

    async fn list_routes(&self) -> skipper_core::Result<Vec<Route>> {
        Ok(self.routes().await?)
    }
}

/// Whether Linux's `net.ipv4.tcp_migrate_req` is known to be 0. Caddy opens a new listener for
/// every config change (`SO_REUSEPORT`) and closes the old one; connections the kernel had
/// queued on the old one are reset unless this setting (Linux 5.14 and later) hands them to
/// the new one. A read of procfs, which never blocks.
fn tcp_migrate_req_off() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "0")
}

/// The server's `routes` (none when it has none, or no server).
fn routes_of(server: &Value) -> &[Value] {
    server
        .get("routes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Caddy's `{"error": "…"}`, or the body's text, or the status' reason.
fn error_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    if let Some(message) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .filter(|m| !m.is_empty())
    {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    text.chars().take(300).collect()
}
