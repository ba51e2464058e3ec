//! # skipper-core
//!
//! The deploy engine of Skipper, written only against five backend traits:
//! [`Runtime`], [`Registry`], [`ProxyManager`], [`Store`] and [`Notifier`].
//!
//! One deploy pulls an image, starts it next to the running version, health-gates it, routes the
//! stage's domain to it, retires the oldest versions past `max_instances`, records and notifies.
//! Any failure rolls back: the previous version keeps serving and nothing is orphaned.
//!
//! ```no_run
//! use std::sync::Arc;
//! use skipper_core::{Engine, ImageRef, Project, Stage, DeployRequest};
//! # async fn run(runtime: Arc<dyn skipper_core::Runtime>, store: Arc<dyn skipper_core::Store>)
//! # -> skipper_core::Result<()> {
//! let engine = Engine::builder(runtime, store).build();
//! let project = Project::new("web", "localhost:5000/team/web")?
//!     .with_stage(Stage::new("dev"));
//! engine.put_project(&project).await?;
//! let image = ImageRef::parse("localhost:5000/team/web:v1")?;
//! let deployment = engine.deploy(DeployRequest::new("web", "dev", image)).await?;
//! println!("{:?}", deployment.status);
//! # Ok(()) }
//! ```
//!
//! See `examples/hello.rs` in the repository for a complete program on the Docker runtime.
//!
//! ## Features
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` | [`store::SqliteStore`], the embedded default store, credentials encrypted with AES-256-GCM |
//! | `docker` | `docker::DockerRuntime`, the [`Runtime`] on bollard |
//! | `webhook-notifier` | `notify::WebhookNotifier`, POSTs events as JSON |
//! | `test-util` | [`testing`] (in-memory fakes) and a mockall mock of `Registry` (`MockRegistry`) |

#![warn(missing_docs)]

pub mod backend;
pub mod config;
#[cfg(feature = "docker")]
pub mod docker;
pub mod docker_config;
pub mod engine;
pub mod error;
pub mod model;
#[cfg(feature = "webhook-notifier")]
pub mod notify;
pub mod pattern;
pub mod reference;
pub mod store;
pub mod subdomain;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use backend::{
    ContainerInfo, ContainerSpec, Credentials, DeploymentFilter, HealthStatus, ImageHealthcheck,
    ImageMetadata, InstanceFilter, NodeRuntimes, Notifier, ProbeResult, ProgressSender,
    ProxyManager, PullProgress, PulledImage, Registry, Route, RunState, Runtime, Store,
};
pub use engine::{
    Activity, DeployRequest, Engine, EngineBuilder, EngineSettings, Lease, PullPolicy,
    QuickDefaults, ReconcileReport, StepTimeouts, UpstreamTarget,
};
pub use error::{Error, ErrorKind, Result};
pub use model::{
    DeployError, DeployStatus, Deployment, Event, EventKind, HealthCheck, Instance, InstanceState,
    Project, RouteOptions, RunSettings, SeenTag, Stage, Step, StepRecord, StepStatus, Trigger,
    Upstream,
};
pub use pattern::TagPattern;
pub use reference::ImageRef;
pub use subdomain::DomainScheme;
