//! The OCI distribution v2 client: ping, auth, tag listing, digest resolution.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use skipper_core::{Credentials, ImageRef};
use url::Url;

use crate::auth::{AuthState, Challenge, Token, token_lifetime};
use crate::error::{RegistryError, Result};
use crate::ratelimit::{self, RateLimitPolicy};

/// The manifest media types asked for when resolving a digest, most specific first: OCI image
/// index, OCI image manifest, Docker manifest list v2, Docker image manifest v2 (schema 2).
///
/// Asking for index types keeps the digest of a multi-arch image the one `docker pull` records.
pub const MANIFEST_ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The user name credential helpers and `docker login` use for an OAuth2 identity (refresh)
/// token: credentials with this user name are exchanged at the token endpoint with
/// `grant_type=refresh_token` instead of being sent as Basic auth.
pub use skipper_core::docker_config::IDENTITY_TOKEN_USER;

const USER_AGENT: &str = concat!("skipper-registry/", env!("CARGO_PKG_VERSION"));
const MAX_ERROR_BODY: usize = 64 * 1024;
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
const MAX_PAGES: usize = 10_000;

/// Which registry software (or service) a client talks to: it decides the default API endpoint
/// and a few quirks. All of them speak the OCI distribution v2 API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RegistryKind {
    /// Docker Hub: references name `docker.io`, the API is `https://registry-1.docker.io`,
    /// official images live under `library/`, tokens come from `auth.docker.io`.
    DockerHub,
    /// GitHub Container Registry (`ghcr.io`): tokens from `https://ghcr.io/token`, anonymous
    /// tokens for public images.
    Ghcr,
    /// Gitea or Forgejo's built-in container registry (`/v2` on the forge's host, Bearer tokens
    /// from its `/v2/token` realm).
    Gitea,
    /// Any other registry speaking the distribution API (CNCF distribution `registry:2`, Harbor,
    /// Zot, cloud registries).
    #[default]
    Distribution,
}

impl RegistryKind {
    /// Guess the kind from a registry name as found in an [`ImageRef`]: Docker Hub's names and
    /// `ghcr.io` are recognised; anything else is [`Distribution`](Self::Distribution) (a Gitea
    /// host cannot be told from its name, and behaves like one anyway).
    pub fn detect(registry: &str) -> Self {
        match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => Self::DockerHub,
            "ghcr.io" => Self::Ghcr,
            _ => Self::Distribution,
        }
    }

    /// The registry name references use for this kind, when it is a single service.
    pub fn default_registry(self) -> Option<&'static str> {
        match self {
            Self::DockerHub => Some("docker.io"),
            Self::Ghcr => Some("ghcr.io"),
            Self::Gitea | Self::Distribution => None,
        }
    }

    fn default_api_url(self) -> Option<&'static str> {
        match self {
            Self::DockerHub => Some("https://registry-1.docker.io/"),
            Self::Ghcr => Some("https://ghcr.io/"),
            Self::Gitea | Self::Distribution => None,
        }
    }
}

/// How to build a [`RegistryClient`]. Start from [`Default`] or [`RegistryConfig::new`]:
///
/// ```
/// use std::time::Duration;
/// use skipper_registry::{RegistryConfig, RegistryKind};
/// let config = RegistryConfig {
///     kind: RegistryKind::Gitea,
///     url: Some("https://git.example.com".parse().unwrap()),
///     timeout: Duration::from_secs(10),
///     ..RegistryConfig::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The registry flavour.
    pub kind: RegistryKind,
    /// The API endpoint (`https://registry.example.com`). Defaults to the kind's service
    /// (`https://registry-1.docker.io`, `https://ghcr.io`), or to `https://<registry>` (plain
    /// `http://` for a loopback `registry`). Plain http is refused unless the host is
    /// `localhost` or in 127.0.0.0/8 (or `::1`), like Docker's insecure-registry default.
    pub url: Option<Url>,
    /// The registry name that image references carry (`localhost:5000`, `git.example.com`).
    /// Defaults to the kind's name (`docker.io`, `ghcr.io`) or to the `url`'s `host[:port]`.
    /// Calls with a reference to another registry fail with
    /// [`WrongRegistry`](RegistryError::WrongRegistry), so credentials never leave for another host.
    pub registry: Option<String>,
    /// Credentials: sent to the token endpoint (Bearer) or with every request (Basic). `None`
    /// asks for anonymous tokens.
    pub credentials: Option<Credentials>,
    /// The timeout of each HTTP request (connecting included).
    pub timeout: Duration,
    /// Backoff on 429.
    pub rate_limit: RateLimitPolicy,
    /// Tags asked per page (`?n=`). Registries may cap it; the `Link` header is followed anyway.
    pub page_size: u32,
    /// Extra trusted root certificates (a PEM bundle) for a registry behind a private CA, on top
    /// of the public roots. TLS verification is never switched off.
    pub extra_root_certificates: Option<Vec<u8>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self::new(RegistryKind::Distribution)
    }
}

impl RegistryConfig {
    /// A config for `kind` with defaults: no URL (the kind's default), no credentials, a
    /// 30-second timeout, the default [`RateLimitPolicy`], 100 tags per page.
    pub fn new(kind: RegistryKind) -> Self {
        Self {
            kind,
            url: None,
            registry: None,
            credentials: None,
            timeout: Duration::from_secs(30),
            rate_limit: RateLimitPolicy::default(),
            page_size: 100,
            extra_root_certificates: None,
        }
    }

    /// A config for the registry an image reference names, its kind guessed with
    /// [`RegistryKind::detect`].
    pub fn for_image(image: &ImageRef, credentials: Option<Credentials>) -> Self {
        Self {
            registry: Some(image.registry().to_owned()),
            credentials,
            ..Self::new(RegistryKind::detect(image.registry()))
        }
    }
}

/// A client for one registry, implementing [`skipper_core::Registry`].
///
/// Cheap to clone (clones share the connection pool and the token cache). Bearer tokens are
/// cached per scope until shortly before they expire; the registry's challenge is remembered so
/// later calls authenticate up front instead of collecting a 401 first.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    kind: RegistryKind,
    base: Url,
    registry: String,
    credentials: Option<Credentials>,
    rate_limit: RateLimitPolicy,
    page_size: u32,
    http: reqwest::Client,
    auth: Mutex<AuthState>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("kind", &self.inner.kind)
            .field("registry", &self.inner.registry)
            .field("base", &self.inner.base.as_str())
            .field("authenticated", &self.inner.credentials.is_some())
            .finish_non_exhaustive()
    }
}

/// What goes in the `Authorization` header of one request.
enum Auth {
    None,
    Basic(Credentials),
    Bearer(SecretString),
}

impl RegistryClient {
    /// Build a client. Fails on an unusable config: no URL for a Gitea or Distribution registry,
    /// plain http to a non-loopback host, a bad certificate bundle.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let base = match (&config.url, config.kind.default_api_url(), &config.registry) {
            (Some(url), _, _) => url.clone(),
            (None, Some(default), _) => Url::parse(default).map_err(|e| RegistryError::Config {
                reason: e.to_string(),
            })?,
            (None, None, Some(registry)) => {
                let scheme = if is_loopback_host(registry_host(registry)) {
                    "http"
                } else {
                    "https"
                };
                Url::parse(&format!("{scheme}://{registry}/")).map_err(|e| {
                    RegistryError::Config {
                        reason: format!("registry {registry:?} is not a host name: {e}"),
                    }
                })?
            }
            (None, None, None) => {
                return Err(RegistryError::Config {
                    reason: format!(
                        "a {:?} registry needs `url` (or `registry`): there is no default endpoint",
                        config.kind
                    ),
                });
            }
        };
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(RegistryError::Config {
                reason: format!("{base} is not an http(s) URL"),
            });
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(RegistryError::Config {
                reason: format!("{base} must not carry a query or fragment"),
            });
        }
        check_transport(&base)?;
        let registry = match (&config.registry, config.kind.default_registry()) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => r.to_owned(),
            (None, None) => host_port(&base),
        };
        if config.page_size == 0 {
            return Err(RegistryError::Config {
                reason: "page_size must be at least 1".into(),
            });
        }

        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else if check_transport(attempt.url()).is_err() {
                attempt.error("refusing a redirect to plain http on a non-loopback host")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(redirects);
        if let Some(pem) = &config.extra_root_certificates {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| RegistryError::Config {
                    reason: format!("extra_root_certificates is not a PEM bundle: {e}"),
                })?;
            if certs.is_empty() {
                return Err(RegistryError::Config {
                    reason: "extra_root_certificates holds no PEM certificate".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| RegistryError::Config {
            reason: format!("cannot build the HTTP client: {e}"),
        })?;

        Ok(Self {
            inner: Arc::new(Inner {
                kind: config.kind,
                base,
                registry,
                credentials: config.credentials,
                rate_limit: RateLimitPolicy {
                    max_attempts: config.rate_limit.max_attempts.max(1),
                    ..config.rate_limit
                },
                page_size: config.page_size,
                http,
                auth: Mutex::new(AuthState::default()),
            }),
        })
    }

    /// The registry flavour.
    pub fn kind(&self) -> RegistryKind {
        self.inner.kind
    }

    /// The registry name references must carry to be served by this client.
    pub fn registry(&self) -> &str {
        &self.inner.registry
    }

    /// The API endpoint.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// `GET /v2/`: whether the registry answers and accepts the credentials (authenticating as
    /// `docker login` does, with a token of no scope).
    pub async fn ping(&self) -> Result<()> {
        let url = self.endpoint("/v2/");
        let resp = self.send(Method::GET, &url, "", None).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error(&Method::GET, &url, resp).await)
        }
    }

    /// Every tag of `image`'s repository, in registry order, following `Link: <…>; rel="next"`
    /// pages. The reference's tag and digest are ignored.
    pub async fn tags(&self, image: &ImageRef) -> Result<Vec<String>> {
        let repo = self.repository(image)?;
        let scope = pull_scope(&repo);
        let mut url = self.endpoint(&format!("/v2/{repo}/tags/list"));
        url.query_pairs_mut()
            .append_pair("n", &self.inner.page_size.to_string());
        let mut tags = Vec::new();
        let mut seen_tags = HashSet::new();
        let mut seen_urls = HashSet::new();
        loop {
            if !seen_urls.insert(url.clone()) || seen_urls.len() > MAX_PAGES {
                return Err(RegistryError::InvalidResponse {
                    url: url.to_string(),
                    reason: "the Link header loops back to a page already read".into(),
                });
            }
            let resp = self
                .send(Method::GET, &url, &scope, Some("application/json"))
                .await?;
            if !resp.status().is_success() {
                return Err(status_error(&Method::GET, &url, resp).await);
            }
            let next = next_link(resp.headers(), &url)?;
            if let Some(next) = next.as_ref().filter(|n| n.origin() != url.origin()) {
                return Err(RegistryError::InvalidResponse {
                    url: url.to_string(),
                    reason: format!(
                        "the next page {next} is on another host; not sending credentials there"
                    ),
                });
            }
            let page: TagList = read_json(&url, resp).await?;
            let page_tags = page.tags.unwrap_or_default();
            let got = page_tags.len();
            for tag in page_tags {
                if seen_tags.insert(tag.clone()) {
                    tags.push(tag);
                }
            }
            match next {
                Some(next) if got > 0 => url = next,
                _ => break,
            }
        }
        tracing::debug!(registry = %self.inner.registry, repository = %repo, count = tags.len(), "listed tags");
        Ok(tags)
    }

    /// The digest of the manifest `image` points at (its tag, or its digest when it has no tag).
    ///
    /// Sends `HEAD /v2/<repo>/manifests/<ref>` accepting [`MANIFEST_ACCEPT`] and reads
    /// `Docker-Content-Digest`: a HEAD does not count as a pull on Docker Hub. Only when the
    /// header is missing or malformed does it `GET` the manifest and hash the body.
    pub async fn digest(&self, image: &ImageRef) -> Result<String> {
        let repo = self.repository(image)?;
        let reference = image
            .tag()
            .or(image.digest())
            .ok_or_else(|| RegistryError::Config {
                reason: format!("{image} has neither tag nor digest"),
            })?;
        let scope = pull_scope(&repo);
        let url = self.endpoint(&format!("/v2/{repo}/manifests/{reference}"));
        let accept = MANIFEST_ACCEPT.join(", ");

        let resp = self.send(Method::HEAD, &url, &scope, Some(&accept)).await?;
        if !resp.status().is_success() {
            return Err(status_error(&Method::HEAD, &url, resp).await);
        }
        if let Some(digest) = header_digest(resp.headers()) {
            return Ok(digest);
        }
        tracing::debug!(%url, "no Docker-Content-Digest on HEAD; hashing the manifest");
        let resp = self.send(Method::GET, &url, &scope, Some(&accept)).await?;
        if !resp.status().is_success() {
            return Err(status_error(&Method::GET, &url, resp).await);
        }
        let body = read_limited(&url, resp, MAX_JSON_BODY).await?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
    }

    /// The repository path to use in URLs, after checking the reference is for this registry.
    fn repository(&self, image: &ImageRef) -> Result<String> {
        if image.registry() != self.inner.registry {
            return Err(RegistryError::WrongRegistry {
                image: image.to_string(),
                expected: self.inner.registry.clone(),
                got: image.registry().to_owned(),
            });
        }
        let repo = image.repository();
        Ok(
            if self.inner.kind == RegistryKind::DockerHub && !repo.contains('/') {
                format!("library/{repo}")
            } else {
                repo.to_owned()
            },
        )
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.inner.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// One authenticated request: authenticate up front when the challenge is known, answer a
    /// 401 challenge once, and turn a final 401/403 into `Unauthorized`.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<Response> {
        let mut challenged_scope: Option<String> = None;
        let mut answered_challenge = false;
        loop {
            let auth = self
                .authorization(scope, challenged_scope.as_deref())
                .await?;
            let sent_auth = !matches!(auth, Auth::None);
            let resp = self
                .exchange(&method, url, |rb| {
                    let rb = match accept {
                        Some(a) => rb.header(header::ACCEPT, a),
                        None => rb,
                    };
                    match &auth {
                        Auth::None => rb,
                        Auth::Basic(c) => {
                            rb.basic_auth(&c.username, Some(c.secret.expose_secret()))
                        }
                        Auth::Bearer(t) => rb.bearer_auth(t.expose_secret()),
                    }
                })
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                let challenge = Challenge::from_headers(
                    resp.headers()
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                let learnt = {
                    let mut state = self.lock_auth();
                    let known = state.challenge.clone();
                    state.tokens.remove(scope);
                    if challenge.is_some() {
                        state.challenge.clone_from(&challenge);
                    }
                    known
                };
                match challenge {
                    None => {
                        return Err(unauthorized(
                            &method,
                            url,
                            resp,
                            "the registry sent no usable WWW-Authenticate challenge",
                        )
                        .await);
                    }
                    Some(Challenge::Basic) if self.inner.credentials.is_none() => {
                        return Err(unauthorized(
                            &method,
                            url,
                            resp,
                            "the registry requires credentials (Basic auth) and none are configured",
                        )
                        .await);
                    }
                    Some(Challenge::Basic) if sent_auth && learnt == Some(Challenge::Basic) => {
                        return Err(unauthorized(
                            &method,
                            url,
                            resp,
                            "the credentials were rejected",
                        )
                        .await);
                    }
                    Some(Challenge::Bearer { scope: s, .. }) => challenged_scope = s,
                    Some(Challenge::Basic) => {}
                }
                tracing::debug!(%url, "answering the registry's auth challenge");
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let why = if sent_auth {
                    "the registry refused the request after authentication"
                } else {
                    "the registry refused the request"
                };
                return Err(unauthorized(&method, url, resp, why).await);
            }
            return Ok(resp);
        }
    }

    /// The `Authorization` to send for `scope`, fetching a token when the registry wants Bearer.
    async fn authorization(&self, scope: &str, challenged_scope: Option<&str>) -> Result<Auth> {
        let (challenge, cached) = {
            let state = self.lock_auth();
            (state.challenge.clone(), state.token(scope, Instant::now()))
        };
        match challenge {
            None => Ok(Auth::None),
            Some(Challenge::Basic) => Ok(self
                .inner
                .credentials
                .clone()
                .map_or(Auth::None, Auth::Basic)),
            Some(Challenge::Bearer { .. }) if cached.is_some() => {
                Ok(cached.map_or(Auth::None, Auth::Bearer))
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut scopes = Vec::new();
                if !scope.is_empty() {
                    scopes.push(scope.to_owned());
                }
                if let Some(extra) = challenged_scope.filter(|e| !e.is_empty() && *e != scope) {
                    scopes.push(extra.to_owned());
                }
                let token = self
                    .fetch_token(&realm, service.as_deref(), &scopes)
                    .await?;
                let value = token.value.clone();
                self.lock_auth().tokens.insert(scope.to_owned(), token);
                Ok(Auth::Bearer(value))
            }
        }
    }

    /// Get a token from the challenge's realm: anonymously, with Basic credentials, or (for an
    /// identity token) by the OAuth2 refresh-token grant.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token> {
        let mut url = self
            .inner
            .base
            .join(realm)
            .map_err(|e| RegistryError::InvalidResponse {
                url: self.inner.base.to_string(),
                reason: format!("the token realm {realm:?} is not a URL: {e}"),
            })?;
        check_transport(&url)?;
        let creds = self.inner.credentials.as_ref();
        let refresh = creds.filter(|c| c.username == IDENTITY_TOKEN_USER);
        let (method, resp) = if let Some(refresh) = refresh {
            let body = {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", "skipper")
                    .append_pair("refresh_token", refresh.secret.expose_secret());
                if let Some(service) = service {
                    form.append_pair("service", service);
                }
                if !scopes.is_empty() {
                    form.append_pair("scope", &scopes.join(" "));
                }
                form.finish()
            };
            let resp = self
                .exchange(&Method::POST, &url, |rb| {
                    rb.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body.clone())
                })
                .await?;
            (Method::POST, resp)
        } else {
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = service {
                    q.append_pair("service", service);
                }
                for scope in scopes {
                    q.append_pair("scope", scope);
                }
            }
            let resp = self
                .exchange(&Method::GET, &url, |rb| match creds {
                    Some(c) => rb.basic_auth(&c.username, Some(c.secret.expose_secret())),
                    None => rb,
                })
                .await?;
            (Method::GET, resp)
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let why = if creds.is_some() {
                "the token service rejected the credentials"
            } else {
                "the token service refused an anonymous token (a private image needs credentials)"
            };
            return Err(unauthorized(&method, &url, resp, why).await);
        }
        if !status.is_success() {
            return Err(status_error(&method, &url, resp).await);
        }
        let body: TokenResponse = read_json(&url, resp).await?;
        let value = body
            .token
            .filter(|t| !t.is_empty())
            .or(body.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| RegistryError::InvalidResponse {
                url: strip_query(&url),
                reason: "the token response has neither `token` nor `access_token`".into(),
            })?;
        tracing::debug!(realm = %strip_query(&url), scopes = ?scopes, expires_in = ?body.expires_in, "got a registry token");
        Ok(Token {
            value: SecretString::from(value),
            expires_at: Instant::now() + token_lifetime(body.expires_in),
        })
    }

    /// Send one request (rebuilt by `build` for each attempt), sleeping through 429s within the
    /// [`RateLimitPolicy`].
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let policy = self.inner.rate_limit;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let request = build(self.inner.http.request(method.clone(), url.clone()));
            let resp = request.send().await.map_err(|e| RegistryError::Transport {
                method: method.to_string(),
                url: strip_query(url),
                timed_out: e.is_timeout(),
                source: Box::new(e.without_url()),
            })?;
            if resp.status() != StatusCode::TOO_MANY_REQUESTS {
                if ratelimit::remaining(resp.headers()) == Some(0) {
                    tracing::warn!(registry = %self.inner.registry, "registry rate limit exhausted; the next requests will be refused");
                }
                return Ok(resp);
            }
            let hint = ratelimit::retry_hint(resp.headers(), SystemTime::now());
            let wait = hint.unwrap_or_else(|| policy.backoff(attempts));
            if attempts >= policy.max_attempts || wait > policy.max_wait {
                return Err(RegistryError::RateLimited {
                    method: method.to_string(),
                    url: strip_query(url),
                    retry_after: hint,
                    attempts,
                });
            }
            tracing::warn!(registry = %self.inner.registry, %method, wait_s = wait.as_secs_f64(), attempt = attempts, "rate limited (429); waiting");
            tokio::time::sleep(wait).await;
        }
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // The state is a cache: a panic mid-update leaves nothing worse than a missing token.
        self.inner
            .auth
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl skipper_core::Registry for RegistryClient {
    async fn list_tags(&self, repository: &ImageRef) -> skipper_core::Result<Vec<String>> {
        Ok(self.tags(repository).await?)
    }

    async fn resolve_digest(&self, image: &ImageRef) -> skipper_core::Result<String> {
        Ok(self.digest(image).await?)
    }
}

#[derive(serde::Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
    /// Docker Hub's token service: `{"details": "incorrect username or password"}`.
    #[serde(default)]
    details: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// `sha256:<64 lower hex>` (or another algorithm's well-formed digest) from the header.
fn header_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("docker-content-digest")?.to_str().ok()?.trim();
    let (algo, hex) = value.split_once(':')?;
    let ok = !algo.is_empty()
        && hex.len() >= 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (algo != "sha256" || hex.len() == 64);
    ok.then(|| value.to_owned())
}

/// The `rel="next"` target of a `Link` header, resolved against the page's URL.
fn next_link(headers: &HeaderMap, current: &Url) -> Result<Option<Url>> {
    for value in headers.get_all(header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        let mut rest = value;
        while let Some(start) = rest.find('<') {
            let Some(len) = rest[start + 1..].find('>') else {
                break;
            };
            let target = &rest[start + 1..start + 1 + len];
            let after = &rest[start + 2 + len..];
            let params = &after[..after.find('<').unwrap_or(after.len())];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if is_next {
                return current.join(target).map(Some).map_err(|e| {
                    RegistryError::InvalidResponse {
                        url: current.to_string(),
                        reason: format!("the Link target {target:?} is not a URL: {e}"),
                    }
                });
            }
            rest = after;
        }
    }
    Ok(None)
}

async fn read_limited(url: &Url, mut resp: Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| RegistryError::Transport {
            method: "read".into(),
            url: strip_query(url),
            timed_out: e.is_timeout(),
            source: Box::new(e.without_url()),
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::InvalidResponse {
                url: strip_query(url),
                reason: format!("the response is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_json<T: serde::de::DeserializeOwned>(url: &Url, resp: Response) -> Result<T> {
    let body = read_limited(url, resp, MAX_JSON_BODY).await?;
    serde_json::from_slice(&body).map_err(|e| RegistryError::InvalidResponse {
        url: strip_query(url),
        reason: format!("not the JSON expected: {e}"),
    })
}

/// The registry's error text: `CODE: message; CODE: message`, Docker Hub's `details`, the start
/// of a non-JSON body, or the status's reason when the body is empty (HEAD).
async fn error_text(url: &Url, resp: Response) -> (Vec<String>, String) {
    let status = resp.status();
    let body = read_limited(url, resp, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body) {
        let codes: Vec<String> = parsed.errors.iter().map(|e| e.code.clone()).collect();
        let text: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .chain(parsed.details)
            .filter(|t| !t.is_empty())
            .collect();
        if !text.is_empty() {
            return (codes, text.join("; "));
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        return (
            Vec::new(),
            status
                .canonical_reason()
                .unwrap_or("no body")
                .to_lowercase(),
        );
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    (Vec::new(), short)
}

async fn unauthorized(method: &Method, url: &Url, resp: Response, why: &str) -> RegistryError {
    let status = resp.status().as_u16();
    let (_, text) = error_text(url, resp).await;
    RegistryError::Unauthorized {
        method: method.to_string(),
        url: strip_query(url),
        status,
        message: format!("{why}: {text}"),
    }
}

/// Classify a non-success answer.
async fn status_error(method: &Method, url: &Url, resp: Response) -> RegistryError {
    let status = resp.status();
    let (codes, message) = error_text(url, resp).await;
    let has = |c: &str| codes.iter().any(|x| x == c);
    let method = method.to_string();
    let url = strip_query(url);
    if status == StatusCode::NOT_FOUND || has("NAME_UNKNOWN") || has("MANIFEST_UNKNOWN") {
        let message = if status == StatusCode::NOT_FOUND && codes.is_empty() {
            format!("{message} (the repository or tag does not exist, or is private)")
        } else {
            message
        };
        RegistryError::NotFound {
            method,
            url,
            message,
        }
    } else if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || has("UNAUTHORIZED")
        || has("DENIED")
    {
        RegistryError::Unauthorized {
            method,
            url,
            status: status.as_u16(),
            message,
        }
    } else if status.is_server_error() {
        RegistryError::Server {
            method,
            url,
            status: status.as_u16(),
            message,
        }
    } else {
        RegistryError::UnexpectedStatus {
            method,
            url,
            status: status.as_u16(),
            message,
        }
    }
}

/// URLs in errors and logs lose their query: token URLs carry scopes, and some registries put
/// signed tokens in redirect queries.
fn strip_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// `host[:port]` of a URL, the way image references spell a registry.
fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The host part of a registry name (`localhost:5000` → `localhost`, `[::1]:5000` → `::1`).
fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Plain http only to loopback hosts; everything else https.
fn check_transport(url: &Url) -> Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(()),
        _ => Err(RegistryError::InsecureUrl {
            url: strip_query(url),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn link(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::LINK, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn link_header_next() {
        let cur = Url::parse("https://r.example/v2/a/tags/list?n=2").unwrap();
        assert_eq!(
            next_link(&link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#), &cur)
                .unwrap()
                .unwrap()
                .as_str(),
            "https://r.example/v2/a/tags/list?n=2&last=b"
        );
        assert_eq!(
            next_link(
                &link(
                    r#"<https://r.example/x?a=1,2>; rel="prev", <https://r.example/y>; rel=next"#
                ),
                &cur
            )
            .unwrap()
            .unwrap()
            .as_str(),
            "https://r.example/y"
        );
        assert_eq!(
            next_link(&link(r#"</v2/a/tags/list?last=a>; rel="prev""#), &cur).unwrap(),
            None
        );
        assert_eq!(next_link(&HeaderMap::new(), &cur).unwrap(), None);
    }

    #[test]
    fn only_loopback_may_use_http() {
        for ok in [
            "http://127.0.0.1:5000/",
            "http://127.8.9.10/",
            "http://localhost:5000/",
            "http://[::1]:5000/",
            "https://registry.example.com/",
        ] {
            assert!(check_transport(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://registry.example.com/",
            "http://10.0.0.1:5000/",
            "http://128.0.0.1/",
            "http://localhost.evil.example/",
            "ftp://localhost/",
        ] {
            assert!(check_transport(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_defaults_and_refusals() {
        let hub = RegistryClient::new(RegistryConfig::new(RegistryKind::DockerHub)).unwrap();
        assert_eq!(hub.base_url().as_str(), "https://registry-1.docker.io/");
        assert_eq!(hub.registry(), "docker.io");
        let ghcr = RegistryClient::new(RegistryConfig::new(RegistryKind::Ghcr)).unwrap();
        assert_eq!(ghcr.base_url().as_str(), "https://ghcr.io/");

        let image = ImageRef::parse("localhost:5000/team/app").unwrap();
        let local = RegistryClient::new(RegistryConfig::for_image(&image, None)).unwrap();
        assert_eq!(local.base_url().as_str(), "http://localhost:5000/");
        assert_eq!(local.registry(), "localhost:5000");
        assert_eq!(local.kind(), RegistryKind::Distribution);

        let gitea = RegistryClient::new(RegistryConfig {
            kind: RegistryKind::Gitea,
            url: Some(Url::parse("https://git.example.com:3000").unwrap()),
            ..RegistryConfig::default()
        })
        .unwrap();
        assert_eq!(gitea.registry(), "git.example.com:3000");

        assert!(matches!(
            RegistryClient::new(RegistryConfig::new(RegistryKind::Gitea)),
            Err(RegistryError::Config { .. })
        ));
        assert!(matches!(
            RegistryClient::new(RegistryConfig {
                url: Some(Url::parse("http://registry.example.com").unwrap()),
                ..RegistryConfig::default()
            }),
            Err(RegistryError::InsecureUrl { .. })
        ));
        assert!(matches!(
            RegistryClient::new(RegistryConfig {
                url: Some(Url::parse("https://r.example").unwrap()),
                extra_root_certificates: Some(b"not pem".to_vec()),
                ..RegistryConfig::default()
            }),
            Err(RegistryError::Config { .. })
        ));
    }

    #[test]
    fn digest_header_must_be_well_formed() {
        let mut h = HeaderMap::new();
        let good = format!("sha256:{}", "a".repeat(64));
        h.insert(
            "docker-content-digest",
            HeaderValue::from_str(&good).unwrap(),
        );
        assert_eq!(header_digest(&h), Some(good));
        h.insert(
            "docker-content-digest",
            HeaderValue::from_static("sha256:abc"),
        );
        assert_eq!(header_digest(&h), None);
    }

    #[test]
    fn errors_hide_queries_and_userinfo() {
        let u = Url::parse("https://u:p@auth.example/token?scope=x&service=y").unwrap();
        assert_eq!(strip_query(&u), "https://auth.example/token");
    }
}
