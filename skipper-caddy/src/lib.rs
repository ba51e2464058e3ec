//! # skipper-caddy
//!
//! Skipper's [`ProxyManager`](skipper_core::ProxyManager) for [Caddy](https://caddyserver.com),
//! driven through its [admin API](https://caddyserver.com/docs/api): one route per domain in one
//! HTTP server of Caddy's JSON config, switched to a new upstream in place.
//!
//! ```no_run
//! use std::sync::Arc;
//! use skipper_core::{ProxyManager, Route, RouteOptions, Upstream};
//! use skipper_caddy::{CaddyClient, CaddyConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let caddy = CaddyClient::new(
//!     CaddyConfig::new("http://127.0.0.1:2019".parse()?).with_server("srv0").with_listen(":80"),
//! )?;
//! caddy.check().await?; // optional: see that the admin API answers
//!
//! let proxy: Arc<dyn ProxyManager> = Arc::new(caddy);
//! proxy
//!     .ensure_route(&Route {
//!         domain: "web.example.com".into(),
//!         upstream: Upstream { scheme: "http".into(), host: "web-3f2a".into(), port: 8080 },
//!         options: RouteOptions::default(),
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## How the pieces map to Caddy's admin API
//! Skipper's routes live in `apps.http.servers.<server>.routes` (`server` is `srv0` unless
//! configured). Each is
//! `{"@id": "skipper-route-<domain>", "match": [{"host": ["<domain>"]}], "handle":
//! [<close while shutting down>, {"@id": "skipper-proxy-<domain>", "handler": "reverse_proxy",
//! "upstreams": [{"dial": "host:port"}]}], "terminal": true}`, where the first handler is a
//! `subroute` that sets `Connection: close` on answers while `{http.shutting_down}` (see
//! below).
//!
//! | Skipper | Caddy |
//! |---|---|
//! | every operation | `GET /config/apps/http/servers/<server>` first; its `ETag` (a header from 2.7 on, computed like 2.6's trailer) goes into the change's `If-Match` |
//! | no server yet (an empty config, a restarted Caddy) | one `PUT` (or `POST /config/` on a `null` config) at the first missing level, with `grace_period` and `shutdown_delay` on a new HTTP app and automatic HTTPS off for a loopback `listen` |
//! | `ensure_route`, new domain | `PUT …/routes/<i>` before the first route that is not Skipper's, or `POST …/routes` |
//! | `ensure_route`, another upstream | one `PATCH /id/skipper-proxy-<domain>/upstreams`: the host never stops resolving |
//! | `ensure_route`, other changes | `PATCH /id/skipper-route-<domain>` |
//! | `ensure_route`, equal | nothing |
//! | `ensure_route`, a route made by hand serves the domain | refused ([`CaddyError::NotAdopted`]) unless the project's `route.adopt`; then `PATCH …/routes/<i>` replaces it |
//! | `remove_route` | `DELETE /id/skipper-route-<domain>`; none is fine, a route made by hand is left alone |
//! | `list_routes` | the routes whose `@id` starts with [`ROUTE_ID_PREFIX`] |
//!
//! ## Concurrency and lost answers
//! Every change carries `If-Match` with the `ETag` of the read it was decided on, so a
//! concurrent edit of the server (by a person or another process) makes Caddy answer 412, which
//! is [`CaddyError::ConcurrentEdit`] (kind `Conflict`); one client makes one change at a time.
//! A change is never sent again blindly: after a transport error, a timeout or a 502–504 (the
//! change may have been applied), or a 412, the server is read back and a route that is
//! already as wanted is adopted. Re-sending a `POST` or an index-addressed change would be
//! wrong, since Caddy re-packs arrays; the `If-Match` also makes a late duplicate fail with 412
//! instead of adding a second route.
//!
//! Each call opens a fresh connection: Caddy closes idle keep-alive connections of the admin
//! endpoint on every reload. The admin API checks the `Host` header: reach it at the address it
//! listens on (or configure `admin.origins`).
//!
//! ## Config changes that lose no request
//! Every change through the admin API is a reload: Caddy starts new servers on new listeners
//! (`SO_REUSEPORT`) and shuts the old ones down with Go's `http.Server.Shutdown`. Measured on
//! Caddy 2.6.2 and 2.11.7 under load (BENCHMARKS.md), that loses requests two ways, whoever
//! changes the config:
//! - a kept-alive connection is closed while its client's next request is on the way (the old
//!   server had answered without `Connection: close`, then closes it as idle);
//! - new connections the kernel had queued on the old listener are reset when it closes.
//!
//! Skipper's part against the first: `shutdown_delay` on the HTTP app it creates, and a handler
//! in each of its routes that answers `Connection: close` while the server is shutting down,
//! so the old server tells each client to reconnect before it closes anything. Caddy 2.6 (Debian
//! bookworm's) applies the delay on every change; 2.7 and later only at exit, so there the
//! first loss remains. The second is the host's: Linux's `net.ipv4.tcp_migrate_req=1` (5.14 and
//! later) hands the queued connections to the new listener. Skipper warns when it creates the
//! server on a local Caddy and the setting is 0. A deploy makes three changes (the new
//! instance's route, the switch, the old instance's route removed after the drain), each
//! answered after `shutdown_delay`.
//!
//! ## Failures
//! [`CaddyError`] keeps Caddy's status and message; `From<CaddyError> for skipper_core::Error`
//! gives each a kind: 404 → `NotFound`, 400 → `Invalid`, 412 and the refusals → `Conflict`,
//! transport errors and 502–504 → `Transient` (`Timeout` for a timeout), Caddy's 500 (a
//! config it refuses) → `Internal`.

#![warn(missing_docs)]

mod api;
mod client;
mod config;
mod error;

pub use api::{PROXY_ID_PREFIX, ROUTE_ID_PREFIX, proxy_id, route_id};
pub use client::CaddyClient;
pub use config::CaddyConfig;
pub use error::{CaddyError, Result};
