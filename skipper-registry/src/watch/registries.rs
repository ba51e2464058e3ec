//! The per-registry lookup: which client serves `docker.io`, `ghcr.io`, `127.0.0.1:5000`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use skipper_core::config::{RegistrySettings, RegistryType};
use skipper_core::docker_config::docker_config_credentials;
use skipper_core::{Credentials, ImageRef, Registry};

use crate::client::{RegistryClient, RegistryConfig, RegistryKind};
use crate::error::RegistryError;

/// The client config for one `registries:` entry of the config file, and the registry name
/// (`host[:port]`, as image references carry it) it serves.
///
/// Docker Hub and GHCR entries use their service's endpoints (`docker.io`, `ghcr.io`) whatever
/// `url` says; Gitea and distribution entries use `url` as the API endpoint. Credentials are
/// taken only when both `username` and `token` are set; otherwise [`Registries`] looks in the
/// Docker client config, as `docker pull` would.
pub fn registry_config(settings: &RegistrySettings) -> (String, RegistryConfig) {
    let kind = match settings.kind {
        RegistryType::Dockerhub => RegistryKind::DockerHub,
        RegistryType::Ghcr => RegistryKind::Ghcr,
        RegistryType::Gitea => RegistryKind::Gitea,
        RegistryType::Distribution => RegistryKind::Distribution,
    };
    let credentials = match (&settings.username, &settings.token) {
        (Some(username), Some(secret)) => Some(Credentials {
            username: username.clone(),
            secret: secret.clone(),
        }),
        _ => None,
    };
    let mut config = RegistryConfig {
        credentials,
        ..RegistryConfig::new(kind)
    };
    match kind.default_registry() {
        Some(name) => (name.to_owned(), config),
        None => {
            let host = settings.host();
            config.url = Some(settings.url.clone());
            config.registry = Some(host.clone());
            (host, config)
        }
    }
}

/// Registry clients by registry name (`docker.io`, `ghcr.io`, `127.0.0.1:5000`: the
/// `host[:port]` image references carry).
///
/// Clients come from, in order: those [inserted](Self::insert); the config file's `registries:`
/// entries ([`from_settings`](Self::from_settings)); and, for any other registry, a default
/// client made on first use — anonymous, or with the credentials `docker pull` would use
/// ([`docker_config_credentials`], the parser the Docker runtime's pull uses too). Entries
/// without credentials also look there.
///
/// `Registries` is itself a [`Registry`]: each call goes to the client for the image's registry
/// ([`ImageRef::registry`]). That is how an engine holds it ([`EngineBuilder::registry`]) and how
/// the [`Watcher`](super::Watcher) uses it; every client is used through the trait only, so a
/// registry's `Retry-After` reaches the watcher as [`skipper_core::Error::retry_after`].
///
/// [`EngineBuilder::registry`]: skipper_core::EngineBuilder::registry
pub struct Registries {
    clients: Mutex<HashMap<String, Arc<dyn Registry>>>,
    configs: HashMap<String, RegistryConfig>,
    docker_config: bool,
    defaults: bool,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients: BTreeSet<String> = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Registries")
            .field("clients", &clients)
            .field("configured", &self.configs.keys().collect::<BTreeSet<_>>())
            .field("docker_config", &self.docker_config)
            .field("defaults", &self.defaults)
            .finish()
    }
}

impl Default for Registries {
    fn default() -> Self {
        Self::new()
    }
}

impl Registries {
    /// No configured registry: every registry gets a default client.
    pub fn new() -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            configs: HashMap::new(),
            docker_config: true,
            defaults: true,
        }
    }

    /// Clients for the config file's `registries:` entries (see [`registry_config`]). Fails on
    /// an entry no client can be built for (plain http to a non-loopback host, say).
    pub fn from_settings<'a>(
        settings: impl IntoIterator<Item = &'a RegistrySettings>,
    ) -> crate::Result<Self> {
        let mut registries = Self::new();
        for s in settings {
            let (name, config) = registry_config(s);
            // Validate now, so a bad entry fails at start-up rather than at the first poll.
            RegistryClient::new(config.clone()).map_err(|e| RegistryError::Config {
                reason: format!("registries.{}: {e}", s.name),
            })?;
            registries.configs.insert(name, config);
        }
        Ok(registries)
    }

    /// Use `client` for `registry` (a `host[:port]`).
    pub fn insert(&mut self, registry: impl Into<String>, client: Arc<dyn Registry>) {
        self.clients
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(registry.into(), client);
    }

    /// Use `client` for the registry it serves ([`RegistryClient::registry`]): a shorthand for
    /// [`insert`](Self::insert).
    pub fn insert_client(&mut self, client: RegistryClient) {
        let registry = client.registry().to_owned();
        self.insert(registry, Arc::new(client));
    }

    /// Whether to look for credentials in the Docker client config when an entry or a default
    /// client has none (default: yes).
    pub fn with_docker_config(mut self, yes: bool) -> Self {
        self.docker_config = yes;
        self
    }

    /// Whether registries neither inserted nor configured get a default client (default: yes).
    /// Without, they fail with [`RegistryError::Config`].
    pub fn with_defaults(mut self, yes: bool) -> Self {
        self.defaults = yes;
        self
    }

    /// The client for `registry` (a `host[:port]`), made on first use.
    pub async fn get(&self, registry: &str) -> crate::Result<Arc<dyn Registry>> {
        if let Some(c) = self.lock().get(registry) {
            return Ok(c.clone());
        }
        let mut config = match self.configs.get(registry) {
            Some(c) => c.clone(),
            None if self.defaults => RegistryConfig {
                registry: Some(registry.to_owned()),
                ..RegistryConfig::new(RegistryKind::detect(registry))
            },
            None => {
                return Err(RegistryError::Config {
                    reason: format!("no client is configured for registry {registry}"),
                });
            }
        };
        if config.credentials.is_none() && self.docker_config {
            let host = registry.to_owned();
            config.credentials =
                tokio::task::spawn_blocking(move || docker_config_credentials(&host))
                    .await
                    .unwrap_or_default();
        }
        let client: Arc<dyn Registry> = Arc::new(RegistryClient::new(config)?);
        // Another caller may have made one meanwhile; either will do, keep the first.
        Ok(self
            .lock()
            .entry(registry.to_owned())
            .or_insert(client)
            .clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Registry>>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Each call goes to the client for the image's registry ([`Registries::get`]); a registry with
/// no client (and no default) is an `Invalid` error.
#[async_trait]
impl Registry for Registries {
    async fn list_tags(&self, repository: &ImageRef) -> skipper_core::Result<Vec<String>> {
        self.get(repository.registry())
            .await?
            .list_tags(repository)
            .await
    }

    async fn resolve_digest(&self, image: &ImageRef) -> skipper_core::Result<String> {
        self.get(image.registry())
            .await?
            .resolve_digest(image)
            .await
    }
}

#[cfg(test)]
mod tests {
    use skipper_core::ErrorKind;
    use skipper_core::backend::MockRegistry;
    use url::Url;

    use super::*;

    #[test]
    fn registry_entries_become_client_configs() {
        let settings =
            |kind, url: &str, user: Option<&str>, token: Option<&str>| RegistrySettings {
                name: "r".into(),
                url: url.parse::<Url>().unwrap(),
                kind,
                username: user.map(str::to_owned),
                token: token.map(|t| t.to_owned().into()),
            };
        let (name, c) = registry_config(&settings(
            RegistryType::Gitea,
            "https://git.example.com:3000",
            Some("ci"),
            Some("t0ken"),
        ));
        assert_eq!(name, "git.example.com:3000");
        assert_eq!(c.kind, RegistryKind::Gitea);
        assert_eq!(c.url.unwrap().as_str(), "https://git.example.com:3000/");
        assert_eq!(c.credentials.unwrap().username, "ci");
        let (name, c) = registry_config(&settings(
            RegistryType::Dockerhub,
            "https://hub.docker.com",
            Some("me"),
            None,
        ));
        assert_eq!(name, "docker.io");
        assert!(c.url.is_none() && c.credentials.is_none());
        let (name, _) =
            registry_config(&settings(RegistryType::Ghcr, "https://ghcr.io", None, None));
        assert_eq!(name, "ghcr.io");

        let bad = settings(
            RegistryType::Distribution,
            "http://registry.example.com",
            None,
            None,
        );
        let e = Registries::from_settings([&bad]).unwrap_err().to_string();
        assert!(e.contains("registries.r"), "{e}");
    }

    #[tokio::test]
    async fn calls_go_to_the_client_of_the_images_registry() {
        let mut a = MockRegistry::new();
        a.expect_list_tags()
            .withf(|r| r.name() == "a.test/team/x")
            .returning(|_| Ok(vec!["v1".into()]));
        a.expect_resolve_digest().returning(|_| {
            Err(skipper_core::Error::rate_limited(
                "registry",
                "429",
                Some(std::time::Duration::from_secs(7)),
            ))
        });
        let mut registries = Registries::new()
            .with_defaults(false)
            .with_docker_config(false);
        registries.insert("a.test", Arc::new(a));
        let registries: Arc<dyn Registry> = Arc::new(registries);

        let x = ImageRef::parse("a.test/team/x").unwrap();
        assert_eq!(registries.list_tags(&x).await.unwrap(), vec!["v1"]);
        // The client's error comes through whole, Retry-After included.
        let e = registries
            .resolve_digest(&x.with_tag("v1").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
        // No client and no default for b.test.
        let y = ImageRef::parse("b.test/team/y").unwrap();
        let e = registries.list_tags(&y).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("b.test"), "{e}");
    }
}
