//! [`FakeNpm`]: a stateful fake of Nginx Proxy Manager's API on a wiremock server, for tests here
//! and in other crates (feature `test-util`).
//!
//! It behaves as NPM 2.x does where a client can tell (see `docs/NPM-API.md`): it keeps proxy
//! hosts in memory, enforces unique domains across proxy, redirection and 404 hosts, validates
//! bodies with `additionalProperties: false` (so `trust_forwarded_proto` is a 400 before 2.14.0),
//! issues tokens that expire, answers a missing or invalid token with 403 (or the 404
//! `Not Found - /<path>` of 2.13.0–2.15.1), answers booleans as `0`/`1` before 2.12.0, applies
//! `cleanSslHstsData`, records `meta.nginx_online`/`nginx_err` after "configuring nginx", and
//! answers a create with the row as read *before* nginx was configured.
//!
//! ```no_run
//! # async fn t() {
//! use skipper_npm::fake::{FakeNpm, FakeOp, Fault};
//! use skipper_npm::NpmVersion;
//!
//! let npm = FakeNpm::builder().version(NpmVersion::new(2, 13, 0)).start().await;
//! npm.fail_next(FakeOp::CreateHost, 1, Fault::StatusAfterCommit(500));
//! let client = npm.client(); // an NpmClient logged in as the fake's user
//! // ... drive the engine with `client`, then look at `npm.hosts()` ...
//! # }
//! ```
//!
//! Tests that want to assert exact requests mount their own wiremock mocks on
//! [`FakeNpm::server`] that answer with [`FakeNpm::responder`]: the mock matches and counts, the
//! fake answers. Unmatched requests fall through to the fake (mounted at the lowest priority).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use url::Url;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::{NpmClient, NpmConfig, NpmVersion};

/// The kinds of request the fake serves, for fault injection and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FakeOp {
    /// `GET /api/`.
    Version,
    /// `POST /api/tokens`.
    Login,
    /// `GET /api/tokens`.
    Refresh,
    /// `GET /api/nginx/proxy-hosts`.
    ListHosts,
    /// `GET /api/nginx/proxy-hosts/{id}`.
    GetHost,
    /// `POST /api/nginx/proxy-hosts`.
    CreateHost,
    /// `PUT /api/nginx/proxy-hosts/{id}`.
    UpdateHost,
    /// `DELETE /api/nginx/proxy-hosts/{id}`.
    DeleteHost,
    /// `POST /api/nginx/proxy-hosts/{id}/enable`.
    EnableHost,
    /// `POST /api/nginx/proxy-hosts/{id}/disable`.
    DisableHost,
}

/// How an injected failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status before doing anything (NPM's error envelope for 4xx and 500 —
    /// 500 says "Internal Error" as NPM does — and the admin nginx's HTML page for 502–504).
    Status(u16),
    /// Do the work, then answer with this status: the change is made, the answer is lost.
    StatusAfterCommit(u16),
    /// Do the work, but answer only after this long (longer than the client's timeout, the
    /// client gives up while the change is made).
    Delay(Duration),
}

/// The fake's behaviour, set before it starts.
#[derive(Debug, Clone)]
pub struct FakeNpmBuilder {
    version: NpmVersion,
    email: String,
    password: String,
    two_factor: bool,
    token_lifetime: Duration,
}

impl FakeNpmBuilder {
    /// The NPM version to be (default 2.15.1).
    pub fn version(mut self, version: NpmVersion) -> Self {
        self.version = version;
        self
    }

    /// The one account's email and password (default [`FakeNpm::EMAIL`], [`FakeNpm::PASSWORD`]).
    pub fn credentials(mut self, email: impl Into<String>, password: impl Into<String>) -> Self {
        self.email = email.into();
        self.password = password.into();
        self
    }

    /// Whether the account has two-factor authentication on (default off).
    pub fn two_factor(mut self, on: bool) -> Self {
        self.two_factor = on;
        self
    }

    /// How long issued tokens live (default one day, as NPM).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Start the wiremock server and mount the fake on it.
    pub async fn start(self) -> FakeNpm {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State::new(self)));
        Mock::given(any())
            .respond_with(FakeNpmResponder {
                state: Arc::clone(&state),
            })
            .with_priority(u8::MAX)
            .named("FakeNpm")
            .mount(&server)
            .await;
        FakeNpm { server, state }
    }
}

/// A stateful fake of Nginx Proxy Manager on a wiremock [`MockServer`].
///
/// Dropping it verifies the expectations of mocks mounted on [`server`](Self::server) (as any
/// `MockServer` does).
pub struct FakeNpm {
    server: MockServer,
    state: Arc<Mutex<State>>,
}

impl FakeNpm {
    /// The default account's email.
    pub const EMAIL: &'static str = "skipper@example.com";
    /// The default account's password.
    pub const PASSWORD: &'static str = "correct horse battery staple";

    /// A fake NPM 2.15.1 with the default account.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A builder to choose version, account, 2FA and token lifetime.
    pub fn builder() -> FakeNpmBuilder {
        FakeNpmBuilder {
            version: NpmVersion::new(2, 15, 1),
            email: Self::EMAIL.into(),
            password: Self::PASSWORD.into(),
            two_factor: false,
            token_lifetime: Duration::from_secs(24 * 3600),
        }
    }

    /// The server's root (`http://127.0.0.1:PORT`); the API is under `/api/`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// [`uri`](Self::uri) as a [`Url`].
    pub fn url(&self) -> Url {
        self.server.uri().parse().expect("wiremock's uri is a URL")
    }

    /// The wiremock server, to mount expectation mocks on.
    pub fn server(&self) -> &MockServer {
        &self.server
    }

    /// A responder sharing this fake's state, for mocks that should match and count requests
    /// but let the fake answer.
    pub fn responder(&self) -> FakeNpmResponder {
        FakeNpmResponder {
            state: Arc::clone(&self.state),
        }
    }

    /// A client configuration for this fake's account: 5 s timeout, 3 attempts, 10 ms backoff.
    pub fn config(&self) -> NpmConfig {
        let state = self.lock();
        NpmConfig::new(
            self.url(),
            state.email.clone(),
            SecretString::from(state.password.clone()),
        )
        .with_timeout(Duration::from_secs(5))
        .with_retries(3, Duration::from_millis(10))
    }

    /// A client built from [`config`](Self::config).
    pub fn client(&self) -> NpmClient {
        NpmClient::new(self.config()).expect("the fake's configuration is valid")
    }

    /// The version the fake reports.
    pub fn version(&self) -> NpmVersion {
        self.lock().version
    }

    /// Add a proxy host as if someone created it in NPM's UI: `body` is a create body, checked
    /// as NPM checks one. Returns its id.
    ///
    /// # Panics
    /// If NPM would refuse the body (unknown field, taken domain, ...).
    pub fn insert_host(&self, body: Value) -> u64 {
        let mut state = self.lock();
        match state.create(&body) {
            Ok((id, _)) => id,
            Err((status, message)) => panic!("FakeNpm::insert_host: {status} {message}"),
        }
    }

    /// A proxy host as `GET /api/nginx/proxy-hosts/{id}` would show it.
    pub fn host(&self, id: u64) -> Option<Value> {
        let state = self.lock();
        state.hosts.get(&id).map(|h| state.render(h))
    }

    /// The proxy host serving `domain` (case-insensitively), as NPM would show it.
    pub fn host_for(&self, domain: &str) -> Option<Value> {
        let state = self.lock();
        state
            .hosts
            .values()
            .find(|h| {
                h.domain_names
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(domain))
            })
            .map(|h| state.render(h))
    }

    /// Every proxy host, by id.
    pub fn hosts(&self) -> Vec<Value> {
        let state = self.lock();
        state.hosts.values().map(|h| state.render(h)).collect()
    }

    /// Delete a proxy host behind the client's back (as someone in NPM's UI would). Returns
    /// whether it existed.
    pub fn delete_host(&self, id: u64) -> bool {
        self.lock().hosts.remove(&id).is_some()
    }

    /// The `n`-th token the fake issues (1-based). Tokens are deterministic so tests can match
    /// `Authorization` headers before the token exists.
    pub fn token(n: u64) -> String {
        format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJmYWtlIjp0cnVlfQ.fake-{n:04}")
    }

    /// Hold `domain` with a redirection or 404 host (which proxy-host lists do not show): creating
    /// a proxy host for it fails with "already in use".
    pub fn occupy_domain(&self, domain: &str) {
        self.lock().occupied.push(domain.to_owned());
    }

    /// Make the next `times` requests of kind `op` fail with `fault`.
    pub fn fail_next(&self, op: FakeOp, times: usize, fault: Fault) {
        let mut state = self.lock();
        let queue = state.faults.entry(op).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// From now on, nginx refuses the configuration of any host serving `domain` (`nginx -t`
    /// fails with `nginx_err`), so NPM marks it `nginx_online: false`.
    pub fn break_nginx_for(&self, domain: &str, nginx_err: &str) {
        self.lock()
            .broken_nginx
            .insert(domain.to_ascii_lowercase(), nginx_err.to_owned());
    }

    /// Undo [`break_nginx_for`](Self::break_nginx_for).
    pub fn fix_nginx_for(&self, domain: &str) {
        self.lock()
            .broken_nginx
            .remove(&domain.to_ascii_lowercase());
    }

    /// Let every token issued so far expire now (answers become 400 "Token has expired").
    pub fn expire_tokens(&self) {
        let now = Utc::now();
        for expires in self.lock().tokens.values_mut() {
            *expires = now - TimeDelta::seconds(1);
        }
    }

    /// Forget every token issued so far (answers become 403, or 404 on 2.13–2.15).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Whether the account may manage proxy hosts (default yes). Without permission NPM answers
    /// proxy-host requests as it does a missing token.
    pub fn set_host_permission(&self, allowed: bool) {
        self.lock().may_manage_hosts = allowed;
    }

    /// How many requests of kind `op` the fake has received (faulted ones included).
    pub fn count(&self, op: FakeOp) -> usize {
        self.lock().counts.get(&op).copied().unwrap_or(0)
    }

    /// Verify the expectations of the mocks mounted on the server now (rather than on drop).
    pub async fn verify(&self) {
        self.server.verify().await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl std::fmt::Debug for FakeNpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNpm")
            .field("uri", &self.server.uri())
            .finish_non_exhaustive()
    }
}

/// A wiremock [`Respond`] that answers as the [`FakeNpm`] it came from.
#[derive(Clone)]
pub struct FakeNpmResponder {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeNpmResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNpmResponder").finish_non_exhaustive()
    }
}

impl Respond for FakeNpmResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        lock(&self.state).handle(request)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- the fake's state --------------------------------------------------------------------------

/// Fields a proxy-host body may carry (NPM 2.x's schema); `trust_forwarded_proto` from 2.14.0.
const HOST_FIELDS: [&str; 17] = [
    "domain_names",
    "forward_scheme",
    "forward_host",
    "forward_port",
    "certificate_id",
    "ssl_forced",
    "hsts_enabled",
    "hsts_subdomains",
    "http2_support",
    "block_exploits",
    "caching_enabled",
    "allow_websocket_upgrade",
    "enabled",
    "access_list_id",
    "advanced_config",
    "meta",
    "locations",
];
const HOST_BOOLEANS: [&str; 9] = [
    "ssl_forced",
    "hsts_enabled",
    "hsts_subdomains",
    "http2_support",
    "block_exploits",
    "caching_enabled",
    "allow_websocket_upgrade",
    "enabled",
    "trust_forwarded_proto",
];
const REQUIRED_ON_CREATE: [&str; 4] = [
    "domain_names",
    "forward_scheme",
    "forward_host",
    "forward_port",
];
const TOKEN_FIELDS: [&str; 3] = ["identity", "secret", "scope"];
const FORBIDDEN_DOMAIN_CHARS: &str = "&|@!#%^();:/\\}{=+?<>,~'\"";

type Refusal = (u16, String);

#[derive(Debug, Clone)]
struct FakeHost {
    id: u64,
    created_on: String,
    modified_on: String,
    domain_names: Vec<String>,
    forward_scheme: String,
    forward_host: String,
    forward_port: u64,
    certificate_id: u64,
    access_list_id: u64,
    flags: BTreeMap<&'static str, bool>,
    advanced_config: String,
    meta: Map<String, Value>,
    locations: Vec<Value>,
}

impl FakeHost {
    fn flag(&self, name: &str) -> bool {
        self.flags.get(name).copied().unwrap_or(false)
    }

    /// NPM's `cleanSslHstsData`: no certificate → no forced SSL or HTTP/2; no forced SSL → no
    /// HSTS; no HSTS → no HSTS for subdomains.
    fn clean_ssl_hsts(&mut self) {
        if self.certificate_id == 0 {
            self.flags.insert("ssl_forced", false);
            self.flags.insert("http2_support", false);
        }
        if !self.flag("ssl_forced") {
            self.flags.insert("hsts_enabled", false);
        }
        if !self.flag("hsts_enabled") {
            self.flags.insert("hsts_subdomains", false);
        }
    }
}

struct State {
    version: NpmVersion,
    email: String,
    password: String,
    two_factor: bool,
    token_lifetime: TimeDelta,
    may_manage_hosts: bool,
    tokens: HashMap<String, DateTime<Utc>>,
    issued: u64,
    hosts: BTreeMap<u64, FakeHost>,
    next_id: u64,
    next_certificate_id: u64,
    occupied: Vec<String>,
    broken_nginx: HashMap<String, String>,
    faults: HashMap<FakeOp, VecDeque<Fault>>,
    counts: HashMap<FakeOp, usize>,
}

impl State {
    fn new(b: FakeNpmBuilder) -> Self {
        Self {
            version: b.version,
            email: b.email,
            password: b.password,
            two_factor: b.two_factor,
            token_lifetime: TimeDelta::from_std(b.token_lifetime).unwrap_or(TimeDelta::days(1)),
            may_manage_hosts: true,
            tokens: HashMap::new(),
            issued: 0,
            hosts: BTreeMap::new(),
            next_id: 1,
            next_certificate_id: 100,
            occupied: Vec::new(),
            broken_nginx: HashMap::new(),
            faults: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    fn handle(&mut self, request: &Request) -> ResponseTemplate {
        let full = request.url.path().to_owned();
        let Some(path) = full.strip_prefix("/api") else {
            return error(404, &format!("Not Found - {full}"));
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let id = |s: &str| s.parse::<u64>().ok();
        let (op, host_id) = match (request.method.as_str(), segments.as_slice()) {
            ("GET", []) => (FakeOp::Version, None),
            ("POST", ["tokens"]) => (FakeOp::Login, None),
            ("GET", ["tokens"]) => (FakeOp::Refresh, None),
            ("GET", ["nginx", "proxy-hosts"]) => (FakeOp::ListHosts, None),
            ("POST", ["nginx", "proxy-hosts"]) => (FakeOp::CreateHost, None),
            ("GET", ["nginx", "proxy-hosts", i]) => (FakeOp::GetHost, Some(*i)),
            ("PUT", ["nginx", "proxy-hosts", i]) => (FakeOp::UpdateHost, Some(*i)),
            ("DELETE", ["nginx", "proxy-hosts", i]) => (FakeOp::DeleteHost, Some(*i)),
            ("POST", ["nginx", "proxy-hosts", i, "enable"]) => (FakeOp::EnableHost, Some(*i)),
            ("POST", ["nginx", "proxy-hosts", i, "disable"]) => (FakeOp::DisableHost, Some(*i)),
            _ => return error(404, &format!("Not Found - {path}")),
        };
        *self.counts.entry(op).or_default() += 1;
        let fault = self.faults.get_mut(&op).and_then(VecDeque::pop_front);
        if let Some(Fault::Status(status)) = fault {
            return fault_answer(status);
        }

        let answer = match op {
            FakeOp::Version => Ok((200, self.health())),
            FakeOp::Login => self.login(request),
            FakeOp::Refresh => self
                .authenticate(request, path, false)
                .map(|()| (200, self.issue_token())),
            _ => self.authenticate(request, path, true).and_then(|()| {
                let host_id = match host_id.map(|s| (s, id(s))) {
                    Some((_, Some(n))) => Some(n),
                    Some((s, None)) => return Err((404, format!("Not Found - {s}"))),
                    None => None,
                };
                self.host_op(op, host_id, request)
            }),
        };
        let response = match answer {
            Ok((status, body)) => ResponseTemplate::new(status).set_body_json(body),
            Err((status, message)) => error(status, &message),
        };
        match fault {
            Some(Fault::StatusAfterCommit(status)) => fault_answer(status),
            Some(Fault::Delay(delay)) => response.set_delay(delay),
            _ => response,
        }
    }

    fn health(&self) -> Value {
        json!({
            "status": "OK",
            "setup": true,
            "version": {
                "major": self.version.major,
                "minor": self.version.minor,
                "revision": self.version.revision,
            }
        })
    }

    fn login(&mut self, request: &Request) -> Result<(u16, Value), Refusal> {
        let body: Value = request
            .body_json()
            .map_err(|_| (400, "data must be object".to_owned()))?;
        let Value::Object(body) = body else {
            return Err((400, "data must be object".into()));
        };
        check_fields(&body, &TOKEN_FIELDS)?;
        for field in ["identity", "secret"] {
            match body.get(field) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(_) => return Err((400, format!("data/{field} must be string"))),
                None => return Err((400, format!("data must have required property '{field}'"))),
            }
        }
        if body.get("scope").is_some_and(|s| s != "user") {
            return Err((
                400,
                "data/scope must be equal to one of the allowed values".into(),
            ));
        }
        let identity = body["identity"].as_str().unwrap_or_default();
        let secret = body["secret"].as_str().unwrap_or_default();
        if !identity.eq_ignore_ascii_case(&self.email) || secret != self.password {
            return Err((400, "Invalid email or password".into()));
        }
        if self.two_factor {
            return Ok((
                200,
                json!({"requires_2fa": true, "challenge_token": "fake-2fa-challenge"}),
            ));
        }
        Ok((200, self.issue_token()))
    }

    fn issue_token(&mut self) -> Value {
        self.issued += 1;
        let token = FakeNpm::token(self.issued);
        let expires = Utc::now() + self.token_lifetime;
        self.tokens.insert(token.clone(), expires);
        json!({
            "token": token,
            "expires": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        })
    }

    /// The token check NPM does before any authenticated route.
    fn authenticate(&self, request: &Request, path: &str, hosts: bool) -> Result<(), Refusal> {
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = bearer else {
            return Err(self.denied(path));
        };
        // Not a JWT at all: jsonwebtoken throws, NPM masks it as a 500.
        if token.split('.').count() != 3 || !token.starts_with("eyJ") {
            return Err((500, "Internal Error".into()));
        }
        match self.tokens.get(token) {
            None => Err(self.denied(path)),
            Some(expires) if *expires <= Utc::now() => Err((400, "Token has expired".into())),
            Some(_) if hosts && !self.may_manage_hosts => Err(self.denied(path)),
            Some(_) => Ok(()),
        }
    }

    fn denied(&self, path: &str) -> Refusal {
        if self.version.has_token_not_found_quirk() {
            (404, format!("Not Found - {path}"))
        } else {
            (403, "Permission Denied".into())
        }
    }

    fn host_op(
        &mut self,
        op: FakeOp,
        id: Option<u64>,
        request: &Request,
    ) -> Result<(u16, Value), Refusal> {
        let body = || -> Result<Value, Refusal> {
            request
                .body_json::<Value>()
                .map_err(|_| (400, "data must be object".to_owned()))
        };
        let id = id.unwrap_or_default();
        let not_found = || (404, format!("Not Found - {id}"));
        match op {
            FakeOp::ListHosts => Ok((200, self.list(request))),
            FakeOp::GetHost => {
                let host = self.hosts.get(&id).ok_or_else(not_found)?;
                Ok((200, self.render(host)))
            }
            FakeOp::CreateHost => {
                let (_, answer) = self.create(&body()?)?;
                Ok((201, answer))
            }
            FakeOp::UpdateHost => self.update(id, &body()?).map(|v| (200, v)),
            FakeOp::DeleteHost => {
                self.hosts.remove(&id).ok_or_else(not_found)?;
                Ok((200, Value::Bool(true)))
            }
            FakeOp::EnableHost | FakeOp::DisableHost => {
                let on = op == FakeOp::EnableHost;
                let host = self.hosts.get_mut(&id).ok_or_else(not_found)?;
                if host.flag("enabled") == on {
                    let word = if on { "enabled" } else { "disabled" };
                    return Err((400, format!("Host is already {word}")));
                }
                host.flags.insert("enabled", on);
                if on {
                    self.configure(id);
                }
                Ok((200, Value::Bool(true)))
            }
            _ => Err(not_found()),
        }
    }

    fn list(&self, request: &Request) -> Value {
        let query = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "query")
            .map(|(_, v)| v.to_ascii_lowercase())
            .filter(|q| !q.is_empty());
        // NPM: `domain_names LIKE %query%` on the JSON text, ordered by that text.
        let mut rows: Vec<(String, &FakeHost)> = self
            .hosts
            .values()
            .map(|h| (Value::from(h.domain_names.clone()).to_string(), h))
            .filter(|(text, _)| {
                query
                    .as_deref()
                    .is_none_or(|q| text.to_ascii_lowercase().contains(q))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        Value::Array(rows.into_iter().map(|(_, h)| self.render(h)).collect())
    }

    /// Create a host: validate, check domains, `cleanSslHstsData`, insert, configure nginx.
    /// Returns the id and NPM's answer: the row as read *before* nginx was configured.
    fn create(&mut self, body: &Value) -> Result<(u64, Value), Refusal> {
        let body = self.validate_host(body, true)?;
        let domains = string_list(&body["domain_names"]);
        self.check_domains(&domains, None)?;
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut host = FakeHost {
            id: self.next_id,
            created_on: now.clone(),
            modified_on: now,
            domain_names: domains,
            forward_scheme: String::new(),
            forward_host: String::new(),
            forward_port: 0,
            certificate_id: 0,
            access_list_id: 0,
            flags: BTreeMap::from([("enabled", true)]),
            advanced_config: String::new(),
            meta: Map::new(),
            locations: Vec::new(),
        };
        // `certificate_id: "new"`: NPM inserts the host without a certificate (so
        // cleanSslHstsData turns ssl_forced, http2 and HSTS off), then requests one and sets
        // its id — the pitfall of upstream issue 3956.
        let new_certificate = body.get("certificate_id") == Some(&Value::from("new"));
        apply(&mut host, &body);
        if new_certificate {
            host.certificate_id = 0;
        }
        host.clean_ssl_hsts();
        if new_certificate {
            host.certificate_id = self.next_certificate_id;
            self.next_certificate_id += 1;
        }
        self.next_id += 1;
        let id = host.id;
        let answer = self.render(&host);
        self.hosts.insert(id, host);
        self.configure(id);
        Ok((id, answer))
    }

    fn update(&mut self, id: u64, body: &Value) -> Result<Value, Refusal> {
        let body = self.validate_host(body, false)?;
        if !self.hosts.contains_key(&id) {
            return Err((404, format!("Not Found - {id}")));
        }
        if body.contains_key("domain_names") {
            self.check_domains(&string_list(&body["domain_names"]), Some(id))?;
        }
        let new_certificate = body.get("certificate_id") == Some(&Value::from("new"));
        let certificate = self.next_certificate_id;
        let host = self
            .hosts
            .get_mut(&id)
            .ok_or((404, format!("Not Found - {id}")))?;
        apply(host, &body);
        if new_certificate {
            host.certificate_id = certificate;
            self.next_certificate_id += 1;
        }
        host.clean_ssl_hsts();
        host.modified_on = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let enabled = host.flag("enabled");
        if enabled {
            self.configure(id);
        }
        let host = self
            .hosts
            .get(&id)
            .ok_or((404, format!("Not Found - {id}")))?;
        Ok(self.render(host))
    }

    /// "Configure nginx": record whether `nginx -t` accepted the host in its meta.
    fn configure(&mut self, id: u64) {
        let Some(host) = self.hosts.get_mut(&id) else {
            return;
        };
        let err = host
            .domain_names
            .iter()
            .find_map(|d| self.broken_nginx.get(&d.to_ascii_lowercase()))
            .cloned();
        host.meta
            .insert("nginx_online".into(), Value::Bool(err.is_none()));
        host.meta
            .insert("nginx_err".into(), err.map_or(Value::Null, Value::String));
    }

    fn check_domains(&self, domains: &[String], ignore: Option<u64>) -> Result<(), Refusal> {
        for domain in domains {
            let taken_by_proxy = self.hosts.values().any(|h| {
                Some(h.id) != ignore
                    && h.domain_names
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
            });
            let taken_by_other = self.occupied.iter().any(|d| d.eq_ignore_ascii_case(domain));
            if taken_by_proxy || taken_by_other {
                return Err((400, format!("{domain} is already in use")));
            }
        }
        Ok(())
    }

    /// The proxy-host schema: `additionalProperties: false`, required fields on create, at least
    /// one field on update, and the type and range of each field.
    fn validate_host(&self, body: &Value, create: bool) -> Result<Map<String, Value>, Refusal> {
        let Value::Object(body) = body else {
            return Err((400, "data must be object".into()));
        };
        let mut allowed: Vec<&str> = HOST_FIELDS.to_vec();
        if self.version.supports_trust_forwarded_proto() {
            allowed.push("trust_forwarded_proto");
        }
        check_fields(body, &allowed)?;
        if create {
            if let Some(missing) = REQUIRED_ON_CREATE.iter().find(|f| !body.contains_key(**f)) {
                return Err((400, format!("data must have required property '{missing}'")));
            }
        } else if body.is_empty() {
            return Err((400, "data must NOT have fewer than 1 properties".into()));
        }
        for (key, value) in body {
            if let Some(problem) = field_problem(key, value) {
                return Err((400, format!("data/{key} {problem}")));
            }
        }
        Ok(body.clone())
    }

    /// A host as NPM shows it to this version: booleans as 0/1 before 2.12, no
    /// `trust_forwarded_proto` before 2.14.
    fn render(&self, h: &FakeHost) -> Value {
        let json_booleans = self.version.has_json_booleans();
        let b = |name: &str| {
            let on = h.flag(name);
            if json_booleans {
                Value::Bool(on)
            } else {
                Value::from(u8::from(on))
            }
        };
        let mut row = json!({
            "id": h.id,
            "created_on": h.created_on,
            "modified_on": h.modified_on,
            "owner_user_id": 1,
            "domain_names": h.domain_names,
            "forward_scheme": h.forward_scheme,
            "forward_host": h.forward_host,
            "forward_port": h.forward_port,
            "access_list_id": h.access_list_id,
            "certificate_id": h.certificate_id,
            "ssl_forced": b("ssl_forced"),
            "caching_enabled": b("caching_enabled"),
            "block_exploits": b("block_exploits"),
            "advanced_config": h.advanced_config,
            "meta": h.meta,
            "allow_websocket_upgrade": b("allow_websocket_upgrade"),
            "http2_support": b("http2_support"),
            "enabled": b("enabled"),
            "locations": h.locations,
            "hsts_enabled": b("hsts_enabled"),
            "hsts_subdomains": b("hsts_subdomains"),
        });
        if self.version.supports_trust_forwarded_proto() {
            row["trust_forwarded_proto"] = b("trust_forwarded_proto");
        }
        row
    }
}

/// What NPM's schema says is wrong with one proxy-host field, if anything.
fn field_problem(key: &str, value: &Value) -> Option<&'static str> {
    let require = |ok: bool, problem: &'static str| (!ok).then_some(problem);
    let port = |v: &Value| v.as_u64().is_some_and(|p| (1..=65535).contains(&p));
    let scheme = |v: &Value| matches!(v.as_str(), Some("http" | "https"));
    match key {
        "domain_names" => domain_names_problem(value),
        "forward_scheme" => require(scheme(value), "must be equal to one of the allowed values"),
        "forward_host" => require(
            value.as_str().is_some_and(|h| (1..=255).contains(&h.len())),
            "must be a string of 1 to 255 characters",
        ),
        "forward_port" => require(port(value), "must be an integer from 1 to 65535"),
        "certificate_id" => require(
            value.as_u64().is_some() || value == "new",
            "must be integer or \"new\"",
        ),
        "access_list_id" => require(value.as_u64().is_some(), "must be integer"),
        "advanced_config" => require(value.is_string(), "must be string"),
        "meta" => require(value.is_object(), "must be object"),
        "locations" => require(
            value.as_array().is_some_and(|list| {
                list.iter().all(|l| {
                    l.get("path").is_some_and(Value::is_string)
                        && l.get("forward_scheme").is_some_and(scheme)
                        && l.get("forward_host").is_some_and(Value::is_string)
                        && l.get("forward_port").is_some_and(port)
                })
            }),
            "must be an array of locations",
        ),
        k if HOST_BOOLEANS.contains(&k) => require(value.is_boolean(), "must be boolean"),
        _ => None,
    }
}

fn domain_names_problem(value: &Value) -> Option<&'static str> {
    let Some(list) = value.as_array() else {
        return Some("must be array");
    };
    if list.is_empty() || list.len() > 100 {
        return Some("must NOT have fewer than 1 items or more than 100");
    }
    let mut seen: Vec<String> = Vec::new();
    for d in list {
        let Some(d) = d.as_str().filter(|d| !d.is_empty()) else {
            return Some("must be an array of non-empty strings");
        };
        if d.chars()
            .any(|c| c.is_whitespace() || FORBIDDEN_DOMAIN_CHARS.contains(c))
        {
            return Some("must match the domain name pattern");
        }
        let lower = d.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Some("must NOT have duplicate items");
        }
        seen.push(lower);
    }
    None
}

/// Apply a validated body to a host (`meta` is replaced wholesale, as NPM's patch does).
fn apply(host: &mut FakeHost, body: &Map<String, Value>) {
    for (key, value) in body {
        match key.as_str() {
            "domain_names" => host.domain_names = string_list(value),
            "forward_scheme" => host.forward_scheme = value.as_str().unwrap_or_default().into(),
            "forward_host" => host.forward_host = value.as_str().unwrap_or_default().into(),
            "forward_port" => host.forward_port = value.as_u64().unwrap_or_default(),
            "certificate_id" => host.certificate_id = value.as_u64().unwrap_or_default(),
            "access_list_id" => host.access_list_id = value.as_u64().unwrap_or_default(),
            "advanced_config" => host.advanced_config = value.as_str().unwrap_or_default().into(),
            "meta" => host.meta = value.as_object().cloned().unwrap_or_default(),
            "locations" => host.locations = value.as_array().cloned().unwrap_or_default(),
            k => {
                if let Some(name) = HOST_BOOLEANS.iter().find(|b| **b == k) {
                    host.flags.insert(name, value.as_bool().unwrap_or_default());
                }
            }
        }
    }
}

fn check_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), Refusal> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        // AJV's message names no property; NPM passes it on as is.
        Some(_) => Err((400, "data must NOT have additional properties".into())),
        None => Ok(()),
    }
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// NPM's error envelope.
fn error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": { "code": status, "message": message }
    }))
}

/// An injected failure: the admin nginx's page for 502–504 (the backend is down), NPM's
/// envelope otherwise.
fn fault_answer(status: u16) -> ResponseTemplate {
    match status {
        502..=504 => {
            let reason = match status {
                502 => "Bad Gateway",
                503 => "Service Temporarily Unavailable",
                _ => "Gateway Time-out",
            };
            ResponseTemplate::new(status).set_body_raw(
                format!(
                    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
                     <center><h1>{status} {reason}</h1></center>\r\n<hr><center>openresty</center>\r\n\
                     </body>\r\n</html>\r\n"
                ),
                "text/html",
            )
        }
        500 => error(500, "Internal Error"),
        s => error(s, "Injected failure"),
    }
}
