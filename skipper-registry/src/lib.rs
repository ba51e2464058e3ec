//! # skipper-registry
//!
//! Detecting new images: a client for the OCI distribution v2 API implementing
//! [`skipper_core::Registry`], tag selection, and webhook parsers.
//!
//! - [`RegistryClient`] lists tags (following `Link` pagination) and resolves digests with
//!   `HEAD` (so a poll never counts as a pull), answering the registry's auth challenge — Bearer
//!   tokens from its realm (anonymous or with credentials, cached per scope until expiry) or
//!   Basic — and backing off on `429` within a [`RateLimitPolicy`]. Flavours: Docker Hub, GHCR,
//!   Gitea/Forgejo and any distribution registry ([`RegistryKind`]). Plain http only for
//!   loopback registries; TLS is always verified.
//! - [`docker_config_credentials`] finds credentials the way `docker pull` does
//!   (`~/.docker/config.json`, credential helpers). It is `skipper_core::docker_config`'s,
//!   re-exported: the Docker runtime's pull uses the same parser, so what the watcher can list,
//!   a deploy can pull.
//! - [`select`] orders tags newest first (semver-aware) and diffs them against what was seen.
//! - [`webhook`] turns push notifications (generic, distribution, Docker Hub, GitHub, Gitea)
//!   into [`PushEvent`]s, verifying signatures in constant time.
//! - [`Registries`] picks the client for each registry name and is itself a
//!   [`skipper_core::Registry`]: give it to the engine with
//!   [`EngineBuilder::registry`](skipper_core::EngineBuilder::registry).
//! - [`watch`] detects new images: a [`Watcher`], a controller of the engine, polls every
//!   project's repository through the engine's registry (or takes a [`PushEvent`]), remembers
//!   the tags it saw in the store, and deploys new tags to `auto_deploy` stages through the
//!   engine or announces them to the others.
//!
//! ```no_run
//! use std::sync::Arc;
//! use skipper_core::{ImageRef, Registry, TagPattern};
//! use skipper_registry::{RegistryClient, RegistryConfig, docker_config_credentials, select};
//! # async fn run() -> anyhow::Result<()> {
//! let image = ImageRef::parse("ghcr.io/acme/web:latest")?;
//! let credentials = docker_config_credentials(image.registry());
//! let registry: Arc<dyn Registry> =
//!     Arc::new(RegistryClient::new(RegistryConfig::for_image(&image, credentials))?);
//!
//! let tags = registry.list_tags(&image).await?;
//! let pattern = TagPattern::new("v*")?;
//! if let Some(newest) = select::newest_tag(&tags, &pattern) {
//!     let digest = registry.resolve_digest(&image.with_tag(newest)?).await?;
//!     println!("{newest} is {digest}");
//! }
//! # Ok(()) }
//! ```
//!
//! ## Errors
//! Client calls return [`RegistryError`], which keeps the HTTP status and the registry's own
//! error text; through the [`Registry`](skipper_core::Registry) trait it becomes a
//! [`skipper_core::Error`] whose kind says what to do: `Unauthorized`, `NotFound`,
//! `RateLimited`, `Transient` (5xx, connection, timeout).
//!
//! ## Features
//! None: the crate is small and all of it is needed to watch a registry.

#![warn(missing_docs)]

mod auth;
mod client;
mod error;
mod ratelimit;
pub mod select;
pub mod watch;
pub mod webhook;

pub use client::{
    IDENTITY_TOKEN_USER, MANIFEST_ACCEPT, RegistryClient, RegistryConfig, RegistryKind,
};
pub use error::{BoxError, RegistryError, Result};
pub use ratelimit::RateLimitPolicy;
pub use select::{ChangedTag, ObservedTag, TagDiff, diff_tags, newest_tag, select_tags};
pub use skipper_core::docker_config::{
    DOCKER_HUB_AUTH_KEY, DockerConfig, docker_config_credentials, docker_config_path,
};
pub use watch::{Registries, WatchReport, WatchSettings, Watcher};
pub use webhook::{PushEvent, WebhookError, WebhookSource};
