//! # skipper
//!
//! One dependency for all of Skipper's library crates:
//! [`core`] (model, traits, engine, stores), [`npm`] (Nginx Proxy Manager), [`caddy`] (Caddy's
//! admin API) and [`registry`] (OCI registries and webhooks). Embedders usually depend on `skipper-core` and the
//! backend crates they need directly; this facade also hosts the workspace's integration tests,
//! examples and benchmarks.

#![warn(missing_docs)]

pub use skipper_caddy as caddy;
pub use skipper_core as core;
pub use skipper_npm as npm;
pub use skipper_registry as registry;
