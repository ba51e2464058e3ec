//! The `skipper` binary: where it is, one test's world to run it in, and its `--json` output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::docker::Scope;

/// The `skipper` binary: `SKIPPER_BIN`, else built once (per test process) next to this test's
/// own executable (`<target>/<profile>/deps/<test>-*` → `<target>/<profile>/skipper`).
pub(crate) fn skipper_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SKIPPER_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable sits in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("<target>/<profile>");
        // The profile this test was built with: `target/debug` is `dev`, others keep their name.
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(name) => name,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "skipper-bin", "--bin", "skipper"])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the skipper binary failed");
        let bin = profile_dir.join("skipper");
        assert!(bin.exists(), "no binary at {}", bin.display());
        bin
    })
}

/// One test's world for the binary: its scope (containers and networks removed on drop), a data
/// directory holding the config file, and an empty Docker config (so registry credentials come
/// only from what the test passes).
pub(crate) struct World {
    // First, so that the containers go before the directories.
    pub(crate) scope: Scope,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) docker_config: tempfile::TempDir,
}

impl World {
    /// A world for `scope`, its config file naming the scope's own network (so that the network
    /// carries the scope's label too and is cleaned up with it).
    pub(crate) fn new(scope: Scope) -> Self {
        let world = Self {
            scope,
            dir: tempfile::tempdir().expect("temp dir"),
            docker_config: tempfile::tempdir().expect("temp dir"),
        };
        world.write_config("");
        world
    }

    /// The data directory the commands use.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("skipper.yaml")
    }

    /// Write the config file: the scope's own network, plus `rest` (top-level YAML sections).
    pub(crate) fn write_config(&self, rest: &str) {
        let text = format!("global:\n  network: {}\n{rest}", self.scope.network());
        std::fs::write(self.config_path(), text).expect("write the config file");
    }

    /// `skipper <args> --json` in embedded mode, in this world, not yet started. No NPM (set
    /// `SKIPPER_NPM_URL` on it for one), no secret key, no `RUST_LOG`, no stdin.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = self.text_command(args);
        c.arg("--json");
        c
    }

    /// [`command`](Self::command) without `--json`: what a person sees.
    pub(crate) fn text_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(skipper_bin());
        c.args(args)
            .env("SKIPPER_DATA_DIR", self.data_dir())
            .env("SKIPPER_CONFIG", self.config_path())
            .env("SKIPPER_SCOPE", &self.scope.name)
            // The test images stop at once on SIGTERM; a short grace bounds any that would not.
            .env("SKIPPER_STOP_GRACE", "1s")
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("SKIPPER_NPM_URL")
            .env_remove("SKIPPER_SECRET_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }
}

/// A finished `skipper ... --json`.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) json: Value,
    pub(crate) stderr: String,
}

impl Run {
    /// The run of `skipper <args>` that printed `out`; panics unless stdout is one JSON document.
    pub(crate) fn from_output(args: &[&str], out: Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "skipper {args:?}: stdout is not one JSON document ({e}); exit {:?}\n\
                 stdout: {stdout}\nstderr: {stderr}",
                out.status.code()
            )
        });
        Self {
            code: out.status.code(),
            json,
            stderr,
        }
    }

    /// The deploy succeeded (exit 0, status `succeeded`).
    pub(crate) fn succeeded(self) -> Value {
        assert_eq!(
            (self.code, self.json["status"].as_str()),
            (Some(0), Some("succeeded")),
            "{:#}\nstderr: {}",
            self.json,
            self.stderr
        );
        self.json
    }

    /// The deploy failed (non-zero exit, status `failed`).
    pub(crate) fn failed(self) -> Value {
        assert!(
            self.code != Some(0) && self.json["status"] == "failed",
            "expected a failed deploy, got exit {:?}: {:#}\nstderr: {}",
            self.code,
            self.json,
            self.stderr
        );
        self.json
    }
}
