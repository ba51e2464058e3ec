//! Skipper in a container, against the real Docker engine: `scripts/image.sh` builds the image,
//! `deploy/skipper/docker-compose.yml` starts it (a compose project, network and port of this
//! test's own), and deploys through its API reach the apps over the shared network: the health
//! gate probes each container's address on that network from inside the server's container,
//! nothing is published on the host, and a container on the same network gets the app's answer.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test image_docker -- --ignored --test-threads=1`

#![allow(
    clippy::disallowed_methods,
    reason = "these tests are synchronous: they drive processes and wait with thread::sleep"
)]

mod common;

use common::api::{free_port, wait_for};

/// One API call, with the admin token when `auth`.
fn curl(addr: &str, method: &str, path: &str, body: Option<Value>, auth: bool) -> (u16, Value) {
    common::api::curl(addr, method, path, body, auth.then_some(TOKEN))
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use common::docker::{Scope, docker};
use common::env::TestEnv;

const TOKEN: &str = "image-docker-test-token";

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server's container, started by docker-compose from `deploy/skipper`, with this test's
/// own image tag, compose project, network and port. Dropping it takes everything down, also
/// when the test panics: the server first (so it makes nothing new), then the apps of the scope,
/// then the network and the image.
struct Compose {
    /// The apps' scope (`SKIPPER_SCOPE` of the server); its network is the shared network.
    scope: Option<Scope>,
    project: String,
    image: String,
    network: String,
    addr: String,
}

impl Compose {
    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn file() -> PathBuf {
        Self::root().join("deploy/skipper/docker-compose.yml")
    }

    /// Build the image and start the server; `None` when the test is skipped.
    fn up(test: &str) -> Option<Self> {
        common::env_or_skip(test, TestEnv::load)?;
        if Command::new("docker-compose")
            .arg("version")
            .output()
            .map_or(true, |o| !o.status.success())
        {
            common::skip(test, "no docker-compose (Debian: docker-compose)");
            return None;
        }
        let scope = Scope::new("image");
        let compose = Self {
            project: format!("skipper-test-{}", scope.unique),
            image: format!("skipper-test/skipper:{}", scope.unique),
            network: scope.network(),
            addr: format!("127.0.0.1:{}", free_port()),
            scope: Some(scope),
        };

        let out = Command::new(Self::root().join("scripts/image.sh"))
            .arg(&compose.image)
            .env("SKIPPER_BIN", common::bin::skipper_bin())
            .output()
            .expect("run scripts/image.sh");
        assert!(out.status.success(), "scripts/image.sh: {}", text(&out));

        let out = compose
            .command(&["up", "-d"])
            .output()
            .expect("run docker-compose");
        assert!(out.status.success(), "docker-compose up: {}", text(&out));
        let addr = compose.addr.clone();
        wait_for(60, "the server to answer /v1/health", || {
            let (code, v) = curl(&addr, "GET", "/v1/health", None, false);
            (code == 200 && v["status"] == "ok").then_some(())
        });
        Some(compose)
    }

    /// `docker-compose -p <project> -f deploy/skipper/docker-compose.yml <args>`, its variables
    /// all set here (they win over a `.env` next to the file).
    fn command(&self, args: &[&str]) -> Command {
        let scope = self.scope.as_ref().expect("up");
        let port = self.addr.rsplit(':').next().expect("host:port");
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(Self::file())
            .args(args)
            .env("SKIPPER_IMAGE", &self.image)
            .env("SKIPPER_ADMIN_TOKEN", TOKEN)
            .env("SKIPPER_NETWORK", &self.network)
            .env("SKIPPER_PORT", port)
            .env("SKIPPER_SCOPE", &scope.name)
            .env("SKIPPER_SECRET_KEY", "");
        c
    }

    fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        curl(&self.addr, method, path, body, true)
    }

    fn logs(&self) -> String {
        self.command(&["logs", "--no-color", "--tail", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `GET /` of `container` from a throwaway container on the shared network.
    fn fetch(&self, container: &str) -> String {
        let scope = self.scope.as_ref().expect("up");
        let out = Command::new("docker")
            .args(["run", "--rm", "--network", &self.network])
            // Labelled, so that the scope's cleanup removes it should it hang.
            .args(["--label", &format!("dev.skipper.scope={}", scope.name)])
            .args(["--entrypoint", "/bin/busybox", "skipper-test/app:v1"])
            // busybox's `wget -T` crashes (static build); `timeout` bounds it instead.
            .args(["timeout", "10", "/bin/busybox", "wget", "-q", "-O", "-"])
            .arg(format!("http://{container}:8080/"))
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "wget from the network: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the server's last log lines:\n{}", self.logs());
        }
        // The server; `down` then stops at the network, which the apps still use.
        let _ = self.command(&["down", "--remove-orphans"]).output();
        let mut down = self.command(&["down", "-v", "--remove-orphans"]);
        // The apps (the scope's cleanup), then the network and the data volume.
        drop(self.scope.take());
        let _ = down.output();
        docker(&["network", "rm", &self.network]);
        docker(&["image", "rm", &self.image]);
    }
}

/// The step `name` of a deployment document.
fn step<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {d:#}"))
}

/// The first-boot story: build the image, start it with compose, create a project and deploy
/// through the API (an image the engine has, `pull: missing`: from inside the server's container
/// the test registry on the host's 127.0.0.1 is out of reach), then check the app answers on
/// the shared network; a second version replaces the first, and an unhealthy one is refused
/// with the address it was probed at.
#[test]
#[ignore = "needs docker engine"]
fn the_image_started_with_compose_deploys_apps_on_the_shared_network() {
    let s = common::or_skip!(Compose::up("compose"));

    let (code, v) = curl(&s.addr, "GET", "/v1/projects", None, false);
    assert_eq!(code, 401, "the API needs the token from .env: {v}");

    let (code, p) = s.api(
        "POST",
        "/v1/projects",
        Some(json!({
            "name": "app", "image": "skipper-test/app", "port": 8080,
            "healthcheck": { "path": "/health", "deadline": "8s" },
            "network": s.network,
            "stages": { "dev": { "tag_pattern": "*" } },
        })),
    );
    assert_eq!(code, 201, "{p}");

    let deploy = |tag: &str| {
        let (code, d) = s.api(
            "POST",
            "/v1/projects/app/stages/dev/instances?wait=true",
            Some(json!({ "tag": tag, "pull": "missing" })),
        );
        assert_eq!(code, 200, "{d:#}");
        d
    };

    let d = deploy("v1");
    assert_eq!(d["status"], "succeeded", "{d:#}\n{}", s.logs());
    assert_eq!(step(&d, "pull")["status"], "skipped", "{d:#}");
    assert_eq!(step(&d, "health")["status"], "done", "{d:#}");
    let v1 = d["instance"]["container_name"]
        .as_str()
        .expect("a container name")
        .to_owned();
    // Healthy without a published port: the server probed it over the network.
    assert_eq!(d["instance"]["address"], Value::Null, "{d:#}");
    assert_eq!(docker(&["port", &v1]).trim(), "", "nothing published");
    assert_eq!(s.fetch(&v1), "v1");

    let d = deploy("v2");
    assert_eq!(d["status"], "succeeded", "{d:#}\n{}", s.logs());
    let v2 = d["instance"]["container_name"].as_str().expect("a name");
    assert_eq!(s.fetch(v2), "v2");
    let (code, list) = s.api("GET", "/v1/projects/app/stages/dev/instances", None);
    assert_eq!(code, 200, "{list}");
    let list = list.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "v1 retired: {list:?}");
    assert_eq!(
        (&list[0]["tag"], &list[0]["active"]),
        (&json!("v2"), &json!(true))
    );

    // A 404 on /health: refused, and the error names the container's address on the network.
    let d = deploy("unhealthy");
    assert_eq!(d["status"], "failed", "{d:#}");
    let message = d["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("GET http://") && message.contains(":8080/health → 404"),
        "{d:#}"
    );
    assert!(
        !message.contains("127.0.0.1"),
        "probed over the network: {message}"
    );
    assert_eq!(s.fetch(v2), "v2", "v2 keeps serving");
}
