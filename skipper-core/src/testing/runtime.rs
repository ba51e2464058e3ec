//! An in-memory [`Runtime`] with fault injection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    ContainerInfo, ContainerSpec, Credentials, HealthStatus, ImageHealthcheck, ImageMetadata,
    ProbeResult, ProgressSender, PullProgress, PulledImage, RunState, Runtime,
};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::ImageRef;
use crate::testing::Fault;

/// How a fake image behaves when run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Serves 200 on every path.
    #[default]
    Healthy,
    /// Runs, but every probe gets 503 (and a Docker HEALTHCHECK reports unhealthy).
    Unhealthy,
    /// Exits with code 3 right after starting.
    Crash,
}

/// A fake image.
#[derive(Debug, Clone)]
pub struct FakeImage {
    /// Behaviour of its containers.
    pub behavior: Behavior,
    /// Metadata returned by `inspect_image`.
    pub metadata: ImageMetadata,
    /// Credentials required to pull it, if any.
    pub requires: Option<(String, String)>,
}

/// Runtime operations, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `ensure_network`.
    Network,
    /// `pull`.
    Pull,
    /// `create_container`.
    Create,
    /// `start_container`.
    Start,
    /// `stop_container`.
    Stop,
    /// `remove_container`.
    Remove,
    /// `probe_http`.
    Probe,
    /// `inspect_container`.
    Inspect,
    /// `list_containers`.
    List,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    info: ContainerInfo,
    behavior: Behavior,
    port: Option<u16>,
    publish: bool,
    logs: Vec<String>,
}

#[derive(Default)]
struct State {
    images: HashMap<String, FakeImage>,
    pulled: HashMap<String, String>,
    containers: BTreeMap<String, FakeContainer>,
    networks: Vec<String>,
    faults: HashMap<Op, Vec<Fault>>,
    next_port: u16,
    next_id: u64,
    calls: Vec<Op>,
    /// When each HTTP probe came (`tokio` time: virtual under a paused clock).
    probes: Vec<tokio::time::Instant>,
}

/// An in-memory Docker. Containers "run" instantly; images are registered with [`add_image`].
///
/// [`add_image`]: FakeRuntime::add_image
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
    crashed: std::sync::atomic::AtomicBool,
}

fn key(image: &ImageRef) -> String {
    format!("{}:{}", image.name(), image.tag().unwrap_or("latest"))
}

fn digest_of(name: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(name.as_bytes()))
    )
}

impl FakeRuntime {
    /// An empty runtime.
    pub fn new() -> Self {
        Self::default()
    }

    /// When each HTTP probe came, faulted ones included (`tokio` time).
    pub fn probe_times(&self) -> Vec<tokio::time::Instant> {
        self.lock().probes.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register an image that can be pulled, serving on port 8080 (EXPOSEd).
    pub fn add_image(&self, image: &str, behavior: Behavior) {
        let image = ImageRef::parse(image).unwrap_or_else(|e| panic!("bad test image: {e}"));
        let metadata = ImageMetadata {
            id: digest_of(&format!("id-{}", key(&image))),
            digests: vec![format!("{}@{}", image.name(), digest_of(&key(&image)))],
            exposed_ports: vec![8080],
            healthcheck: None,
            labels: BTreeMap::new(),
        };
        self.add_image_with(&image, behavior, metadata, None);
    }

    /// Register an image with explicit metadata and optional required credentials.
    pub fn add_image_with(
        &self,
        image: &ImageRef,
        behavior: Behavior,
        metadata: ImageMetadata,
        requires: Option<(String, String)>,
    ) {
        self.lock().images.insert(
            key(image),
            FakeImage {
                behavior,
                metadata,
                requires,
            },
        );
    }

    /// Make the next call of `op` fail with `fault` (faults queue up per op).
    pub fn inject(&self, op: Op, fault: Fault) {
        self.lock().faults.entry(op).or_default().push(fault);
    }

    /// Drop every injected fault not yet used.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Remove a container behind the engine's back (as `docker rm -f` would).
    pub fn remove_behind_back(&self, id: &str) {
        self.lock().containers.remove(id);
    }

    /// Every container, running or not.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.lock()
            .containers
            .values()
            .map(|c| c.info.clone())
            .collect()
    }

    /// Ids of running containers.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.info.state == RunState::Running)
            .map(|c| c.info.id.clone())
            .collect()
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.iter().filter(|o| **o == op).count()
    }

    /// Networks created.
    pub fn networks(&self) -> Vec<String> {
        self.lock().networks.clone()
    }

    /// Whether a [`Fault::Crash`] was reached.
    pub fn crashed(&self) -> bool {
        self.crashed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Recreate a container by hand with the same labels (as `docker rm` + `docker run` with the
    /// container's labels would): the new one has a new id, a new published port, and runs.
    pub fn recreate_behind_back(&self, id: &str) -> Option<String> {
        let mut s = self.lock();
        let mut c = s.containers.remove(id)?;
        s.next_id += 1;
        s.next_port += 1;
        let new_id = format!("c{:011x}", s.next_id);
        c.info.id = new_id.clone();
        c.info.state = RunState::Running;
        if c.info.published.is_some() {
            c.info.published = Some(format!("127.0.0.1:{}", 40000 + s.next_port));
        }
        s.containers.insert(new_id.clone(), c);
        Some(new_id)
    }

    /// Remove a label from a container (as a container made by an older Skipper lacks it).
    pub fn strip_label(&self, id: &str, key: &str) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.info.labels.remove(key);
        }
    }

    /// Stop a container behind the engine's back (it crashed, or `docker stop`).
    pub fn exit_behind_back(&self, id: &str, code: i64) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.info.state = RunState::Exited;
            c.info.exit_code = Some(code);
            c.info.published = None;
        }
    }

    /// Run the part of an injected fault that comes before `op`; the rest is returned, for
    /// [`leave`](Self::leave) after the call took effect.
    async fn enter(&self, op: Op) -> Result<Option<Fault>> {
        let fault = {
            let mut s = self.lock();
            s.calls.push(op);
            match s.faults.get_mut(&op) {
                Some(q) if !q.is_empty() => Some(q.remove(0)),
                _ => None,
            }
        };
        match fault {
            Some(fault) => {
                fault
                    .before("fake-runtime", &format!("{op:?}"), &self.crashed)
                    .await?;
                Ok(Some(fault))
            }
            None => Ok(None),
        }
    }

    fn leave<T>(op: Op, fault: Option<Fault>, value: T) -> Result<T> {
        if let Some(f) = fault {
            f.after("fake-runtime", &format!("{op:?}"))?;
        }
        Ok(value)
    }
}

/// The key of a container given by id or by name (Docker takes either).
fn resolve(s: &State, id: &str) -> Option<String> {
    if s.containers.contains_key(id) {
        return Some(id.to_owned());
    }
    s.containers
        .values()
        .find(|c| c.info.name == id)
        .map(|c| c.info.id.clone())
}

fn missing(id: &str) -> Error {
    Error::not_found(format!("container {id}"))
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ensure_network(&self, network: &str) -> Result<()> {
        let f = self.enter(Op::Network).await?;
        let mut s = self.lock();
        if !s.networks.iter().any(|n| n == network) {
            s.networks.push(network.to_owned());
        }
        Self::leave(Op::Network, f, ())
    }

    async fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<Credentials>,
        progress: Option<ProgressSender>,
    ) -> Result<PulledImage> {
        let f = self.enter(Op::Pull).await?;
        let k = key(image);
        let mut s = self.lock();
        let Some(img) = s.images.get(&k).cloned() else {
            return Err(Error::backend(
                "fake-runtime",
                ErrorKind::NotFound,
                format!("manifest for {image} not found"),
            ));
        };
        if let Some((user, pass)) = &img.requires {
            use secrecy::ExposeSecret;
            let ok = credentials
                .as_ref()
                .is_some_and(|c| &c.username == user && c.secret.expose_secret() == pass);
            if !ok {
                return Err(Error::backend(
                    "fake-runtime",
                    ErrorKind::Unauthorized,
                    format!("pull access denied for {image}"),
                ));
            }
        }
        if let Some(tx) = progress {
            let _ = tx.send(PullProgress {
                layer: Some("layer0".into()),
                status: "Pull complete".into(),
                current: Some(1),
                total: Some(1),
            });
        }
        let digest = img
            .metadata
            .digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map(|(_, d)| d.to_owned());
        s.pulled.insert(k, img.metadata.id.clone());
        Self::leave(
            Op::Pull,
            f,
            PulledImage {
                id: img.metadata.id,
                digest,
            },
        )
    }

    async fn has_image(&self, image: &ImageRef) -> Result<bool> {
        Ok(self.lock().pulled.contains_key(&key(image)))
    }

    async fn inspect_image(&self, image: &ImageRef) -> Result<ImageMetadata> {
        let s = self.lock();
        let k = key(image);
        if !s.pulled.contains_key(&k) {
            return Err(Error::not_found(format!("image {image}")));
        }
        s.images
            .get(&k)
            .map(|i| i.metadata.clone())
            .ok_or_else(|| Error::not_found(format!("image {image}")))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let f = self.enter(Op::Create).await?;
        let mut s = self.lock();
        let k = key(&spec.image);
        let Some(img) = s.images.get(&k).cloned() else {
            return Err(Error::not_found(format!("image {}", spec.image)));
        };
        if s.containers.values().any(|c| c.info.name == spec.name) {
            return Err(Error::Conflict {
                what: format!("container name {} is in use", spec.name),
            });
        }
        s.next_id += 1;
        let id = format!("c{:011x}", s.next_id);
        let published = if spec.publish && spec.port.is_some() {
            s.next_port += 1;
            Some(format!("127.0.0.1:{}", 40000 + s.next_port))
        } else {
            None
        };
        let health = if img.metadata.healthcheck.is_some() {
            HealthStatus::Starting
        } else {
            HealthStatus::None
        };
        s.containers.insert(
            id.clone(),
            FakeContainer {
                info: ContainerInfo {
                    id: id.clone(),
                    name: spec.name.clone(),
                    image: spec.image.to_string(),
                    labels: spec.labels.clone(),
                    state: RunState::Created,
                    exit_code: None,
                    health,
                    published,
                },
                behavior: img.behavior,
                port: spec.port,
                publish: spec.publish,
                logs: vec![format!("starting {}", spec.image)],
            },
        );
        Self::leave(Op::Create, f, id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let f = self.enter(Op::Start).await?;
        let mut s = self.lock();
        let k = resolve(&s, id).ok_or_else(|| missing(id))?;
        if s.containers
            .get(&k)
            .is_none_or(|c| c.info.published.is_none())
        {
            // A start publishes the port anew (Docker picks another ephemeral port).
            s.next_port += 1;
        }
        let port = 40000 + s.next_port;
        let c = s.containers.get_mut(&k).ok_or_else(|| missing(id))?;
        if c.info.published.is_none() && c.port.is_some() && c.publish {
            c.info.published = Some(format!("127.0.0.1:{port}"));
        }
        match c.behavior {
            Behavior::Crash => {
                c.info.state = RunState::Exited;
                c.info.exit_code = Some(3);
                c.logs.push("fatal: cannot start".into());
            }
            Behavior::Healthy => {
                c.info.state = RunState::Running;
                if c.info.health != HealthStatus::None {
                    c.info.health = HealthStatus::Healthy;
                }
                c.logs.push("listening on :8080".into());
            }
            Behavior::Unhealthy => {
                c.info.state = RunState::Running;
                if c.info.health != HealthStatus::None {
                    c.info.health = HealthStatus::Unhealthy;
                }
                c.logs.push("database unreachable".into());
            }
        }
        Self::leave(Op::Start, f, ())
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<()> {
        let f = self.enter(Op::Stop).await?;
        let mut s = self.lock();
        let k = resolve(&s, id).ok_or_else(|| missing(id))?;
        let c = s.containers.get_mut(&k).ok_or_else(|| missing(id))?;
        if c.info.state == RunState::Running {
            c.info.state = RunState::Exited;
            c.info.exit_code = Some(0);
            c.info.published = None;
        }
        Self::leave(Op::Stop, f, ())
    }

    async fn restart_container(&self, id: &str, grace: Duration) -> Result<()> {
        self.stop_container(id, grace).await?;
        self.start_container(id).await
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let f = self.enter(Op::Remove).await?;
        let mut s = self.lock();
        if let Some(k) = resolve(&s, id) {
            s.containers.remove(&k);
        }
        Self::leave(Op::Remove, f, ())
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo> {
        let f = self.enter(Op::Inspect).await?;
        let s = self.lock();
        let info = resolve(&s, id)
            .and_then(|k| s.containers.get(&k))
            .map(|c| c.info.clone())
            .ok_or_else(|| missing(id))?;
        Self::leave(Op::Inspect, f, info)
    }

    async fn list_containers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>> {
        let f = self.enter(Op::List).await?;
        let list = self
            .lock()
            .containers
            .values()
            .filter(|c| labels.iter().all(|(k, v)| c.info.labels.get(k) == Some(v)))
            .map(|c| c.info.clone())
            .collect();
        Self::leave(Op::List, f, list)
    }

    async fn probe_http(
        &self,
        container: &ContainerInfo,
        port: u16,
        path: &str,
        _timeout: Duration,
    ) -> Result<ProbeResult> {
        self.lock().probes.push(tokio::time::Instant::now());
        let f = self.enter(Op::Probe).await?;
        let s = self.lock();
        let c = s
            .containers
            .get(&container.id)
            .ok_or_else(|| missing(&container.id))?;
        let url = format!(
            "http://{}{path}",
            c.info
                .published
                .clone()
                .unwrap_or_else(|| format!("{}:{port}", c.info.name))
        );
        let status = match (c.info.state, c.behavior, c.port) {
            (RunState::Running, Behavior::Healthy, Some(p)) if p == port => Some(200),
            (RunState::Running, Behavior::Unhealthy, Some(p)) if p == port => Some(503),
            _ => None,
        };
        let detail = match status {
            Some(code) => format!("GET {url} → {code}"),
            None => format!("GET {url} → connection refused"),
        };
        Self::leave(Op::Probe, f, ProbeResult { status, detail })
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<Vec<String>> {
        let s = self.lock();
        let c = resolve(&s, id)
            .and_then(|k| s.containers.get(&k))
            .ok_or_else(|| missing(id))?;
        let skip = c.logs.len().saturating_sub(lines);
        Ok(c.logs[skip..].to_vec())
    }
}

/// An image healthcheck for fake images that use Docker's HEALTHCHECK.
pub fn docker_healthcheck() -> ImageHealthcheck {
    ImageHealthcheck {
        test: vec!["CMD-SHELL".into(), "true".into()],
        interval: Some(Duration::from_secs(1)),
        timeout: None,
        retries: None,
    }
}
