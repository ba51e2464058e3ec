//! [`CaddyConfig`]: where Caddy's admin API is and which server gets Skipper's routes.

use std::time::Duration;

use url::Url;

/// How to reach Caddy's admin API, and the HTTP server Skipper's routes go into.
///
/// Build it with [`CaddyConfig::new`] and adjust the public fields (or the `with_*` helpers).
#[derive(Debug, Clone)]
pub struct CaddyConfig {
    /// The admin API's address, e.g. `http://127.0.0.1:2019`. A sub-path is kept.
    pub url: Url,
    /// The name of the server under `apps.http.servers` that holds Skipper's routes (default
    /// `srv0`, the name Caddy gives the first server of a Caddyfile).
    pub server: String,
    /// Where that server listens when Skipper has to create it (default `:80`).
    pub listen: String,
    /// `apps.http.grace_period` when Skipper creates the HTTP app: how long a config reload
    /// lets in-flight requests finish on the old config (Caddy's default, 0, waits forever).
    /// Default 10 s.
    pub grace_period: Duration,
    /// `apps.http.shutdown_delay` when Skipper creates the HTTP app: how long a server a config
    /// change replaced keeps answering (each answer with `Connection: close`, see the crate
    /// docs) before it shuts down. On Caddy 2.6 this is what lets a switch lose no request on a
    /// kept-alive connection; each config change then takes this long to answer. Default 300 ms;
    /// zero leaves it out.
    pub shutdown_delay: Duration,
    /// Time limit for each admin request. Default 30 s (a change reloads the whole config).
    pub timeout: Duration,
}

impl CaddyConfig {
    /// A configuration for the admin API at `url`, server `srv0` on `:80`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            server: "srv0".into(),
            listen: ":80".into(),
            grace_period: Duration::from_secs(10),
            shutdown_delay: Duration::from_millis(300),
            timeout: Duration::from_secs(30),
        }
    }

    /// Set the server name.
    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = server.into();
        self
    }

    /// Set the listen address used when Skipper creates the server.
    pub fn with_listen(mut self, listen: impl Into<String>) -> Self {
        self.listen = listen.into();
        self
    }

    /// Set the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The admin API's base, always ending in `/`.
    pub(crate) fn base(&self) -> Url {
        let mut base = self.url.clone();
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base
    }

    /// Whether every listen address is on a loopback interface: there Caddy's automatic HTTPS
    /// (certificates for the routes' hosts, HTTP→HTTPS redirects, installing a local CA) makes
    /// no sense and is turned off on a server Skipper creates.
    pub(crate) fn listens_on_loopback(&self) -> bool {
        let host = match self.listen.rsplit_once(':') {
            Some((host, _)) => host,
            None => self.listen.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_ends_in_a_slash() {
        let c = CaddyConfig::new("http://127.0.0.1:2019".parse().unwrap());
        assert_eq!(c.base().as_str(), "http://127.0.0.1:2019/");
        let c = CaddyConfig::new("http://h/caddy".parse().unwrap());
        assert_eq!(c.base().as_str(), "http://h/caddy/");
    }

    #[test]
    fn loopback_listeners_are_recognised() {
        let c = |l: &str| {
            CaddyConfig::new("http://127.0.0.1:2019".parse().unwrap())
                .with_listen(l)
                .listens_on_loopback()
        };
        assert!(c("127.0.0.1:8080"));
        assert!(c("localhost:80"));
        assert!(c("[::1]:80"));
        assert!(!c(":80"));
        assert!(!c("0.0.0.0:80"));
        assert!(!c("192.168.1.2:80"));
    }
}
