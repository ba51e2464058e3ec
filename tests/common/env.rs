//! Where the registries of `scripts/test-env.sh` are.

use std::collections::HashMap;

/// What `scripts/test-env.sh` wrote to `target/test-env/env.sh` (`SKIPPER_TEST_ENV_FILE`
/// overrides the path), with the `SKIPPER_TEST_*` variables of the environment taking precedence.
pub(crate) struct TestEnv {
    /// The open registry, `host:port`.
    pub(crate) registry: String,
    /// The htpasswd-protected registry; [`TestEnv::load_with_auth`] insists on it.
    auth_registry: Option<String>,
    /// The htpasswd registry's user and password.
    pub(crate) user: String,
    pub(crate) password: String,
    /// The repository the script pushed every variant to, `team/app`.
    pub(crate) repository: String,
    vars: HashMap<String, String>,
    path: String,
}

impl TestEnv {
    /// The environment with (at least) the open registry; `Err` says what is missing.
    pub(crate) fn load() -> Result<Self, String> {
        let path = std::env::var("SKIPPER_TEST_ENV_FILE")
            .unwrap_or_else(|_| format!("{}/target/test-env/env.sh", env!("CARGO_MANIFEST_DIR")));
        let mut vars: HashMap<String, String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let line = line.strip_prefix("export ").unwrap_or(line);
                let (k, v) = line.split_once('=')?;
                (!k.starts_with('#')).then(|| (k.to_owned(), v.trim_matches('"').to_owned()))
            })
            .collect();
        vars.extend(std::env::vars().filter(|(k, _)| k.starts_with("SKIPPER_TEST_")));
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let registry = get("SKIPPER_TEST_REGISTRY").ok_or_else(|| missing("REGISTRY", &path))?;
        Ok(Self {
            registry,
            auth_registry: get("SKIPPER_TEST_AUTH_REGISTRY"),
            user: get("SKIPPER_TEST_AUTH_USER").unwrap_or_else(|| "skipper".into()),
            password: get("SKIPPER_TEST_AUTH_PASSWORD").unwrap_or_else(|| "skipper-pass".into()),
            repository: get("SKIPPER_TEST_REPOSITORY").unwrap_or_else(|| "team/app".into()),
            vars,
            path,
        })
    }

    /// The environment with both registries; `Err` says what is missing.
    pub(crate) fn load_with_auth() -> Result<Self, String> {
        let env = Self::load()?;
        match env.auth_registry {
            Some(_) => Ok(env),
            None => Err(missing("AUTH_REGISTRY", &env.path)),
        }
    }

    /// The htpasswd-protected registry, `host:port`.
    pub(crate) fn auth_registry(&self) -> &str {
        self.auth_registry
            .as_deref()
            .expect("only a TestEnv::load_with_auth environment has the auth registry")
    }

    /// `<open registry>/team/app:<tag>`.
    pub(crate) fn image(&self, tag: &str) -> String {
        format!("{}/{}:{tag}", self.registry, self.repository)
    }

    /// `<htpasswd registry>/team/app:<tag>`.
    pub(crate) fn auth_image(&self, tag: &str) -> String {
        format!("{}/{}:{tag}", self.auth_registry(), self.repository)
    }

    /// The digest the script's push reported for `variant`, if it recorded one.
    pub(crate) fn digest(&self, variant: &str) -> Option<&str> {
        self.vars
            .get(&format!("SKIPPER_TEST_DIGEST_{}", variant.to_uppercase()))
            .map(String::as_str)
            .filter(|d| !d.is_empty())
    }

    /// A `SKIPPER_TEST_*` variable of the environment or the file (`None` when empty).
    pub(crate) fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The variants the script pushed (`v1`, `v2`, ...).
    pub(crate) fn variants(&self) -> Vec<String> {
        self.vars
            .get("SKIPPER_TEST_VARIANTS")
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_else(|| vec!["v1".into(), "v2".into()])
    }
}

fn missing(var: &str, path: &str) -> String {
    format!(
        "the test environment is not set up: run scripts/test-env.sh \
         (no SKIPPER_TEST_{var} in the environment or in {path})"
    )
}
