//! Credentials from Docker's client config (`~/.docker/config.json`), found as `docker pull`
//! finds them.
//!
//! The one parser of that file: the Docker runtime's pull (feature `docker`) and the registry
//! clients of `skipper-registry` (which list tags and resolve digests) both use it, so a tag the
//! watcher can see is a tag a deploy can pull. It needs no feature: `auths` entries (`auth`,
//! `username`/`password`, `identitytoken`), `credHelpers` and `credsStore` (running
//! `docker-credential-<helper> get`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::SecretString;

use crate::backend::Credentials;
use crate::error::{Error, ErrorKind, Result};

/// The `auths` key (and credential-helper server URL) Docker uses for Docker Hub.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// The user name credential helpers and `docker login` use for an OAuth2 identity (refresh)
/// token: [`Credentials`] with this user name carry an identity token, not a password (a
/// registry client exchanges it at the token endpoint; a Docker pull sends it as
/// `identitytoken`).
pub const IDENTITY_TOKEN_USER: &str = "<token>";

const BACKEND: &str = "docker-config";

fn invalid(message: String) -> Error {
    Error::backend(BACKEND, ErrorKind::Invalid, message)
}

const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Credentials for `registry_host` (`ghcr.io`, `localhost:5000`, `docker.io`) from
/// `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
///
/// Looks where `docker pull` looks: a `credHelpers` entry for the host, then the `credsStore`,
/// running `docker-credential-<name> get` with the server on stdin; then the `auths` entry
/// (`auth` as base64 `user:password`, or `username`/`password`, or an `identitytoken`). Docker
/// Hub's entry is keyed `https://index.docker.io/v1/`. Keys are matched by host name, so
/// `https://registry.example.com/v2/` serves `registry.example.com`.
///
/// `None` when there is no config, no entry, or the helper fails (which is logged, without
/// secrets). Blocking: it may read a file and run a helper process for up to 10 seconds, so
/// call it from `tokio::task::spawn_blocking` inside async code.
pub fn docker_config_credentials(registry_host: &str) -> Option<Credentials> {
    DockerConfig::load_if_present(&docker_config_path()?)?.credentials_for(registry_host)
}

/// Where the Docker client config is: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
    Some(PathBuf::from(home).join(".docker").join("config.json"))
}

/// A parsed Docker client config: the parts that say where credentials are.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(skip)]
    helper_dir: Option<PathBuf>,
}

#[derive(Clone, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<SecretString>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    identitytoken: Option<SecretString>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret")]
    secret: SecretString,
}

impl DockerConfig {
    /// Read and parse a config file. An unreadable or malformed file is an `Invalid` error.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "{}: not a Docker client config: {e}",
                path.display()
            ))
        })
    }

    /// [`load`](Self::load), or `None` when there is no file at `path`, or when it cannot be
    /// used (which is logged): credentials are then looked for nowhere else, as `docker pull`
    /// does.
    pub fn load_if_present(path: &Path) -> Option<Self> {
        if !path.exists() {
            return None;
        }
        match Self::load(path) {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the Docker client config");
                None
            }
        }
    }

    /// Parse a config's JSON text.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| invalid(format!("not a Docker client config: {e}")))
    }

    /// Look for `docker-credential-*` helpers in `dir` instead of on `PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    /// The credentials for `registry_host` (see [`docker_config_credentials`] for the order).
    /// Blocking when a helper runs.
    pub fn credentials_for(&self, registry_host: &str) -> Option<Credentials> {
        let host = normalize_host(registry_host);
        let hub = is_docker_hub(&host);
        let server = if hub {
            DOCKER_HUB_AUTH_KEY.to_owned()
        } else {
            host.clone()
        };

        let helper = self
            .cred_helpers
            .iter()
            .find(|(key, _)| {
                let k = normalize_host(key);
                k == host || (hub && is_docker_hub(&k))
            })
            .map(|(_, helper)| helper)
            .or(self.creds_store.as_ref())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            match self.run_helper(helper, &server) {
                Ok(Some(creds)) => return Some(creds),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(helper = %helper, server = %server, %reason, "docker credential helper failed");
                }
            }
        }

        let entry = self.auths.get(&server).or_else(|| {
            self.auths.iter().find_map(|(key, entry)| {
                let k = normalize_host(key);
                (k == host || (hub && is_docker_hub(&k))).then_some(entry)
            })
        })?;
        entry_credentials(entry)
    }

    /// Run `docker-credential-<helper> get` with `server` on stdin. `Ok(None)` when the helper
    /// knows no credentials for it.
    fn run_helper(
        &self,
        helper: &str,
        server: &str,
    ) -> std::result::Result<Option<Credentials>, String> {
        if !helper
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || helper.starts_with('.')
        {
            return Err(format!("the helper name {helper:?} is not a plain name"));
        }
        let program = format!("docker-credential-{helper}");
        let program = match &self.helper_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut child = Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is judged by its exit status.
            let _ = stdin.write_all(server.as_bytes());
        }
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut err = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(1 << 20).read_to_end(&mut out);
            }
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(4096).read_to_end(&mut err);
            }
            (out, err)
        });
        let deadline = Instant::now() + HELPER_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    #[allow(
                        clippy::disallowed_methods,
                        reason = "a credential helper runs synchronously, as docker pull runs it; bounded by HELPER_TIMEOUT"
                    )]
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not answer within {}s",
                        program.display(),
                        HELPER_TIMEOUT.as_secs()
                    ));
                }
                Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
            }
        };
        let (out, err) = reader
            .join()
            .map_err(|_| "the helper reader thread panicked".to_owned())?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err);
            let stdout = String::from_utf8_lossy(&out);
            let said = format!("{} {}", stdout.trim(), stderr.trim());
            if said.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            // Helpers print only their error here, never the secret.
            return Err(format!(
                "{} exited with {status}: {}",
                program.display(),
                said.trim()
            ));
        }
        let parsed: HelperOutput = serde_json::from_slice(&out)
            .map_err(|e| format!("{} printed no credentials JSON: {e}", program.display()))?;
        if parsed.username.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            username: parsed.username,
            secret: parsed.secret,
        }))
    }
}

fn entry_credentials(entry: &AuthEntry) -> Option<Credentials> {
    use secrecy::ExposeSecret as _;
    if let Some(token) = entry
        .identitytoken
        .as_ref()
        .filter(|t| !t.expose_secret().is_empty())
    {
        return Some(Credentials {
            username: IDENTITY_TOKEN_USER.to_owned(),
            secret: token.clone(),
        });
    }
    if let Some(auth) = entry
        .auth
        .as_ref()
        .filter(|a| !a.expose_secret().is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.expose_secret().trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, password)) if !user.is_empty() => {
                return Some(Credentials {
                    username: user.to_owned(),
                    secret: SecretString::from(password.to_owned()),
                });
            }
            _ => tracing::warn!("a Docker config `auth` entry is not base64 of user:password"),
        }
    }
    match (&entry.username, &entry.password) {
        (Some(user), Some(password)) if !user.is_empty() => Some(Credentials {
            username: user.clone(),
            secret: password.clone(),
        }),
        _ => None,
    }
}

/// `https://registry.example.com/v1/` → `registry.example.com` (Docker's `ConvertToHostname`).
fn normalize_host(key: &str) -> String {
    let s = key.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or(s).to_ascii_lowercase()
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn creds(config: &str, host: &str) -> Option<(String, String)> {
        DockerConfig::from_json(config)
            .unwrap()
            .credentials_for(host)
            .map(|c| (c.username, c.secret.expose_secret().to_owned()))
    }

    #[test]
    fn auths_entries() {
        // "hubuser:hubpass", "ci:s3cret:with:colons"
        let config = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHVidXNlcjpodWJwYXNz"},
                "ghcr.io": {"auth": "Y2k6czNjcmV0OndpdGg6Y29sb25z"},
                "https://registry.example.com/v2/": {"username": "bob", "password": "pw"},
                "localhost:5000": {"auth": ""},
                "acr.example.io": {"auth": "MDAwMDAwMDAtMDAwMDAwMDA6", "identitytoken": "refresh-me"}
            }
        }"#;
        let pair = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
        assert_eq!(creds(config, "docker.io"), pair("hubuser", "hubpass"));
        assert_eq!(creds(config, "index.docker.io"), pair("hubuser", "hubpass"));
        assert_eq!(creds(config, "ghcr.io"), pair("ci", "s3cret:with:colons"));
        assert_eq!(creds(config, "registry.example.com"), pair("bob", "pw"));
        assert_eq!(
            creds(config, "acr.example.io"),
            pair("<token>", "refresh-me")
        );
        assert_eq!(creds(config, "localhost:5000"), None);
        assert_eq!(creds(config, "quay.io"), None);
    }

    #[test]
    fn garbage_is_an_error_and_debug_hides_secrets() {
        assert!(DockerConfig::from_json("not json").is_err());
        let c = DockerConfig::from_json(
            r#"{"auths":{"x.io":{"username":"u","password":"hunter2"}},"credsStore":""}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        // An empty credsStore is no helper.
        assert!(c.credentials_for("x.io").is_some());
    }

    #[cfg(unix)]
    fn write_helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn credential_helpers_get_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes the server it was asked about into the user name, so the test sees stdin.
        write_helper(
            dir.path(),
            "fake",
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"user@%s\",\"Secret\":\"tok\"}' \"$server\" \"$server\"\n",
        );
        write_helper(
            dir.path(),
            "empty",
            "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n",
        );
        let config = DockerConfig::from_json(
            r#"{
                "auths": {"quay.io": {"auth": "cXVheTpwdw=="}},
                "credHelpers": {"ghcr.io": "fake", "quay.io": "empty"},
                "credsStore": "fake"
            }"#,
        )
        .unwrap()
        .with_helper_dir(dir.path());
        let get = |h: &str| {
            config
                .credentials_for(h)
                .map(|c| (c.username, c.secret.expose_secret().to_owned()))
        };
        assert_eq!(get("ghcr.io"), Some(("user@ghcr.io".into(), "tok".into())));
        // credsStore serves every other host; Docker Hub is asked for by its v1 URL.
        assert_eq!(
            get("docker.io"),
            Some(("user@https://index.docker.io/v1/".into(), "tok".into()))
        );
        // A helper that knows nothing falls back to the auths entry.
        assert_eq!(get("quay.io"), Some(("quay".into(), "pw".into())));
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_or_unsafe_helper_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DockerConfig::from_json(r#"{"credHelpers": {"a.io": "absent", "b.io": "../x"}}"#)
                .unwrap()
                .with_helper_dir(dir.path());
        assert!(config.credentials_for("a.io").is_none());
        assert!(config.credentials_for("b.io").is_none());
    }
}
