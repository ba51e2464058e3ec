//! # skipper-npm
//!
//! Skipper's [`ProxyManager`](skipper_core::ProxyManager) for
//! [Nginx Proxy Manager](https://nginxproxymanager.com) (NPM): a small client for NPM's REST API
//! that makes a domain forward to a container, switches it to another in place, and removes it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use secrecy::SecretString;
//! use skipper_core::{ProxyManager, Route, RouteOptions, Upstream};
//! use skipper_npm::{NpmClient, NpmConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NpmConfig::new(
//!     "http://npm:81".parse()?,
//!     "skipper@example.com",
//!     SecretString::from(std::env::var("NPM_PASSWORD")?),
//! );
//! let npm = NpmClient::new(config)?;
//! println!("NPM {}", npm.check().await?); // optional: learn the version and log in now
//!
//! let proxy: Arc<dyn ProxyManager> = Arc::new(npm);
//! proxy
//!     .ensure_route(&Route {
//!         domain: "web.example.com".into(),
//!         upstream: Upstream { scheme: "http".into(), host: "web-3f2a".into(), port: 8080 },
//!         options: RouteOptions { websocket: true, block_exploits: true, ..Default::default() },
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## How the pieces map to NPM's API
//! | Skipper | NPM |
//! |---|---|
//! | version ([`NpmClient::version`]) | `GET /api/` once; decides which fields may be sent |
//! | login | `POST /api/tokens {identity, secret}`; accounts with 2FA are refused with a clear error |
//! | token refresh | `GET /api/tokens` with the Bearer, once less than [`NpmConfig::refresh_margin`] is left |
//! | stale token | one re-login on 400 "Token has expired", 403, or 404 `Not Found - /<path>` (2.13–2.15) |
//! | find by domain | `GET /api/nginx/proxy-hosts?query=<domain>` + exact match on `domain_names` |
//! | `ensure_route`, new domain | `POST /api/nginx/proxy-hosts`, then `GET /api/nginx/proxy-hosts/{id}` for `meta.nginx_online` |
//! | `ensure_route`, changed | one `PUT /api/nginx/proxy-hosts/{id}` with only the changed fields: the host never disappears |
//! | `ensure_route`, equal | nothing |
//! | `remove_route` | `DELETE /api/nginx/proxy-hosts/{id}` of the managed host; missing is fine |
//! | `list_routes` | `GET /api/nginx/proxy-hosts`, hosts whose `meta.skipper` is `true` |
//! | [`NpmClient::enable`] / [`disable`](NpmClient::disable) | `POST /api/nginx/proxy-hosts/{id}/enable` / `/disable` |
//!
//! [`RouteOptions`](skipper_core::RouteOptions) become `allow_websocket_upgrade`,
//! `block_exploits`, `http2_support`, `certificate_id` (an existing certificate's id, never
//! `"new"`), `ssl_forced`, `access_list_id` and `advanced_config`. Without a certificate NPM turns
//! `ssl_forced` and `http2_support` off, and so does Skipper, so an ensure converges.
//!
//! Hosts Skipper manages carry `meta: {"skipper": true}`, merged into whatever `meta` a host
//! already has. An ensure on a domain served by a host Skipper did not create takes that host
//! over (one PUT: new target plus the marker); a remove never deletes a host without the marker.
//!
//! ## Failures
//! [`NpmError`] keeps NPM's status and message; `From<NpmError> for skipper_core::Error` gives
//! each a kind: "already in use" → `Conflict` naming the domain, 404 → `NotFound`, bad
//! credentials and 2FA → `Unauthorized`, 5xx, timeouts and connection errors → `Transient`.
//! Idempotent calls (GET, PUT, DELETE, login, enable/disable) get [`NpmConfig::max_attempts`]
//! tries with backoff. A create is sent once: after a timeout or 5xx the client lists again and
//! adopts a host with the same domain instead of creating a duplicate. When nginx refuses the
//! configuration NPM generated (`meta.nginx_online: false`), the change is an
//! [`NpmError::NginxOffline`] carrying `meta.nginx_err`.
//!
//! ## Features
//! | feature | what it adds |
//! |---|---|
//! | `test-util` | `fake::FakeNpm`, a stateful wiremock-backed fake of NPM's API for tests |

#![warn(missing_docs)]

mod api;
mod client;
mod config;
mod error;
#[cfg(feature = "test-util")]
pub mod fake;

pub use api::{MANAGED_MARKER, NpmVersion, ProxyHost};
pub use client::NpmClient;
pub use config::NpmConfig;
pub use error::{NpmError, Result};
