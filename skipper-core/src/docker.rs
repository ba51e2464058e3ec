//! The Docker [`Runtime`] on bollard.
//!
//! [`DockerRuntime::connect`] talks to the engine at `DOCKER_HOST` (`unix://` or `tcp://`), or at
//! `/var/run/docker.sock`, and negotiates the API version down to what the engine speaks, so
//! engines from 20.10 (API 1.41) to current work.
//!
//! ```no_run
//! use skipper_core::docker::DockerRuntime;
//! # async fn run() -> skipper_core::Result<()> {
//! let runtime = DockerRuntime::connect().await?.with_scope("staging");
//! # let _ = runtime; Ok(()) }
//! ```
//!
//! # How Docker's answers become core errors
//! | Docker | [`ErrorKind`] |
//! |---|---|
//! | 400 | `Invalid` |
//! | 401, and pull messages `unauthorized`, `authentication required`, `no basic auth credentials`, `denied` | `Unauthorized` |
//! | 403 | `Rejected` |
//! | 404, and pull messages `manifest unknown`, `name unknown`, `not found` | `NotFound` |
//! | 409 | `Conflict` |
//! | 429, `toomanyrequests` | `RateLimited` |
//! | 502–504, and 500 whose message is a network failure (`connection refused`, `i/o timeout`, ...) | `Transient` |
//! | other 5xx | `Internal` |
//! | no connection to the engine | `Transient`, "cannot reach the Docker engine at ..." |
//! | no answer within the client timeout | `Timeout` |
//!
//! # Published ports
//! With [`ContainerSpec::publish`] the app port is published on `127.0.0.1` with an ephemeral
//! host port, and the container gets the label [`PORT_LABEL`] with the app port.
//! [`ContainerInfo::published`] is the binding of that labelled port; a container without the
//! label (not made by Skipper) falls back to its lowest published TCP port. The label makes the
//! answer independent of what else the image EXPOSEs or the embedder publishes. A stopped
//! container has no bindings, so `published` is `None` until it runs.
//!
//! `probe_http` GETs `http://<published><path>`; when the [`ContainerInfo`] it is given has no
//! `published` (it may predate the start) it inspects the container again for a binding of the
//! probed port, and answers `status: None, detail: "not published"` if there is none.
//!
//! # Probing over the network instead
//! A Skipper that runs in a container of its own (next to the apps, on their shared network)
//! cannot reach ports published on the host's `127.0.0.1`. With
//! [`DockerRuntime::with_probe_via_network`] `probe_http` GETs
//! `http://<container IP>:<port><path>` instead, the IP being the container's address on its own
//! network (`HostConfig.NetworkMode`, read from a fresh inspect: an IP changes when a container
//! restarts). The embedder then creates containers without [`ContainerSpec::publish`]. A
//! container with no address on its network answers `status: None, detail: "no address on
//! network ..."`.
//!
//! # Registry credentials
//! `pull` sends the [`Credentials`] it is given. Without them it looks in the Docker CLI config
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) as `docker pull` would, with
//! [`crate::docker_config`], the parser the registry clients use too: the `credHelpers` entry
//! for the image's registry, else the `credsStore` (running `docker-credential-<helper> get`),
//! else the `auths` entry (a base64 `auth`, `username`/`password`, or an `identitytoken`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    EndpointSettings, Health, HealthConfig, HealthStatusEnum, HostConfig, ImageInspect,
    NetworkCreateRequest, NetworkingConfig, PortBinding, PortMap, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;

use crate::backend::{
    ContainerInfo, ContainerSpec, Credentials, HealthStatus, ImageHealthcheck, ImageMetadata,
    ProbeResult, ProgressSender, PullProgress, PulledImage, RunState, Runtime,
};
use crate::docker_config::{DockerConfig, IDENTITY_TOKEN_USER};
use crate::error::{Error, ErrorKind, Result};
use crate::model::labels;
use crate::reference::{DOCKER_HUB, ImageRef};

const BACKEND: &str = "docker";

/// The engine address used when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// The label holding the app port (inside the container) of containers created with a port.
/// [`ContainerInfo::published`] reports the host binding of this port.
pub const PORT_LABEL: &str = crate::model::labels::PORT;

/// bollard's default request timeout; calls that wait longer on purpose (stop with a long grace)
/// extend it for that call.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The Docker [`Runtime`]: containers, images and networks on one Docker engine, through bollard,
/// and HTTP health probes through reqwest to ports published on 127.0.0.1 (or, with
/// [`with_probe_via_network`](Self::with_probe_via_network), to the container's address on its
/// network).
///
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    address: String,
    scope: Option<String>,
    docker_config: Option<PathBuf>,
    http: reqwest::Client,
    /// Probe the container's address on its network instead of its published port.
    probe_via_network: bool,
    /// Serialises `ensure_network` in this process (engines before API 1.44 do not reject a
    /// second network with the same name).
    network_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("address", &self.address)
            .field("api_version", &self.docker.client_version().to_string())
            .field("scope", &self.scope)
            .field("docker_config", &self.docker_config)
            .finish_non_exhaustive()
    }
}

impl DockerRuntime {
    /// Connect to the engine at `DOCKER_HOST`, or at [`DEFAULT_DOCKER_HOST`], and negotiate the
    /// API version. An unreachable engine is a `Transient` error saying where it looked.
    pub async fn connect() -> Result<Self> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
        Self::connect_to(&host).await
    }

    /// Connect to the engine at `address` (`unix:///path/docker.sock`, `tcp://host:port` or
    /// `http://host:port`) and negotiate the API version.
    pub async fn connect_to(address: &str) -> Result<Self> {
        let docker = match Docker::connect_with_host(address) {
            Ok(d) => d,
            Err(BollardError::UnsupportedURISchemeError { .. }) => {
                return Err(Error::backend(
                    BACKEND,
                    ErrorKind::Invalid,
                    format!(
                        "unsupported Docker engine address {address:?}: use unix:///path/to/docker.sock or tcp://host:port"
                    ),
                ));
            }
            Err(e) => return Err(unreachable(address, &e)),
        };
        let docker = docker
            .with_timeout(CLIENT_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(|e| match e {
                BollardError::RequestTimeoutError => Error::backend(
                    BACKEND,
                    ErrorKind::Timeout,
                    format!(
                        "the Docker engine at {address} did not answer within {}s",
                        CLIENT_TIMEOUT.as_secs()
                    ),
                ),
                e if is_connection_error(&e) => unreachable(address, &e),
                e => map_error(
                    e,
                    &format!("negotiate the API version with {address}"),
                    address,
                ),
            })?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| {
                Error::backend_with(
                    BACKEND,
                    ErrorKind::Internal,
                    "build the HTTP client for health probes",
                    e,
                )
            })?;
        tracing::debug!(%address, version = %docker.client_version(), "connected to the Docker engine");
        Ok(Self {
            docker,
            address: address.to_owned(),
            scope: None,
            docker_config: default_docker_config_dir(),
            http,
            probe_via_network: false,
            network_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Confine this runtime to `scope`: every container and network it creates carries the label
    /// `dev.skipper.scope=<scope>`, and [`Runtime::list_containers`] only sees containers with it.
    /// Several engines (or test runs) then share one Docker host without touching each other.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Where `pull` looks for a `config.json` when it is given no credentials (a directory, like
    /// `DOCKER_CONFIG`); `None` turns the lookup off. Defaults to `$DOCKER_CONFIG`, else
    /// `~/.docker`.
    pub fn with_docker_config(mut self, dir: Option<PathBuf>) -> Self {
        self.docker_config = dir;
        self
    }

    /// Health probes go to the container's IP address on its own network and the app port
    /// (`http://172.18.0.5:8080/health`), not to a port published on `127.0.0.1`: for a Skipper
    /// that runs in a container attached to the apps' network. Off by default.
    pub fn with_probe_via_network(mut self, on: bool) -> Self {
        self.probe_via_network = on;
        self
    }

    /// The scope given to [`with_scope`](Self::with_scope), if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The engine address this runtime talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The negotiated Docker API version (`1.41` on a 20.10 engine).
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    fn err(&self, e: BollardError, context: &str) -> Error {
        map_error(e, context, &self.address)
    }

    /// The client for one call that may legitimately take `extra` longer than usual.
    fn client_for(&self, extra: Duration) -> Docker {
        self.docker.clone().with_timeout(CLIENT_TIMEOUT + extra)
    }

    /// The credentials the Docker config has for `image`'s registry. A credential helper may
    /// run (for up to 10 s), so this reads and asks on a blocking thread.
    async fn registry_credentials(&self, image: &ImageRef) -> Option<DockerCredentials> {
        let path = self.docker_config.as_ref()?.join("config.json");
        let registry = image.registry().to_owned();
        tokio::task::spawn_blocking(move || {
            credentials_from_config(&DockerConfig::load_if_present(&path)?, &registry)
        })
        .await
        .unwrap_or_default()
    }

    /// A failed call on container `id`: `NotFound` naming the container when Docker says it
    /// does not exist; otherwise Docker's own answer (a 404 for a missing network at start is
    /// `NotFound` too, with Docker's message as the source).
    fn container_err(&self, e: BollardError, action: &str, id: &str) -> Error {
        if status_of(&e) == Some(404)
            && message_of(&e)
                .to_ascii_lowercase()
                .contains("no such container")
        {
            Error::not_found(format!("container {id}"))
        } else {
            self.err(e, &format!("{action} container {id}"))
        }
    }

    async fn inspect_raw(&self, id: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.container_err(e, "inspect", id))
    }

    async fn image_inspect(&self, image: &ImageRef) -> Result<ImageInspect> {
        let reference = docker_reference(image);
        self.docker
            .inspect_image(&reference)
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => Error::not_found(format!("local image {reference}")),
                _ => self.err(e, &format!("inspect image {reference}")),
            })
    }

    /// Keep one of several networks named `name`: the one with the most containers attached
    /// (the smallest id among equals), so that every creator keeps the same one; remove the
    /// others. Removing one in use fails and is left for the next lookup.
    async fn remove_duplicate_networks(&self, name: &str, ids: &[String]) {
        let mut attached = Vec::new();
        for id in ids {
            let n = self
                .docker
                .inspect_network(id, None)
                .await
                .ok()
                .and_then(|n| n.containers)
                .map_or(0, |c| c.len());
            attached.push((std::cmp::Reverse(n), id.clone()));
        }
        attached.sort();
        for (_, duplicate) in attached.iter().skip(1) {
            match self.docker.remove_network(duplicate).await {
                Ok(()) => {
                    tracing::info!(network = %name, %duplicate, "removed a duplicate network")
                }
                Err(e) => {
                    tracing::warn!(network = %name, %duplicate, error = %e, "cannot remove a duplicate network yet")
                }
            }
        }
    }

    /// The ids of networks named exactly `name` (the name filter matches substrings), sorted.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>> {
        let filters = HashMap::from([("name", vec![name])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.err(e, &format!("list networks named {name}")))?;
        let mut ids: Vec<String> = networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ensure_network(&self, network: &str) -> Result<()> {
        let _guard = self.network_lock.lock().await;
        let found = self.networks_named(network).await?;
        if found.len() > 1 {
            // Duplicates from an earlier race (Docker 20.10 allows them): converge to one now,
            // or every deploy on the name fails as ambiguous.
            self.remove_duplicate_networks(network, &found).await;
            return Ok(());
        }
        if !found.is_empty() {
            return Ok(());
        }
        let mut net_labels = HashMap::from([(labels::MANAGED.to_owned(), "true".to_owned())]);
        if let Some(scope) = &self.scope {
            net_labels.insert(labels::SCOPE.to_owned(), scope.clone());
        }
        let request = NetworkCreateRequest {
            name: network.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(net_labels),
            ..Default::default()
        };
        let created = match self.docker.create_network(request).await {
            Ok(resp) => resp.id,
            // Someone else created it first.
            Err(e) if status_of(&e) == Some(409) => return Ok(()),
            Err(e) => return Err(self.err(e, &format!("create network {network}"))),
        };
        // Engines before API 1.44 accept a second network with the same name when two creators
        // race. Every creator then removes all but the smallest id: whichever lists last sees
        // both, so one network survives (removing one in use fails, and is left alone).
        let ids = self.networks_named(network).await?;
        if ids.len() > 1 {
            tracing::debug!(%network, %created, "a create race made duplicate networks");
            self.remove_duplicate_networks(network, &ids).await;
        }
        Ok(())
    }

    async fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<Credentials>,
        progress: Option<ProgressSender>,
    ) -> Result<PulledImage> {
        let (auth, who) = match &credentials {
            Some(c) => (
                Some(DockerCredentials {
                    username: Some(c.username.clone()),
                    password: Some(c.secret.expose_secret().to_owned()),
                    serveraddress: Some(server_address(image.registry())),
                    ..Default::default()
                }),
                format!("as {}", c.username),
            ),
            None => match self.registry_credentials(image).await {
                Some(c) => (
                    Some(c),
                    "with the credentials in the Docker config".to_owned(),
                ),
                None => (None, "without credentials".to_owned()),
            },
        };
        let tag_or_digest = image.digest().or(image.tag()).unwrap_or("latest");
        let options = CreateImageOptionsBuilder::default()
            .from_image(&image.name())
            .tag(tag_or_digest)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, auth);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| pull_error(e, image, &who, &self.address))?;
            if let (Some(tx), Some(status)) = (&progress, info.status) {
                let detail = info.progress_detail.unwrap_or_default();
                let _ = tx.send(PullProgress {
                    layer: info.id,
                    status,
                    current: detail.current.and_then(|n| u64::try_from(n).ok()),
                    total: detail.total.and_then(|n| u64::try_from(n).ok()),
                });
            }
        }
        let inspected = self.image_inspect(image).await?;
        let digest = match image.digest() {
            Some(d) => Some(d.to_owned()),
            None => repo_digest(inspected.repo_digests.as_deref().unwrap_or(&[]), image),
        };
        Ok(PulledImage {
            id: inspected.id.unwrap_or_default(),
            digest,
        })
    }

    async fn has_image(&self, image: &ImageRef) -> Result<bool> {
        match self.image_inspect(image).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn inspect_image(&self, image: &ImageRef) -> Result<ImageMetadata> {
        let inspected = self.image_inspect(image).await?;
        Ok(image_metadata(inspected))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let body = create_body(spec, self.scope.as_deref())?;
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self.docker.create_container(Some(options), body).await {
            Ok(resp) => {
                for warning in resp.warnings {
                    tracing::warn!(container = %spec.name, %warning, "Docker warning at create");
                }
                Ok(resp.id)
            }
            Err(e) => Err(match status_of(&e) {
                Some(409) => Error::Conflict {
                    what: format!("a container named {} already exists", spec.name),
                },
                Some(404) if message_of(&e).contains("network") => Error::not_found(format!(
                    "network {}",
                    spec.network.as_deref().unwrap_or("default")
                )),
                Some(404) => {
                    Error::not_found(format!("local image {}", docker_reference(&spec.image)))
                }
                _ => self.err(e, &format!("create container {}", spec.name)),
            }),
        }
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        // 304 (already running) is a success in bollard.
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| self.container_err(e, "start", id))
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let options = StopContainerOptionsBuilder::default()
            .t(grace_seconds(grace))
            .build();
        // 304 (already stopped) is a success in bollard.
        self.client_for(grace)
            .stop_container(id, Some(options))
            .await
            .map_err(|e| self.container_err(e, "stop", id))
    }

    async fn restart_container(&self, id: &str, grace: Duration) -> Result<()> {
        let options = RestartContainerOptionsBuilder::default()
            .t(grace_seconds(grace))
            .build();
        self.client_for(grace)
            .restart_container(id, Some(options))
            .await
            .map_err(|e| self.container_err(e, "restart", id))
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone already, or going ("removal of container ... is already in progress").
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e)
                if status_of(&e) == Some(409) && message_of(&e).contains("already in progress") =>
            {
                Ok(())
            }
            Err(e) => Err(self.err(e, &format!("remove container {id}"))),
        }
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo> {
        Ok(container_info(self.inspect_raw(id).await?))
    }

    async fn list_containers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>> {
        let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(scope) = &self.scope {
            wanted.push(format!("{}={scope}", labels::SCOPE));
        }
        let mut options = ListContainersOptionsBuilder::default().all(true);
        let filters = HashMap::from([("label", wanted)]);
        if !filters["label"].is_empty() {
            options = options.filters(&filters);
        }
        let summaries = self
            .docker
            .list_containers(Some(options.build()))
            .await
            .map_err(|e| self.err(e, "list containers"))?;
        // Inspect each one, so listed and inspected containers read the same (summaries lack the
        // health status and exit code on older engines).
        let mut out = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            match self.inspect_raw(&id).await {
                Ok(resp) => out.push(container_info(resp)),
                Err(e) if e.kind() == ErrorKind::NotFound => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn probe_http(
        &self,
        container: &ContainerInfo,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<ProbeResult> {
        let published = match &container.published {
            _ if self.probe_via_network => {
                // Always a fresh inspect: the address is assigned at start and may change.
                let fresh = self.inspect_raw(&container.id).await?;
                match network_address(&fresh, port) {
                    Ok(address) => address,
                    Err(detail) => {
                        return Ok(ProbeResult {
                            status: None,
                            detail,
                        });
                    }
                }
            }
            Some(p) => p.clone(),
            // The caller's view may predate the start; ask again (this also tells a container
            // that is gone, the one failure that is an error).
            None => {
                let fresh = self.inspect_raw(&container.id).await?;
                let ports = fresh
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.ports.as_ref());
                match binding_for(ports, port) {
                    Some(p) => p,
                    None => {
                        return Ok(ProbeResult {
                            status: None,
                            detail: "not published".to_owned(),
                        });
                    }
                }
            }
        };
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let url = format!("http://{published}{path}");
        let result = self.http.get(&url).timeout(timeout).send().await;
        Ok(match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                ProbeResult {
                    status: Some(status),
                    detail: format!("GET {url} → {status}"),
                }
            }
            Err(e) => ProbeResult {
                status: None,
                detail: format!("GET {url} → {}", describe_request_error(&e, timeout)),
            },
        })
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<Vec<String>> {
        if lines == 0 {
            return Ok(Vec::new());
        }
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut bytes = Vec::new();
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(|e| self.container_err(e, "read the logs of", id))?;
            bytes.extend_from_slice(chunk.as_ref());
        }
        Ok(last_lines(&bytes, lines))
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers: requests, answers and errors.

/// How Docker is asked for `image`: `name@digest` when pinned, else `name:tag`.
fn docker_reference(image: &ImageRef) -> String {
    match (image.digest(), image.tag()) {
        (Some(d), _) => format!("{}@{d}", image.name()),
        (None, Some(t)) => format!("{}:{t}", image.name()),
        (None, None) => format!("{}:latest", image.name()),
    }
}

/// The `serveraddress` Docker expects for `registry`.
fn server_address(registry: &str) -> String {
    if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    }
}

fn default_docker_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| Path::new(&home).join(".docker"))
}

/// The credentials for `registry` in a Docker CLI config, if it has any (helpers included), as
/// the engine API wants them: an identity token goes as `identitytoken`.
fn credentials_from_config(config: &DockerConfig, registry: &str) -> Option<DockerCredentials> {
    let c = config.credentials_for(registry)?;
    let secret = c.secret.expose_secret().to_owned();
    let (username, password, identitytoken) = if c.username == IDENTITY_TOKEN_USER {
        (None, None, Some(secret))
    } else {
        (Some(c.username), Some(secret), None)
    };
    Some(DockerCredentials {
        username,
        password,
        identitytoken,
        serveraddress: Some(server_address(registry)),
        ..Default::default()
    })
}

/// The digest among `RepoDigests` (`name@sha256:…`) that belongs to `image`'s repository.
/// Docker writes Docker Hub names in their short form (`nginx@…`, `user/app@…`).
fn repo_digest(repo_digests: &[String], image: &ImageRef) -> Option<String> {
    let mut names = vec![image.name()];
    if image.registry() == DOCKER_HUB {
        names.push(image.repository().to_owned());
        if let Some(short) = image.repository().strip_prefix("library/") {
            names.push(short.to_owned());
        }
    }
    repo_digests.iter().find_map(|rd| {
        let (name, digest) = rd.split_once('@')?;
        names.iter().any(|n| n == name).then(|| digest.to_owned())
    })
}

/// The body of a container create for `spec`.
fn create_body(spec: &ContainerSpec, scope: Option<&str>) -> Result<ContainerCreateBody> {
    if spec.publish && spec.port.is_none() {
        return Err(Error::backend(
            BACKEND,
            ErrorKind::Invalid,
            format!(
                "container {}: publish is set but no port is given",
                spec.name
            ),
        ));
    }
    let mut container_labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(scope) = scope {
        container_labels.insert(labels::SCOPE.to_owned(), scope.to_owned());
    }
    if let Some(port) = spec.port {
        container_labels.insert(PORT_LABEL.to_owned(), port.to_string());
    }
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // `src:dst[:opts]` (a host path or a named volume) is a bind; a bare path is an anonymous
    // volume.
    let (binds, anonymous): (Vec<String>, Vec<String>) =
        spec.volumes.iter().cloned().partition(|v| v.contains(':'));
    let port_key = spec.port.map(|p| format!("{p}/tcp"));
    let port_bindings = match (&port_key, spec.publish) {
        (Some(key), true) => Some(PortMap::from([(
            key.clone(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some(String::new()),
            }]),
        )])),
        _ => None,
    };
    let networking_config = spec.network.as_ref().map(|network| {
        // Aliases exist only on user-defined networks.
        let builtin = matches!(network.as_str(), "bridge" | "host" | "none" | "default")
            || network.starts_with("container:");
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings {
                    aliases: (!builtin).then(|| vec![spec.name.clone()]),
                    ..Default::default()
                },
            )])),
        }
    });
    Ok(ContainerCreateBody {
        image: Some(docker_reference(&spec.image)),
        env: Some(env),
        labels: Some(container_labels),
        exposed_ports: port_key.map(|k| vec![k]),
        volumes: (!anonymous.is_empty()).then_some(anonymous),
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings,
            network_mode: spec.network.clone(),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    })
}

/// Docker's `t` (seconds) for a grace period, rounded up.
fn grace_seconds(grace: Duration) -> i32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn run_state(state: Option<&ContainerState>) -> RunState {
    let Some(state) = state else {
        return RunState::Dead;
    };
    match state.status {
        Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) => RunState::Exited,
        // "stopping" (newer engines) is still running until it exits.
        Some(ContainerStateStatusEnum::STOPPING) => RunState::Running,
        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD) => RunState::Dead,
        Some(ContainerStateStatusEnum::EMPTY) | None => {
            if state.dead == Some(true) {
                RunState::Dead
            } else if state.restarting == Some(true) {
                RunState::Restarting
            } else if state.paused == Some(true) {
                RunState::Paused
            } else if state.running == Some(true) {
                RunState::Running
            } else {
                RunState::Exited
            }
        }
    }
}

fn health_status(health: Option<&Health>) -> HealthStatus {
    match health.and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => HealthStatus::Starting,
        Some(HealthStatusEnum::HEALTHY) => HealthStatus::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => HealthStatus::Unhealthy,
        Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => HealthStatus::None,
    }
}

/// `127.0.0.1:<host port>` for the binding of container port `port`/tcp, if it is published on
/// an address the host can reach through 127.0.0.1.
fn binding_for(ports: Option<&PortMap>, port: u16) -> Option<String> {
    let bindings = ports?.get(&format!("{port}/tcp"))?.as_ref()?;
    let reachable = |b: &&PortBinding| {
        matches!(
            b.host_ip.as_deref(),
            None | Some("" | "127.0.0.1" | "0.0.0.0")
        ) && b
            .host_port
            .as_deref()
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
    };
    let binding = bindings
        .iter()
        .filter(reachable)
        .min_by_key(|b| b.host_ip.as_deref() != Some("127.0.0.1"))?;
    Some(format!("127.0.0.1:{}", binding.host_port.as_deref()?))
}

/// `<ip>:<port>` of the container on its own network (`HostConfig.NetworkMode`), for a probe
/// from a container on that network; `Err` says why there is none. A container whose network
/// mode names no network it is attached to (`default`, or one attached by hand) uses its only
/// attached network with an address, if it has exactly one.
fn network_address(
    resp: &ContainerInspectResponse,
    port: u16,
) -> std::result::Result<String, String> {
    let mode = resp
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .unwrap_or("default");
    let networks = resp
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    let ip_on = |e: &EndpointSettings| {
        e.ip_address
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .map(str::to_owned)
    };
    let ip = match networks.and_then(|n| n.get(mode)) {
        Some(endpoint) => ip_on(endpoint),
        None => {
            let mut ips = networks.into_iter().flatten().filter_map(|(_, e)| ip_on(e));
            match (ips.next(), ips.next()) {
                (Some(ip), None) => Some(ip),
                _ => None,
            }
        }
    };
    ip.map(|ip| format!("{ip}:{port}"))
        .ok_or_else(|| format!("no address on network {mode}"))
}

/// The published address of the app port: the port in [`PORT_LABEL`], else the lowest published
/// TCP port.
fn published_address(
    container_labels: &BTreeMap<String, String>,
    ports: Option<&PortMap>,
) -> Option<String> {
    if let Some(port) = container_labels
        .get(PORT_LABEL)
        .and_then(|p| p.parse::<u16>().ok())
    {
        return binding_for(ports, port);
    }
    let mut tcp: Vec<u16> = ports?.keys().filter_map(|k| parse_tcp_port(k)).collect();
    tcp.sort_unstable();
    tcp.into_iter().find_map(|p| binding_for(ports, p))
}

/// `8080/tcp` → 8080; other protocols and malformed keys → `None`. A bare `8080` is TCP.
fn parse_tcp_port(key: &str) -> Option<u16> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    if !proto.eq_ignore_ascii_case("tcp") {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

fn container_info(resp: ContainerInspectResponse) -> ContainerInfo {
    let container_labels: BTreeMap<String, String> = resp
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let state = run_state(resp.state.as_ref());
    let exit_code = match state {
        RunState::Exited | RunState::Restarting | RunState::Dead => {
            resp.state.as_ref().and_then(|s| s.exit_code)
        }
        _ => None,
    };
    let health = health_status(resp.state.as_ref().and_then(|s| s.health.as_ref()));
    let ports = resp
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref());
    let published = published_address(&container_labels, ports);
    ContainerInfo {
        id: resp.id.unwrap_or_default(),
        name: resp
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: resp
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .or(resp.image)
            .unwrap_or_default(),
        labels: container_labels,
        state,
        exit_code,
        health,
        published,
    }
}

fn nanos(n: Option<i64>) -> Option<Duration> {
    n.and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .map(Duration::from_nanos)
}

fn image_healthcheck(config: Option<&HealthConfig>) -> Option<ImageHealthcheck> {
    let config = config?;
    let test = config.test.clone().filter(|t| !t.is_empty())?;
    if test.first().map(String::as_str) == Some("NONE") {
        return None;
    }
    Some(ImageHealthcheck {
        test,
        interval: nanos(config.interval),
        timeout: nanos(config.timeout),
        retries: config
            .retries
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| *r > 0),
    })
}

/// A local image found by its id (`sha256:…`, see [`local_image_id`]), named by its tags.
///
/// [`local_image_id`]: crate::reference::local_image_id
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// The full image id, `sha256:` and 64 hex digits.
    pub id: String,
    /// Its tags (`RepoTags`); one Docker lists that is not a valid reference is left out.
    pub tags: Vec<ImageRef>,
    /// Its repository digests (`RepoDigests`, `name@sha256:…`).
    pub digests: Vec<String>,
}

impl LocalImage {
    /// The reference that deploys exactly this image: its one tag (in `repository`, when
    /// given), pinned to its repository digest there when it has one. `Rejected` when it has no
    /// such tag, or several and no `repository` to choose.
    pub fn reference(&self, repository: Option<&ImageRef>) -> Result<ImageRef> {
        let mut tags: Vec<&ImageRef> = self
            .tags
            .iter()
            .filter(|t| repository.is_none_or(|r| t.same_repository(r)))
            .collect();
        tags.sort();
        tags.dedup();
        let listed = || {
            let all: Vec<String> = self.tags.iter().map(ImageRef::familiar).collect();
            if all.is_empty() {
                "it has none".to_owned()
            } else {
                format!("its tags: {}", all.join(", "))
            }
        };
        let tag = match (tags.as_slice(), repository) {
            ([one], _) => *one,
            ([], Some(r)) => {
                return Err(Error::rejected(format!(
                    "image {} has no tag in {} ({}); tag it there with `docker tag`",
                    self.id,
                    r.name(),
                    listed()
                )));
            }
            ([], None) => {
                return Err(Error::rejected(format!(
                    "image {} has no tag, and stages choose versions by tag; tag it with \
                     `docker tag` and deploy that",
                    self.id
                )));
            }
            (_, _) => {
                return Err(Error::rejected(format!(
                    "image {} has several tags ({}); choose one with --project, or deploy a tag",
                    self.id,
                    listed()
                )));
            }
        };
        let pinned = self.digests.iter().find_map(|d| {
            let (name, digest) = d.split_once('@')?;
            let r = ImageRef::parse(name).ok()?;
            r.same_repository(tag)
                .then(|| tag.with_digest(digest).ok())?
        });
        Ok(pinned.unwrap_or_else(|| tag.clone()))
    }
}

impl DockerRuntime {
    /// The local image whose id is `id` (`sha256:…`, or a prefix of at least 12 hex digits):
    /// what `docker image inspect` says names it. `NotFound` if there is none.
    pub async fn local_image(&self, id: &str) -> Result<LocalImage> {
        let inspected = self
            .docker
            .inspect_image(id)
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => Error::not_found(format!("local image {id}")),
                _ => self.err(e, &format!("inspect image {id}")),
            })?;
        Ok(local_image(inspected))
    }
}

fn local_image(inspected: ImageInspect) -> LocalImage {
    LocalImage {
        id: inspected.id.unwrap_or_default(),
        tags: inspected
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|t| ImageRef::parse(t).ok())
            .collect(),
        digests: inspected.repo_digests.unwrap_or_default(),
    }
}

fn image_metadata(inspected: ImageInspect) -> ImageMetadata {
    let config = inspected.config.unwrap_or_default();
    let mut exposed_ports: Vec<u16> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|k| parse_tcp_port(k))
        .collect();
    exposed_ports.sort_unstable();
    exposed_ports.dedup();
    ImageMetadata {
        id: inspected.id.unwrap_or_default(),
        digests: inspected.repo_digests.unwrap_or_default(),
        exposed_ports,
        healthcheck: image_healthcheck(config.healthcheck.as_ref()),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
    }
}

/// The last `n` lines of `bytes`, oldest first, without line endings.
fn last_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|l| (*l).to_owned()).collect()
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn is_connection_error(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::HyperResponseError { .. }
    )
}

/// The innermost cause of an error: for connection failures the OS error (`Connection refused`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The "cannot reach" error for an engine at `address`. The cause is in the message (there is no
/// `source`, so [`Error::chain`] does not repeat it).
fn unreachable(address: &str, e: &BollardError) -> Error {
    let cause = match e {
        BollardError::SocketNotFoundError(path) => format!("no socket at {path}"),
        e => root_cause(e),
    };
    Error::backend(
        BACKEND,
        ErrorKind::Transient,
        format!(
            "cannot reach the Docker engine at {address}: {cause} (is it running? set DOCKER_HOST)"
        ),
    )
}

/// Network failures between the engine and a registry, as Docker words them.
fn is_network_message(message: &str) -> bool {
    const NETWORK: &[&str] = &[
        "connection refused",
        "connection reset",
        "i/o timeout",
        "tls handshake timeout",
        "no such host",
        "network is unreachable",
        "context deadline exceeded",
        "unexpected eof",
        "server misbehaving",
        "temporary failure",
        "503 service unavailable",
        "502 bad gateway",
    ];
    let m = message.to_ascii_lowercase();
    NETWORK.iter().any(|n| m.contains(n))
}

/// The kind of a Docker error answer.
fn kind_for_status(status: u16, message: &str) -> ErrorKind {
    match status {
        400 => ErrorKind::Invalid,
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Rejected,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        408 | 502..=504 => ErrorKind::Transient,
        500..=599 if is_network_message(message) => ErrorKind::Transient,
        _ => ErrorKind::Internal,
    }
}

/// The kind of a pull failure from Docker's words, which carry the registry's answer whatever the
/// HTTP status (a rejected login is often a 500).
fn classify_pull_message(message: &str) -> Option<ErrorKind> {
    let m = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if has(&["toomanyrequests", "too many requests", "rate limit"]) {
        Some(ErrorKind::RateLimited)
    } else if has(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
        "access denied",
        "denied:",
    ]) {
        Some(ErrorKind::Unauthorized)
    } else if has(&[
        "manifest unknown",
        "name unknown",
        "not found",
        "repository name not known",
        "no such image",
    ]) {
        Some(ErrorKind::NotFound)
    } else if is_network_message(&m) {
        Some(ErrorKind::Transient)
    } else {
        None
    }
}

fn pull_error(e: BollardError, image: &ImageRef, who: &str, address: &str) -> Error {
    let status = status_of(&e);
    if status.is_none() && !matches!(e, BollardError::DockerStreamError { .. }) {
        return map_error(e, &format!("pull {image}"), address);
    }
    let message = message_of(&e);
    let kind = classify_pull_message(&message)
        .unwrap_or_else(|| status.map_or(ErrorKind::Internal, |s| kind_for_status(s, &message)));
    let registry = image.registry();
    let what = match kind {
        ErrorKind::NotFound => format!("pull {image}: {registry} has no such image or tag"),
        ErrorKind::Unauthorized => {
            format!("pull {image}: {registry} refused the pull {who}")
        }
        ErrorKind::RateLimited => format!("pull {image}: {registry} is rate limiting pulls"),
        ErrorKind::Transient => format!("pull {image}: the engine could not reach {registry}"),
        _ => format!("pull {image}"),
    };
    Error::backend_with(BACKEND, kind, what, e)
}

/// Any bollard error from a call described by `context` ("inspect container 3f2a").
fn map_error(e: BollardError, context: &str, address: &str) -> Error {
    let kind = match &e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => kind_for_status(*status_code, message),
        BollardError::DockerStreamError { error } if is_network_message(error) => {
            ErrorKind::Transient
        }
        BollardError::RequestTimeoutError => ErrorKind::Timeout,
        e if is_connection_error(e) => ErrorKind::Transient,
        _ => ErrorKind::Internal,
    };
    let message = match &e {
        BollardError::RequestTimeoutError => {
            format!("{context}: the Docker engine at {address} did not answer in time")
        }
        BollardError::HyperLegacyError { err } if err.is_connect() => {
            return unreachable(address, &e);
        }
        BollardError::SocketNotFoundError(_) => return unreachable(address, &e),
        e if is_connection_error(e) => {
            format!("{context}: lost the connection to the Docker engine at {address}")
        }
        _ => context.to_owned(),
    };
    Error::backend_with(BACKEND, kind, message, e)
}

fn describe_request_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {}", humantime::format_duration(timeout))
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        root_cause(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16, message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code: status,
            message: message.to_owned(),
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (400, "bad parameter", ErrorKind::Invalid),
            (401, "unauthorized", ErrorKind::Unauthorized),
            (403, "forbidden", ErrorKind::Rejected),
            (404, "No such container: x", ErrorKind::NotFound),
            (
                409,
                "Conflict. The container name is in use",
                ErrorKind::Conflict,
            ),
            (429, "slow down", ErrorKind::RateLimited),
            (502, "bad gateway", ErrorKind::Transient),
            (503, "unavailable", ErrorKind::Transient),
            (
                500,
                "dial tcp 127.0.0.1:5000: connect: connection refused",
                ErrorKind::Transient,
            ),
            (500, "something odd", ErrorKind::Internal),
        ];
        for (status, message, kind) in cases {
            assert_eq!(kind_for_status(status, message), kind, "{status} {message}");
            let e = map_error(server(status, message), "do it", DEFAULT_DOCKER_HOST);
            assert_eq!(e.kind(), kind, "{status} {message}");
            assert!(e.chain().contains(message), "{}", e.chain());
        }
    }

    #[test]
    fn pull_messages_map_to_kinds() {
        let cases = [
            (
                "manifest for 127.0.0.1:5055/team/app:nope not found: manifest unknown: manifest unknown",
                Some(ErrorKind::NotFound),
            ),
            (
                "repository name not known to registry",
                Some(ErrorKind::NotFound),
            ),
            (
                "Head \"http://127.0.0.1:5056/v2/team/app/manifests/v1\": no basic auth credentials",
                Some(ErrorKind::Unauthorized),
            ),
            (
                "Head \"http://127.0.0.1:5056/v2/team/app/manifests/v1\": unauthorized: authentication required",
                Some(ErrorKind::Unauthorized),
            ),
            (
                "Get \"https://auth.docker.io/token\": unauthorized: incorrect username or password",
                Some(ErrorKind::Unauthorized),
            ),
            (
                "pull access denied for nope, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
                Some(ErrorKind::Unauthorized),
            ),
            (
                "toomanyrequests: You have reached your pull rate limit",
                Some(ErrorKind::RateLimited),
            ),
            (
                "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused",
                Some(ErrorKind::Transient),
            ),
            ("failed to register layer", None),
        ];
        for (message, kind) in cases {
            assert_eq!(classify_pull_message(message), kind, "{message}");
        }
        let image = ImageRef::parse("127.0.0.1:5055/team/app:nope").unwrap();
        let e = pull_error(
            server(404, cases[0].0),
            &image,
            "without credentials",
            DEFAULT_DOCKER_HOST,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("has no such image or tag"), "{e}");
        let e = pull_error(
            BollardError::DockerStreamError {
                error: cases[3].0.to_owned(),
            },
            &image,
            "as skipper",
            DEFAULT_DOCKER_HOST,
        );
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(e.to_string().contains("refused the pull as skipper"), "{e}");
        // A stream error with no recognisable words stays Internal.
        let e = pull_error(
            BollardError::DockerStreamError {
                error: "failed to register layer".into(),
            },
            &image,
            "",
            DEFAULT_DOCKER_HOST,
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
    }

    #[test]
    fn connection_failures_say_where_and_what_to_do() {
        let e = unreachable(
            "unix:///var/run/docker.sock",
            &BollardError::SocketNotFoundError("/var/run/docker.sock".into()),
        );
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(
            e.to_string(),
            "docker: cannot reach the Docker engine at unix:///var/run/docker.sock: \
             no socket at /var/run/docker.sock (is it running? set DOCKER_HOST)"
        );
        let io = BollardError::IOError {
            err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        let e = map_error(io, "list containers", "tcp://127.0.0.1:1");
        assert_eq!(e.kind(), ErrorKind::Transient);
        let e = map_error(
            BollardError::RequestTimeoutError,
            "stop container x",
            "tcp://h:1",
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }

    #[test]
    fn tcp_ports_parse() {
        assert_eq!(parse_tcp_port("8080/tcp"), Some(8080));
        assert_eq!(parse_tcp_port("8080/TCP"), Some(8080));
        assert_eq!(parse_tcp_port("8080"), Some(8080));
        assert_eq!(parse_tcp_port("53/udp"), None);
        assert_eq!(parse_tcp_port("0/tcp"), None);
        assert_eq!(parse_tcp_port("http/tcp"), None);
        assert_eq!(parse_tcp_port("70000/tcp"), None);
    }

    /// `(container port, bindings as (host ip, host port))`.
    type PortEntry<'a> = (&'a str, Option<&'a [(&'a str, &'a str)]>);

    fn ports(entries: &[PortEntry<'_>]) -> PortMap {
        entries
            .iter()
            .map(|(k, bindings)| {
                let bindings = bindings.map(|bs| {
                    bs.iter()
                        .map(|(ip, port)| PortBinding {
                            host_ip: Some((*ip).to_owned()),
                            host_port: Some((*port).to_owned()),
                        })
                        .collect()
                });
                ((*k).to_owned(), bindings)
            })
            .collect()
    }

    #[test]
    fn published_address_prefers_the_labelled_port() {
        let map = ports(&[
            ("80/tcp", Some(&[("127.0.0.1", "40000")])),
            (
                "8080/tcp",
                Some(&[("::1", "40002"), ("127.0.0.1", "40001")]),
            ),
            ("9090/tcp", None),
            ("53/udp", Some(&[("127.0.0.1", "40003")])),
        ]);
        let mut l = BTreeMap::new();
        assert_eq!(
            published_address(&l, Some(&map)).as_deref(),
            Some("127.0.0.1:40000"),
            "without the label the lowest published tcp port"
        );
        l.insert(PORT_LABEL.to_owned(), "8080".to_owned());
        assert_eq!(
            published_address(&l, Some(&map)).as_deref(),
            Some("127.0.0.1:40001")
        );
        l.insert(PORT_LABEL.to_owned(), "9090".to_owned());
        assert_eq!(
            published_address(&l, Some(&map)),
            None,
            "exposed, not published"
        );
        assert_eq!(published_address(&l, None), None, "stopped: no bindings");
        let all = ports(&[("8080/tcp", Some(&[("0.0.0.0", "40005"), ("::", "40005")]))]);
        assert_eq!(
            binding_for(Some(&all), 8080).as_deref(),
            Some("127.0.0.1:40005")
        );
        let pending = ports(&[("8080/tcp", Some(&[("127.0.0.1", "")]))]);
        assert_eq!(binding_for(Some(&pending), 8080), None);
    }

    #[test]
    fn health_and_state_map() {
        let h = |s| Health {
            status: Some(s),
            ..Default::default()
        };
        assert_eq!(health_status(None), HealthStatus::None);
        assert_eq!(
            health_status(Some(&h(HealthStatusEnum::NONE))),
            HealthStatus::None
        );
        assert_eq!(
            health_status(Some(&h(HealthStatusEnum::EMPTY))),
            HealthStatus::None
        );
        assert_eq!(
            health_status(Some(&h(HealthStatusEnum::STARTING))),
            HealthStatus::Starting
        );
        assert_eq!(
            health_status(Some(&h(HealthStatusEnum::HEALTHY))),
            HealthStatus::Healthy
        );
        assert_eq!(
            health_status(Some(&h(HealthStatusEnum::UNHEALTHY))),
            HealthStatus::Unhealthy
        );

        let s = |status| ContainerState {
            status: Some(status),
            ..Default::default()
        };
        assert_eq!(
            run_state(Some(&s(ContainerStateStatusEnum::CREATED))),
            RunState::Created
        );
        assert_eq!(
            run_state(Some(&s(ContainerStateStatusEnum::RUNNING))),
            RunState::Running
        );
        assert_eq!(
            run_state(Some(&s(ContainerStateStatusEnum::RESTARTING))),
            RunState::Restarting
        );
        assert_eq!(
            run_state(Some(&s(ContainerStateStatusEnum::EXITED))),
            RunState::Exited
        );
        assert_eq!(
            run_state(Some(&s(ContainerStateStatusEnum::REMOVING))),
            RunState::Dead
        );
        let legacy = ContainerState {
            running: Some(true),
            ..Default::default()
        };
        assert_eq!(run_state(Some(&legacy)), RunState::Running);
    }

    /// `docker inspect` of an exited, published container on Docker 20.10 (trimmed).
    const INSPECT_20_10: &str = r#"{
        "Id": "4f1c", "Created": "2024-01-01T00:00:00.000000000Z", "Path": "/bin/busybox",
        "Args": ["sh", "-c", "exit 3"], "Image": "sha256:9f59", "Name": "/web-dev-1",
        "RestartCount": 0,
        "State": {"Status": "exited", "Running": false, "Paused": false, "Restarting": false,
                  "OOMKilled": false, "Dead": false, "Pid": 0, "ExitCode": 3, "Error": "",
                  "StartedAt": "2024-01-01T00:00:01Z", "FinishedAt": "2024-01-01T00:00:02Z",
                  "Health": {"Status": "unhealthy", "FailingStreak": 3, "Log": []}},
        "HostConfig": {"NetworkMode": "skipper", "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                       "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                       "ConsoleSize": [0, 0], "Binds": null},
        "Config": {"Hostname": "4f1c", "Image": "127.0.0.1:5055/team/app:crash",
                   "ExposedPorts": {"8080/tcp": {}}, "Env": ["A=1"], "Volumes": null,
                   "Labels": {"dev.skipper.managed": "true", "dev.skipper.port": "8080"}},
        "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]},
                            "Networks": {"skipper": {"Aliases": ["web-dev-1", "4f1c"], "IPAddress": ""}}}
    }"#;

    #[test]
    fn the_network_address_is_the_ip_on_the_containers_own_network() {
        let inspect = |mode: &str, networks: &str| -> ContainerInspectResponse {
            serde_json::from_str(&format!(
                r#"{{"Id": "4f1c", "HostConfig": {{"NetworkMode": "{mode}"}},
                    "NetworkSettings": {{"Networks": {networks}}}}}"#
            ))
            .unwrap()
        };
        let two =
            r#"{"other": {"IPAddress": "172.19.0.4"}, "skipper-net": {"IPAddress": "172.18.0.5"}}"#;
        assert_eq!(
            network_address(&inspect("skipper-net", two), 8080),
            Ok("172.18.0.5:8080".to_owned()),
            "the network it was created on, not another one it is attached to"
        );
        assert_eq!(
            network_address(
                &inspect("skipper-net", r#"{"skipper-net": {"IPAddress": ""}}"#),
                80
            ),
            Err("no address on network skipper-net".to_owned()),
            "not running: no address yet"
        );
        assert_eq!(
            network_address(
                &inspect("default", r#"{"bridge": {"IPAddress": "172.17.0.2"}}"#),
                80
            ),
            Ok("172.17.0.2:80".to_owned()),
            "the network mode names no network: its only one"
        );
        assert_eq!(
            network_address(&inspect("default", two), 80),
            Err("no address on network default".to_owned()),
            "several and none named: no guess"
        );
        let bare: ContainerInspectResponse = serde_json::from_str(r#"{"Id": "4f1c"}"#).unwrap();
        assert_eq!(
            network_address(&bare, 80),
            Err("no address on network default".to_owned())
        );
        // The 20.10 answer of an exited container: attached, no address.
        let old: ContainerInspectResponse = serde_json::from_str(INSPECT_20_10).unwrap();
        assert_eq!(
            network_address(&old, 8080),
            Err("no address on network skipper".to_owned())
        );
    }

    #[test]
    fn container_info_from_an_old_engine() {
        let resp: ContainerInspectResponse = serde_json::from_str(INSPECT_20_10).unwrap();
        let info = container_info(resp);
        assert_eq!(info.id, "4f1c");
        assert_eq!(info.name, "web-dev-1");
        assert_eq!(info.image, "127.0.0.1:5055/team/app:crash");
        assert_eq!(info.state, RunState::Exited);
        assert_eq!(info.exit_code, Some(3));
        assert_eq!(info.health, HealthStatus::Unhealthy);
        assert_eq!(info.published.as_deref(), Some("127.0.0.1:49153"));
        assert_eq!(
            info.labels.get(labels::MANAGED).map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn image_metadata_reads_expose_and_healthcheck() {
        let json = r#"{
            "Id": "sha256:b549", "RepoTags": ["skipper-test/app:healthcheck"],
            "RepoDigests": ["127.0.0.1:5055/team/app@sha256:2d40"],
            "Config": {"ExposedPorts": {"9000/tcp": {}, "8080/tcp": {}, "53/udp": {}},
                       "Healthcheck": {"Test": ["CMD", "/bin/busybox", "wget", "-q", "-O-", "http://127.0.0.1:8080/health"],
                                       "Interval": 1000000000, "Timeout": 2000000000, "Retries": 3},
                       "Labels": {"dev.skipper.test.variant": "healthcheck"}}
        }"#;
        let meta = image_metadata(serde_json::from_str(json).unwrap());
        assert_eq!(meta.exposed_ports, vec![8080, 9000]);
        let hc = meta.healthcheck.unwrap();
        assert_eq!(hc.test[0], "CMD");
        assert_eq!(hc.interval, Some(Duration::from_secs(1)));
        assert_eq!(hc.timeout, Some(Duration::from_secs(2)));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(meta.labels["dev.skipper.test.variant"], "healthcheck");
        assert_eq!(meta.digests, vec!["127.0.0.1:5055/team/app@sha256:2d40"]);

        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert_eq!(image_healthcheck(Some(&none)), None);
        assert_eq!(image_healthcheck(Some(&HealthConfig::default())), None);
    }

    #[test]
    fn a_local_image_id_means_its_one_tag_pinned_to_its_digest() {
        let d = format!("sha256:{}", "d".repeat(64));
        let json = format!(
            r#"{{"Id": "sha256:b549", "RepoTags": ["skipper-test/app:v2", "127.0.0.1:5055/team/app:v2"],
                "RepoDigests": ["127.0.0.1:5055/team/app@{d}"]}}"#
        );
        let img = local_image(serde_json::from_str(&json).unwrap());
        assert_eq!(img.id, "sha256:b549");
        assert_eq!(img.tags.len(), 2);
        let e = img.reference(None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(e.to_string().contains("several tags"), "{e}");

        let registry = ImageRef::parse("127.0.0.1:5055/team/app").unwrap();
        let r = img.reference(Some(&registry)).unwrap();
        assert_eq!(r.to_string(), format!("127.0.0.1:5055/team/app:v2@{d}"));
        let local = ImageRef::parse("skipper-test/app").unwrap();
        let r = img.reference(Some(&local)).unwrap();
        assert_eq!(
            r.to_string(),
            "docker.io/skipper-test/app:v2",
            "no digest there"
        );
        let other = ImageRef::parse("ghcr.io/x/y").unwrap();
        let e = img.reference(Some(&other)).unwrap_err().to_string();
        assert!(
            e.contains("no tag in ghcr.io/x/y") && e.contains("skipper-test/app:v2"),
            "{e}"
        );

        let untagged = local_image(serde_json::from_str(r#"{"Id": "sha256:c0ff"}"#).unwrap());
        let e = untagged.reference(None).unwrap_err().to_string();
        assert!(e.contains("has no tag"), "{e}");
    }

    #[test]
    fn repo_digests_match_the_repository() {
        let d = "sha256:".to_owned() + &"a".repeat(64);
        let e = "sha256:".to_owned() + &"e".repeat(64);
        let digests = vec![
            format!("127.0.0.1:5056/team/app@{e}"),
            format!("127.0.0.1:5055/team/app@{d}"),
        ];
        let image = ImageRef::parse("127.0.0.1:5055/team/app:v1").unwrap();
        assert_eq!(repo_digest(&digests, &image), Some(d.clone()));
        let hub = ImageRef::parse("nginx:1.25").unwrap();
        assert_eq!(repo_digest(&[format!("nginx@{d}")], &hub), Some(d.clone()));
        let user = ImageRef::parse("user/app").unwrap();
        assert_eq!(repo_digest(&[format!("user/app@{d}")], &user), Some(d));
        assert_eq!(repo_digest(&digests, &user), None);
    }

    #[test]
    fn docker_config_credentials() {
        // No helper in this directory: the credsStore fails and the auths entries serve.
        let helpers = tempfile::tempdir().unwrap();
        let config = DockerConfig::from_json(
            r#"{
            "auths": {
                "127.0.0.1:5056": {"auth": "c2tpcHBlcjpza2lwcGVyLXBhc3M="},
                "http://ghcr.io/v2/": {"username": "u", "password": "p"},
                "https://index.docker.io/v1/": {"identitytoken": "tok"},
                "empty.example": {}
            },
            "credsStore": "desktop"
        }"#,
        )
        .unwrap()
        .with_helper_dir(helpers.path());
        let c = credentials_from_config(&config, "127.0.0.1:5056").unwrap();
        assert_eq!(c.username.as_deref(), Some("skipper"));
        assert_eq!(c.password.as_deref(), Some("skipper-pass"));
        assert_eq!(c.serveraddress.as_deref(), Some("127.0.0.1:5056"));
        let c = credentials_from_config(&config, "ghcr.io").unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let c = credentials_from_config(&config, DOCKER_HUB).unwrap();
        assert_eq!(c.identitytoken.as_deref(), Some("tok"));
        assert_eq!(
            c.serveraddress.as_deref(),
            Some("https://index.docker.io/v1/")
        );
        assert!(credentials_from_config(&config, "empty.example").is_none());
        assert!(credentials_from_config(&config, "127.0.0.1:5055").is_none());
        let empty = DockerConfig::from_json("{}").unwrap();
        assert!(credentials_from_config(&empty, "x.io").is_none());
    }

    /// `watch` lists tags with the credentials a helper gives; `deploy` must pull with them too.
    #[cfg(unix)]
    #[test]
    fn pull_credentials_come_from_a_cred_helper() {
        use std::os::unix::fs::PermissionsExt as _;
        let helpers = tempfile::tempdir().unwrap();
        let helper = helpers.path().join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\nprintf '{\"Username\":\"ci@%s\",\"Secret\":\"helper-pass\"}' \"$server\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers": {"127.0.0.1:5056": "fake"},
                "auths": {"127.0.0.1:5056": {"username": "stale", "password": "old"}}}"#,
        )
        .unwrap();
        let config = DockerConfig::load(&dir.path().join("config.json"))
            .unwrap()
            .with_helper_dir(helpers.path());

        let c = credentials_from_config(&config, "127.0.0.1:5056").unwrap();

        assert_eq!(c.username.as_deref(), Some("ci@127.0.0.1:5056"));
        assert_eq!(c.password.as_deref(), Some("helper-pass"));
        assert_eq!(c.serveraddress.as_deref(), Some("127.0.0.1:5056"));
        assert_eq!(c.identitytoken, None);
    }

    #[test]
    fn create_body_publishes_on_loopback_and_joins_the_network() {
        let spec = ContainerSpec {
            name: "web-dev-1".into(),
            image: ImageRef::parse("127.0.0.1:5055/team/app:v1").unwrap(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::from([(labels::MANAGED.into(), "true".into())]),
            volumes: vec![
                "data:/data".into(),
                "/host:/host:ro".into(),
                "/scratch".into(),
            ],
            network: Some("skipper".into()),
            port: Some(8080),
            publish: true,
        };
        let body = create_body(&spec, Some("t1")).unwrap();
        assert_eq!(body.image.as_deref(), Some("127.0.0.1:5055/team/app:v1"));
        assert_eq!(body.env, Some(vec!["A=1".to_owned()]));
        let l = body.labels.unwrap();
        assert_eq!(l[labels::SCOPE], "t1");
        assert_eq!(l[PORT_LABEL], "8080");
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
        assert_eq!(body.volumes, Some(vec!["/scratch".to_owned()]));
        let host = body.host_config.unwrap();
        assert_eq!(
            host.binds,
            Some(vec!["data:/data".to_owned(), "/host:/host:ro".to_owned()])
        );
        let binding = &host.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
        assert_eq!(host.network_mode.as_deref(), Some("skipper"));
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(
            endpoints["skipper"].aliases,
            Some(vec!["web-dev-1".to_owned()])
        );

        let bare = ContainerSpec {
            publish: false,
            port: None,
            network: None,
            ..spec.clone()
        };
        let body = create_body(&bare, None).unwrap();
        assert!(body.host_config.unwrap().port_bindings.is_none());
        assert!(body.networking_config.is_none());
        let invalid = ContainerSpec { port: None, ..spec };
        assert_eq!(
            create_body(&invalid, None).unwrap_err().kind(),
            ErrorKind::Invalid
        );
    }

    #[test]
    fn references_and_grace() {
        let r = |s| docker_reference(&ImageRef::parse(s).unwrap());
        assert_eq!(r("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            r("127.0.0.1:5055/team/app:v1"),
            "127.0.0.1:5055/team/app:v1"
        );
        let d = "sha256:".to_owned() + &"a".repeat(64);
        assert_eq!(
            r(&format!("127.0.0.1:5055/team/app:v1@{d}")),
            format!("127.0.0.1:5055/team/app@{d}")
        );
        assert_eq!(grace_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(grace_seconds(Duration::from_secs(10)), 10);
        assert_eq!(grace_seconds(Duration::ZERO), 0);
    }

    #[test]
    fn log_tails_keep_the_last_lines_in_order() {
        let bytes = b"one\ntwo\r\nthree\nfour";
        assert_eq!(last_lines(bytes, 2), vec!["three", "four"]);
        assert_eq!(last_lines(bytes, 10), vec!["one", "two", "three", "four"]);
        assert!(last_lines(b"", 3).is_empty());
    }
}
