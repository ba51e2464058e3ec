//! [`NpmClient`]: sessions, retries, and the route operations on top of NPM's proxy-host API.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use skipper_core::{ProxyManager, Route};
use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, info, warn};
use url::Url;

use crate::api::{Health, NpmVersion, ProxyHost, Settings, TokenAnswer, route_problem};
use crate::config::NpmConfig;
use crate::error::{NpmError, Result, domain_in_use};

/// A host Skipper did not create is taken over only when the project says so.
fn refuse_unless_adoptable(route: &Route, host: &ProxyHost) -> Result<()> {
    if host.is_managed() || route.options.adopt {
        Ok(())
    } else {
        Err(NpmError::NotAdopted {
            domain: route.domain.clone(),
            id: host.id,
        })
    }
}

/// A client for Nginx Proxy Manager's API, and Skipper's [`ProxyManager`] on top of it.
///
/// Cheap to share (`Arc<NpmClient>`); all methods take `&self`. It logs in on first use, keeps
/// the token in memory, refreshes it before it expires and logs in again once when NPM calls it
/// stale. See the [crate docs](crate) for how each operation maps to NPM's API.
pub struct NpmClient {
    http: reqwest::Client,
    base: Url,
    config: NpmConfig,
    version: OnceCell<NpmVersion>,
    auth: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    token: Option<Token>,
    generation: u64,
}

impl AuthState {
    fn install(&mut self, secret: SecretString, expires: DateTime<Utc>) -> Token {
        self.generation += 1;
        let token = Token {
            secret,
            expires,
            generation: self.generation,
        };
        self.token = Some(token.clone());
        token
    }
}

#[derive(Clone)]
struct Token {
    secret: SecretString,
    expires: DateTime<Utc>,
    generation: u64,
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    /// No token (`GET /api/`, login).
    None,
    /// This token, as is (refresh).
    Token(&'a SecretString),
    /// The session's token, with refresh and one re-login on a stale-token answer.
    Session,
}

struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<&'a Value>,
    idempotent: bool,
    auth: Auth<'a>,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: impl Into<String>) -> Self {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            idempotent,
            auth: Auth::Session,
        }
    }

    fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Mark a POST that NPM treats idempotently (login, enable/disable) as safe to repeat.
    fn repeatable(mut self) -> Self {
        self.idempotent = true;
        self
    }

    fn auth(mut self, auth: Auth<'a>) -> Self {
        self.auth = auth;
        self
    }

    fn label(&self) -> String {
        format!("{} /api/{}", self.method, self.path)
    }
}

impl NpmClient {
    /// A client for the NPM at `config.url`. Makes no request: the version is learnt and the
    /// login happens on first use (call [`check`](Self::check) to do both up front).
    pub fn new(config: NpmConfig) -> Result<Self> {
        if !matches!(config.url.scheme(), "http" | "https") {
            return Err(NpmError::Config {
                reason: format!("the URL must be http or https, not {}", config.url),
            });
        }
        if config.email.is_empty() {
            return Err(NpmError::Config {
                reason: "the login email is empty".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("skipper-npm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| NpmError::Client { source })?;
        Ok(Self {
            http,
            base: config.api_base(),
            config,
            version: OnceCell::new(),
            auth: Mutex::new(AuthState::default()),
        })
    }

    /// Learn NPM's version and log in: a start-up check that the address and account work.
    pub async fn check(&self) -> Result<NpmVersion> {
        let version = self.version().await?;
        self.session_token().await?;
        Ok(version)
    }

    /// NPM's version, from `GET /api/` (asked once, then remembered).
    pub async fn version(&self) -> Result<NpmVersion> {
        self.version
            .get_or_try_init(|| async {
                let call = Call::new(Method::GET, "").auth(Auth::None);
                let health: Health = decode(&call, self.call_plain(&call, None).await?)?;
                let version = health.version.unwrap_or_else(|| {
                    warn!("Nginx Proxy Manager did not report its version; assuming 2.0.0");
                    NpmVersion::new(2, 0, 0)
                });
                info!(%version, "talking to Nginx Proxy Manager");
                Ok(version)
            })
            .await
            .copied()
    }

    /// The proxy host serving `domain` (exact match on `domain_names`), if any.
    pub async fn find_host(&self, domain: &str) -> Result<Option<ProxyHost>> {
        let mut hosts = self.hosts_serving(domain).await?;
        if hosts.len() > 1 {
            warn!(
                domain,
                ids = ?hosts.iter().map(|h| h.id).collect::<Vec<_>>(),
                "several proxy hosts serve one domain; using the managed, oldest one"
            );
        }
        hosts.sort_by_key(|h| (!h.is_managed(), h.id));
        Ok(hosts.into_iter().next())
    }

    /// Every proxy host the account can see.
    pub async fn list_hosts(&self) -> Result<Vec<ProxyHost>> {
        let call = Call::new(Method::GET, "nginx/proxy-hosts");
        let value = self.call(&call).await?;
        decode(&call, value)
    }

    /// Make `route.domain` forward to `route.upstream` and return the host as NPM now has it.
    /// The [`ProxyManager::ensure_route`] behind the trait.
    pub async fn ensure(&self, route: &Route) -> Result<ProxyHost> {
        if let Some(reason) = route_problem(route) {
            return Err(NpmError::InvalidRoute {
                domain: route.domain.clone(),
                reason,
            });
        }
        let desired = self.desired(route).await?;
        match self.find_host(&route.domain).await? {
            Some(host) => {
                refuse_unless_adoptable(route, &host)?;
                self.converge(&route.domain, host, &desired, false).await
            }
            None => self.create(route, &desired).await,
        }
    }

    /// Remove the route for `domain`: delete the managed host serving it (or take the domain off
    /// a host that serves others too). Nothing to remove is fine; a host Skipper does not manage
    /// is left alone with [`NpmError::NotManaged`].
    pub async fn remove(&self, domain: &str) -> Result<()> {
        let hosts = self.hosts_serving(domain).await?;
        if hosts.is_empty() {
            debug!(domain, "no proxy host to remove");
        }
        for host in hosts {
            if !host.is_managed() {
                return Err(NpmError::NotManaged {
                    domain: domain.to_owned(),
                    id: host.id,
                });
            }
            if host.domain_names.len() > 1 {
                let rest: Vec<&String> = host
                    .domain_names
                    .iter()
                    .filter(|d| !d.eq_ignore_ascii_case(domain))
                    .collect();
                info!(
                    domain,
                    id = host.id,
                    "taking the domain off a shared proxy host"
                );
                let body = json!({ "domain_names": rest });
                let call =
                    Call::new(Method::PUT, format!("nginx/proxy-hosts/{}", host.id)).body(&body);
                match self.call(&call).await {
                    Ok(_) | Err(NpmError::Api { status: 404, .. }) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            info!(domain, id = host.id, "deleting proxy host");
            let call = Call::new(Method::DELETE, format!("nginx/proxy-hosts/{}", host.id));
            match self.call(&call).await {
                // `Not Found - <id>`: it went between the list and the delete. (The stale-token
                // 404 never gets here: `call` logs in again, then reports a refusal.)
                Ok(_) | Err(NpmError::Api { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The routes of the hosts Skipper manages (one per domain they serve).
    pub async fn routes(&self) -> Result<Vec<Route>> {
        Ok(self
            .list_hosts()
            .await?
            .iter()
            .filter(|h| h.is_managed())
            .flat_map(ProxyHost::routes)
            .collect())
    }

    /// Enable the proxy host serving `domain` (`POST /api/nginx/proxy-hosts/{id}/enable`).
    /// Enabling an enabled host succeeds; a missing one is [`NpmError::HostNotFound`]; a config
    /// nginx refuses is [`NpmError::NginxOffline`].
    pub async fn enable(&self, domain: &str) -> Result<()> {
        self.set_enabled(domain, true).await
    }

    /// Disable the proxy host serving `domain` (`POST /api/nginx/proxy-hosts/{id}/disable`):
    /// NPM keeps it but stops serving it. Disabling a disabled host succeeds.
    pub async fn disable(&self, domain: &str) -> Result<()> {
        self.set_enabled(domain, false).await
    }

    // ---- route operations ---------------------------------------------------------------------

    async fn desired(&self, route: &Route) -> Result<Settings> {
        let version = self.version().await?;
        let trust = match self.config.trust_forwarded_proto {
            Some(trust) if version.supports_trust_forwarded_proto() => Some(trust),
            Some(_) => {
                debug!(%version, "this NPM has no trust_forwarded_proto; not sending it");
                None
            }
            None => None,
        };
        Ok(Settings::desired(route, trust))
    }

    async fn hosts_serving(&self, domain: &str) -> Result<Vec<ProxyHost>> {
        // `query` is a substring match on the domain list: the exact match is ours to do.
        let call = Call::new(Method::GET, "nginx/proxy-hosts").query("query", domain);
        let hosts: Vec<ProxyHost> = decode(&call, self.call(&call).await?)?;
        Ok(hosts.into_iter().filter(|h| h.serves(domain)).collect())
    }

    async fn get_host(&self, id: u64) -> Result<ProxyHost> {
        let call = Call::new(Method::GET, format!("nginx/proxy-hosts/{id}"));
        decode(&call, self.call(&call).await?)
    }

    /// Bring an existing host to `desired` with one PUT of the differing fields (or none).
    /// `changed` says the host is new to this ensure (adopted after a create), so its nginx state
    /// is checked even when nothing is left to change.
    async fn converge(
        &self,
        domain: &str,
        host: ProxyHost,
        desired: &Settings,
        changed: bool,
    ) -> Result<ProxyHost> {
        let current = Settings::current(&host, desired.trust_forwarded_proto.is_some());
        let mut changes = desired.changes_from(&current);
        if !host.is_managed() {
            // NPM replaces `meta` wholesale on update: send what is there plus the marker.
            changes.insert("meta".into(), Value::Object(host.meta_with_marker()));
        }
        if changes.is_empty() {
            if changed {
                check_online(domain, &host)?;
            } else if host.nginx_online() == Some(false) {
                warn!(
                    domain,
                    id = host.id,
                    nginx_err = host.nginx_err().unwrap_or_default(),
                    "route is as wanted but nginx has it offline"
                );
            }
            debug!(domain, id = host.id, "route already as wanted");
            return Ok(host);
        }
        info!(
            domain,
            id = host.id,
            fields = ?changes.keys().collect::<Vec<_>>(),
            "updating proxy host in place"
        );
        let body = Value::Object(changes);
        let call = Call::new(Method::PUT, format!("nginx/proxy-hosts/{}", host.id)).body(&body);
        let updated: ProxyHost = decode(&call, self.call(&call).await?)?;
        check_online(domain, &updated)?;
        Ok(updated)
    }

    /// POST a new host, once. A create is not idempotent: when it fails without a clear refusal
    /// (transport error, timeout, 5xx), or the domain turns out taken, list again and adopt a
    /// host serving the domain rather than create a second one.
    async fn create(&self, route: &Route, desired: &Settings) -> Result<ProxyHost> {
        let domain = route.domain.as_str();
        let body = Value::Object(desired.create_body(domain));
        info!(domain, upstream = %route.upstream, "creating proxy host");
        let call = Call::new(Method::POST, "nginx/proxy-hosts").body(&body);
        match self.call(&call).await {
            Ok(value) => {
                let created: ProxyHost = decode(&call, value)?;
                // NPM answers a create with the row as read before nginx was configured, so
                // `meta.nginx_online` is not in it: read the host back.
                let host = self.get_host(created.id).await?;
                check_online(domain, &host)?;
                Ok(host)
            }
            Err(err) if err.is_ambiguous() || matches!(err, NpmError::DomainInUse { .. }) => {
                warn!(domain, error = %err, "create not confirmed; looking for the host before anything else");
                match self.find_host(domain).await {
                    Ok(Some(host)) => {
                        refuse_unless_adoptable(route, &host)?;
                        info!(
                            domain,
                            id = host.id,
                            "adopting the proxy host found after the create"
                        );
                        self.converge(domain, host, desired, true).await
                    }
                    Ok(None) => Err(err),
                    Err(find_err) => {
                        warn!(domain, error = %find_err, "could not look for the host after the create");
                        Err(err)
                    }
                }
            }
            Err(err) => Err(err),
        }
    }

    async fn set_enabled(&self, domain: &str, on: bool) -> Result<()> {
        let Some(host) = self.find_host(domain).await? else {
            return Err(NpmError::HostNotFound {
                domain: domain.to_owned(),
            });
        };
        if host.enabled == on {
            return Ok(());
        }
        let action = if on { "enable" } else { "disable" };
        info!(domain, id = host.id, action, "switching proxy host");
        let call = Call::new(
            Method::POST,
            format!("nginx/proxy-hosts/{}/{action}", host.id),
        )
        .repeatable();
        match self.call(&call).await {
            Ok(_) => {}
            // "Host is already enabled/disabled": a retry after a lost answer, or someone else.
            Err(NpmError::Api {
                status: 400,
                message,
                ..
            }) if message.contains("already") => return Ok(()),
            Err(NpmError::Api { status: 404, .. }) => {
                return Err(NpmError::HostNotFound {
                    domain: domain.to_owned(),
                });
            }
            Err(e) => return Err(e),
        }
        if on {
            // Enabling writes the nginx config: see whether nginx took it.
            check_online(domain, &self.get_host(host.id).await?)?;
        }
        Ok(())
    }

    // ---- sessions -----------------------------------------------------------------------------

    /// A token good for the next request: the current one, a refreshed one when it nears
    /// expiry, or a fresh login. Holding the lock across the login makes concurrent callers wait
    /// for one login instead of each doing their own.
    async fn session_token(&self) -> Result<Token> {
        let mut state = self.auth.lock().await;
        if let Some(token) = state.token.clone() {
            let now = Utc::now();
            let margin = TimeDelta::from_std(self.config.refresh_margin).unwrap_or(TimeDelta::MAX);
            if now
                .checked_add_signed(margin)
                .is_some_and(|t| t < token.expires)
            {
                return Ok(token);
            }
            if now < token.expires {
                match self.refresh(&token.secret).await {
                    Ok((secret, expires)) => return Ok(state.install(secret, expires)),
                    Err(e) if e.is_transient() => {
                        warn!(error = %e, "token refresh failed; using the current token meanwhile");
                        return Ok(token);
                    }
                    Err(e) => debug!(error = %e, "token refresh refused; logging in again"),
                }
            }
            state.token = None;
        }
        let (secret, expires) = self.login().await?;
        Ok(state.install(secret, expires))
    }

    /// Drop the token of `generation`, unless it was already replaced.
    async fn forget_token(&self, generation: u64) {
        let mut state = self.auth.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            state.token = None;
        }
    }

    async fn login(&self) -> Result<(SecretString, DateTime<Utc>)> {
        debug!("logging in to Nginx Proxy Manager");
        // The password leaves its SecretString here, into the request body, and nowhere else.
        let body = json!({
            "identity": self.config.email,
            "secret": self.config.password.expose_secret(),
        });
        let call = Call::new(Method::POST, "tokens")
            .body(&body)
            .repeatable()
            .auth(Auth::None);
        let answer = match self.call_plain(&call, None).await {
            Ok(answer) => answer,
            Err(NpmError::Api {
                status: 400 | 401 | 403,
                message,
                ..
            }) if message.to_ascii_lowercase().contains("email or password") => {
                return Err(NpmError::BadCredentials { message });
            }
            Err(e) => return Err(e),
        };
        token_from(&call, answer)
    }

    async fn refresh(&self, token: &SecretString) -> Result<(SecretString, DateTime<Utc>)> {
        debug!("refreshing the Nginx Proxy Manager token");
        let call = Call::new(Method::GET, "tokens").auth(Auth::Token(token));
        let answer = self.call_plain(&call, Some(token)).await?;
        token_from(&call, answer)
    }

    // ---- requests -----------------------------------------------------------------------------

    /// A request with the session's token: refreshed or logged in as needed, one re-login on a
    /// stale-token answer, bounded retries for idempotent calls.
    async fn call(&self, call: &Call<'_>) -> Result<Value> {
        if !matches!(call.auth, Auth::Session) {
            let bearer = match call.auth {
                Auth::Token(t) => Some(t),
                _ => None,
            };
            return self.call_plain(call, bearer).await;
        }
        let mut attempt = 1;
        let mut relogged = false;
        loop {
            let token = self.session_token().await?;
            let err = match self.send(call, Some(&token.secret)).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if err.is_stale_token() {
                self.forget_token(token.generation).await;
                if relogged {
                    return Err(err.into_refused());
                }
                debug!(request = %call.label(), error = %err, "stale token; logging in again");
                relogged = true;
                continue;
            }
            if err.is_internal_error() && !relogged {
                // A malformed token also gets 500 "Internal Error": any further attempt logs in
                // afresh.
                self.forget_token(token.generation).await;
                relogged = true;
            }
            match self.backoff(call, &err, attempt) {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => return Err(err),
            }
        }
    }

    /// A request with a fixed (or no) token and bounded retries for idempotent calls.
    async fn call_plain(&self, call: &Call<'_>, bearer: Option<&SecretString>) -> Result<Value> {
        let mut attempt = 1;
        loop {
            let err = match self.send(call, bearer).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            match self.backoff(call, &err, attempt) {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => return Err(err),
            }
        }
    }

    /// How long to wait before repeating `call` after `err` on `attempt`, or `None` to give up.
    fn backoff(&self, call: &Call<'_>, err: &NpmError, attempt: u32) -> Option<Duration> {
        if !(call.idempotent && err.is_transient() && attempt < self.config.max_attempts) {
            return None;
        }
        let wait = self
            .config
            .retry_backoff
            .saturating_mul(1 << (attempt - 1).min(10));
        warn!(request = %call.label(), attempt, error = %err, "retrying in {wait:?}");
        Some(wait)
    }

    /// One HTTP exchange. Logs method, path and status; never bodies or headers.
    async fn send(&self, call: &Call<'_>, bearer: Option<&SecretString>) -> Result<Value> {
        let url = self.base.join(&call.path).map_err(|e| NpmError::Config {
            reason: format!("cannot build the URL for {}: {e}", call.label()),
        })?;
        let mut request = self.http.request(call.method.clone(), url);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        let transport = |source: reqwest::Error| NpmError::Transport {
            request: call.label(),
            timed_out: source.is_timeout(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        debug!(request = %call.label(), status = status.as_u16(), "Nginx Proxy Manager answered");
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|source| NpmError::Decode {
                request: call.label(),
                source,
            });
        }
        let message = error_message(status, &bytes);
        if let Some(domain) = domain_in_use(&message).filter(|_| status.as_u16() == 400) {
            return Err(NpmError::DomainInUse {
                domain: domain.to_owned(),
            });
        }
        Err(NpmError::Api {
            request: call.label(),
            status: status.as_u16(),
            message,
        })
    }
}

impl fmt::Debug for NpmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NpmClient")
            .field("api", &self.base.as_str())
            .field("version", &self.version.get())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ProxyManager for NpmClient {
    async fn ensure_route(&self, route: &Route) -> skipper_core::Result<()> {
        self.ensure(route).await?;
        Ok(())
    }

    async fn remove_route(&self, domain: &str) -> skipper_core::Result<()> {
        Ok(self.remove(domain).await?)
    }

    async fn list_routes(&self) -> skipper_core::Result<Vec<Route>> {
        Ok(self.routes().await?)
    }
}

fn decode<T: DeserializeOwned>(call: &Call<'_>, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| NpmError::Decode {
        request: call.label(),
        source,
    })
}

fn check_online(domain: &str, host: &ProxyHost) -> Result<()> {
    if host.nginx_online() == Some(false) {
        return Err(NpmError::NginxOffline {
            domain: domain.to_owned(),
            id: host.id,
            nginx_err: host
                .nginx_err()
                .filter(|e| !e.is_empty())
                .unwrap_or("nginx refused the generated configuration (no detail given)")
                .to_owned(),
        });
    }
    Ok(())
}

fn token_from(call: &Call<'_>, answer: Value) -> Result<(SecretString, DateTime<Utc>)> {
    let answer: TokenAnswer = decode(call, answer)?;
    if answer.requires_2fa {
        return Err(NpmError::TwoFactorRequired);
    }
    let Some(token) = answer.token.filter(|t| !t.is_empty()) else {
        return Err(NpmError::Decode {
            request: call.label(),
            source: serde::de::Error::custom("the answer has no token"),
        });
    };
    let expires = answer
        .expires
        .as_deref()
        .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        .map(|e| e.with_timezone(&Utc))
        .unwrap_or_else(|| {
            warn!("the token's expiry is missing or unreadable; assuming one hour");
            Utc::now() + TimeDelta::hours(1)
        });
    Ok((SecretString::from(token), expires))
}

/// NPM's `error.message`, or the body's text, or the status' reason.
fn error_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    let envelope = serde_json::from_slice::<Value>(body).ok();
    if let Some(message) = envelope
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    {
        return message.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    // An HTML page comes from a proxy in front of NPM (the admin nginx's 502 when the backend is
    // down): its status says it all.
    if text.is_empty() || text.starts_with('<') {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    text.chars().take(300).collect()
}
