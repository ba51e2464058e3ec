//! Compose stacks on a node: the `compose` work order both binaries compile in. The server
//! queues one per stack of a tenant (`POST /v1/deployments/{tenant}/apply`); `skippy` writes
//! `{SKIPPY_COMPOSE_BASE_DIR}/{tenant}/{stack}/docker-compose.yml` and `.env` (0600) and runs
//! `docker compose` (or `docker-compose`) there, answering with the services' state.
//!
//! Names are checked (`^[a-z0-9][a-z0-9_-]{0,62}$`), so a tenant or stack name is one path
//! component and never `..`; no directory or file of a stack is followed through a symlink;
//! files are replaced by rename, never written through an existing path. The `.env` is never
//! logged, and the server shows orders with its values hidden.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What to do with a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// Write the files and `up -d --remove-orphans`.
    Up,
    /// `down` (the files stay).
    Down,
    /// Only report the services' state.
    Ps,
}

/// One `compose` order's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComposeOrder {
    pub(crate) action: Action,
    pub(crate) tenant: String,
    pub(crate) stack: String,
    /// The `docker-compose.yml` text (for `up`).
    #[serde(default)]
    pub(crate) compose: Option<String>,
    /// The `.env` (for `up`).
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

/// A tenant or stack name: 1-63 of `a-z`, `0-9`, `_` and `-`, starting with a letter or digit.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?}: use 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        ))
    }
}

/// An environment variable's name and value as a `.env` line allows them.
pub(crate) fn check_env(key: &str, value: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "env name {key:?}: use letters, digits and '_', not starting with a digit"
        ));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(format!("env {key}: a value is one line"));
    }
    Ok(())
}

impl ComposeOrder {
    /// Every check the agent makes before it touches anything.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_name("tenant", &self.tenant)?;
        check_name("stack", &self.stack)?;
        for (k, v) in &self.env {
            check_env(k, v)?;
        }
        if self.action == Action::Up && self.compose.as_deref().is_none_or(str::is_empty) {
            return Err("an `up` needs the compose file's text".into());
        }
        Ok(())
    }

    /// The compose project name: injective over (tenant, stack), since names may hold `-`.
    pub(crate) fn project(&self) -> String {
        format!("t{}-{}-{}", self.tenant.len(), self.tenant, self.stack)
    }

    /// The `.env` text.
    pub(crate) fn env_file(&self) -> String {
        self.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// The same order with its `.env` values hidden (what the API shows).
pub(crate) fn redact(payload: &mut serde_json::Value) {
    if let Some(env) = payload.get_mut("env").and_then(|e| e.as_object_mut()) {
        for v in env.values_mut() {
            *v = serde_json::Value::String("••••".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(tenant: &str, stack: &str) -> ComposeOrder {
        ComposeOrder {
            action: Action::Up,
            tenant: tenant.into(),
            stack: stack.into(),
            compose: Some("services: {}\n".into()),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn names_that_would_leave_the_base_dir_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            "A",
            "-a",
            "_a",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(order(bad, "web").check().is_err(), "tenant {bad:?}");
            assert!(order("acme", bad).check().is_err(), "stack {bad:?}");
        }
        assert!(order("acme-1", "web_2").check().is_ok());
        assert!(order(&"a".repeat(63), "w").check().is_ok());
    }

    #[test]
    fn env_lines_cannot_smuggle_another_variable() {
        let mut o = order("acme", "web");
        o.env
            .insert("DB_URL".into(), "postgres://x\nADMIN=1".into());
        assert!(o.check().is_err());
        let mut o = order("acme", "web");
        o.env.insert("1BAD".into(), "x".into());
        assert!(o.check().is_err());
        let mut o = order("acme", "web");
        o.env.insert("A".into(), "1".into());
        o.env.insert("B_2".into(), "two words".into());
        assert!(o.check().is_ok());
        assert_eq!(o.env_file(), "A=1\nB_2=two words\n");
    }

    #[test]
    fn project_names_never_collide() {
        assert_ne!(order("a-b", "c").project(), order("a", "b-c").project());
        assert_eq!(order("acme", "web").project(), "t4-acme-web");
    }

    #[test]
    fn an_up_needs_a_compose_file_and_redaction_hides_values() {
        let mut o = order("acme", "web");
        o.compose = None;
        assert!(o.check().is_err());
        let mut v = serde_json::json!({"env": {"SECRET": "hunter2"}, "tenant": "acme"});
        redact(&mut v);
        assert_eq!(v["env"]["SECRET"], "••••");
        assert_eq!(v["tenant"], "acme");
    }
}
