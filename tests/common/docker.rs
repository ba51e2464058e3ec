//! The docker CLI, and the scope label that makes each test's containers and networks its own.

use std::process::Command;

use skipper_core::model::labels;

/// Run the docker CLI; its stdout ("" when it fails).
pub(crate) fn docker(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `Err` says why the Docker engine cannot be used: the CLI does not run, or the engine does not
/// answer `docker info`.
pub(crate) fn engine_reachable() -> Result<(), String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "the Docker engine is unreachable: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("the docker CLI cannot run: {e}")),
    }
}

/// A test's own `dev.skipper.scope`. Dropping it removes every container and network carrying
/// that label, also when the test panics.
pub(crate) struct Scope {
    /// `<label>-<unique>`: the value of the scope label.
    pub(crate) name: String,
    /// Unique to this test run (hex digits only).
    #[allow(dead_code, reason = "only registry_real names things after it")]
    pub(crate) unique: String,
}

impl Scope {
    /// A new scope named `<label>-<unique>`.
    pub(crate) fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let unique = format!("{:x}{nanos:x}", std::process::id());
        Self {
            name: format!("{label}-{unique}"),
            unique,
        }
    }

    /// `skipper-test-<name>`: a network name owned by this scope.
    pub(crate) fn network(&self) -> String {
        format!("skipper-test-{}", self.name)
    }

    /// `label=dev.skipper.scope=<name>`, for `docker ... --filter`.
    pub(crate) fn filter(&self) -> String {
        format!("label={}={}", labels::SCOPE, self.name)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let filter = self.filter();
        let cleanup = move || {
            let ids = |args: &[&str]| -> Vec<String> {
                docker(args).split_whitespace().map(str::to_owned).collect()
            };
            let containers = ids(&["ps", "-aq", "--filter", &filter]);
            if !containers.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&containers)
                    .output();
            }
            let networks = ids(&["network", "ls", "-q", "--filter", &filter]);
            if !networks.is_empty() {
                let _ = Command::new("docker")
                    .args(["network", "rm"])
                    .args(&networks)
                    .output();
            }
        };
        // Blocking work off the (possibly async) test's thread.
        let _ = std::thread::spawn(cleanup).join();
    }
}
