//! A fleet in containers, against the real Docker engine: `skipper serve` from its image
//! (`deploy/skipper/docker-compose.yml`) and three `skippy` agents from theirs
//! (`deploy/skippy/docker-compose.yml`), each its own compose project on a network the test
//! creates. The agents share this machine's engine, each acting as a separate host (every
//! container carries its node). The server deploys to each node; blue-green and rollback on
//! one; an agent cut off the network goes offline, a deploy to it is accepted and waits, and
//! once it is back the deploy runs, each of its orders handed out once.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test fleet_docker -- --ignored --test-threads=1`

#![allow(
    clippy::disallowed_methods,
    reason = "these tests are synchronous: they drive processes and wait with thread::sleep"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use common::api::{free_port, wait_for};
use common::docker::{Scope, docker};
use common::env::TestEnv;

const TOKEN: &str = "fleet-docker-test-token";

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Build an image of `binary` (the debug build the tests use) tagged `tag`.
fn image(binary: &str, tag: &str) {
    let bin = common::bin::skipper_bin().with_file_name(binary);
    if binary == "skippy" {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--quiet", "-p", "skipper-bin", "--bin", "skippy"])
            .current_dir(root())
            .status()
            .expect("cargo build skippy");
        assert!(status.success(), "cargo build of skippy failed");
    }
    let out = Command::new(root().join("scripts/image.sh"))
        .arg(tag)
        .env("SKIPPER_IMAGE_BINARY", binary)
        .env("SKIPPER_BIN", bin)
        .output()
        .expect("run scripts/image.sh");
    assert!(
        out.status.success(),
        "scripts/image.sh {binary}: {}",
        text(&out)
    );
}

/// The server and the agents; dropping it takes everything down, also when the test panics.
struct Fleet {
    scope: Option<Scope>,
    unique: String,
    network: String,
    addr: String,
    agents: Vec<String>,
}

impl Fleet {
    fn server(&self, args: &[&str]) -> Command {
        let scope = self.scope.as_ref().expect("up");
        let port = self.addr.rsplit(':').next().expect("host:port");
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(format!("skipper-fleet-{}", self.unique))
            .arg("-f")
            .arg(root().join("deploy/skipper/docker-compose.yml"))
            .args(args)
            .env(
                "SKIPPER_IMAGE",
                format!("skipper-test/skipper:{}", self.unique),
            )
            .env("SKIPPER_ADMIN_TOKEN", TOKEN)
            .env("SKIPPER_NETWORK", &self.network)
            .env("SKIPPER_PORT", port)
            .env("SKIPPER_SCOPE", &scope.name)
            .env("SKIPPER_SECRET_KEY", "");
        c
    }

    fn agent(&self, id: &str, token: &str, args: &[&str]) -> Command {
        let scope = self.scope.as_ref().expect("up");
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(self.agent_project(id))
            .arg("-f")
            .arg(root().join("deploy/skippy/docker-compose.yml"))
            .args(args)
            .env(
                "SKIPPY_IMAGE",
                format!("skipper-test/skippy:{}", self.unique),
            )
            // The server's service name on the shared network.
            .env("SKIPPER_URL", "http://skipper:8080")
            .env("AGENT_ID", id)
            .env("AGENT_TOKEN", token)
            .env("HEARTBEAT_INTERVAL_MS", "500")
            .env("SKIPPY_NETWORK", &self.network)
            .env("SKIPPER_SCOPE", &scope.name);
        c
    }

    fn agent_project(&self, id: &str) -> String {
        format!("skippy-fleet-{}-{id}", self.unique)
    }

    /// The agent's container (compose v1 names it `<project>_skippy_1`).
    fn agent_container(&self, id: &str) -> String {
        let out = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!(
                "label=com.docker.compose.project={}",
                self.agent_project(id)
            ),
        ]);
        out.lines()
            .next()
            .expect("the agent's container")
            .to_owned()
    }

    fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        common::api::curl(&self.addr, method, path, body, Some(TOKEN))
    }

    fn status(&self, node: &str) -> Value {
        self.api("GET", &format!("/v1/nodes/{node}"), None).1["status"].clone()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(o) = self
            .server(&["logs", "--no-color", "--tail", "30"])
            .output()
        {
            all.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        for id in &self.agents {
            if let Ok(o) = self
                .agent(id, "x", &["logs", "--no-color", "--tail", "15"])
                .output()
            {
                all.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
        all
    }

    /// Containers of the scope that carry `dev.skipper.node=<node>`.
    fn on_node(&self, node: &str) -> Vec<String> {
        let scope = self.scope.as_ref().expect("up");
        docker(&[
            "ps",
            "-q",
            "--filter",
            &scope.filter(),
            "--filter",
            &format!("label=dev.skipper.node={node}"),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// `GET /` of `container` from a throwaway container on the shared network.
    fn fetch(&self, container: &str) -> String {
        let scope = self.scope.as_ref().expect("up");
        let out = Command::new("docker")
            .args(["run", "--rm", "--network", &self.network])
            .args(["--label", &format!("dev.skipper.scope={}", scope.name)])
            .args(["--entrypoint", "/bin/busybox", "skipper-test/app:v1"])
            .args(["timeout", "10", "/bin/busybox", "wget", "-q", "-O", "-"])
            .arg(format!("http://{container}:8080/"))
            .output()
            .expect("docker run");
        assert!(out.status.success(), "wget: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the fleet's last log lines:\n{}", self.logs());
        }
        for id in self.agents.clone() {
            let _ = self
                .agent(&id, "x", &["down", "-v", "--remove-orphans"])
                .output();
        }
        let _ = self.server(&["down", "--remove-orphans"]).output();
        let mut down = self.server(&["down", "-v", "--remove-orphans"]);
        drop(self.scope.take());
        let _ = down.output();
        docker(&["network", "rm", &self.network]);
        docker(&[
            "image",
            "rm",
            &format!("skipper-test/skipper:{}", self.unique),
        ]);
        docker(&[
            "image",
            "rm",
            &format!("skipper-test/skippy:{}", self.unique),
        ]);
    }
}

#[test]
#[ignore = "needs docker engine"]
fn a_server_and_three_agents_in_containers_deploy_to_each_node() {
    let _env = common::or_skip!(common::env_or_skip("fleet", TestEnv::load));
    let scope = Scope::new("fleet");
    let mut f = Fleet {
        unique: scope.unique.clone(),
        network: scope.network(),
        addr: format!("127.0.0.1:{}", free_port()),
        scope: Some(scope),
        agents: Vec::new(),
    };
    image("skipper", &format!("skipper-test/skipper:{}", f.unique));
    image("skippy", &format!("skipper-test/skippy:{}", f.unique));
    let out = f.server(&["up", "-d"]).output().expect("docker-compose");
    assert!(out.status.success(), "docker-compose up: {}", text(&out));
    wait_for(60, "the server", || {
        (f.api("GET", "/v1/health", None).0 == 200).then_some(())
    });

    let nodes = ["host-1", "host-2", "host-3"];
    for id in nodes {
        let (code, n) = f.api("POST", "/v1/nodes", Some(json!({"id": id})));
        assert_eq!(code, 201, "{n}");
        let token = n["token"].as_str().unwrap().to_owned();
        f.agents.push(id.to_owned());
        let out = f
            .agent(id, &token, &["up", "-d"])
            .output()
            .expect("compose");
        assert!(
            out.status.success(),
            "docker-compose up {id}: {}",
            text(&out)
        );
    }
    for id in nodes {
        wait_for(40, "the agents to be online", || {
            (f.status(id) == "online").then_some(())
        });
    }
    let (code, p) = f.api(
        "POST",
        "/v1/projects",
        Some(json!({
            "name": "app", "image": "skipper-test/app", "port": 8080,
            "healthcheck": { "path": "/health", "deadline": "20s" },
            "network": f.network,
            "stages": {
                "a": { "tag_pattern": "*", "node": "host-1" },
                "b": { "tag_pattern": "*", "node": "host-2" },
                "c": { "tag_pattern": "*", "node": "host-3" },
            },
        })),
    );
    assert_eq!(code, 201, "{p}");
    let deploy = |stage: &str, tag: &str| {
        let (code, d) = f.api(
            "POST",
            &format!("/v1/projects/app/stages/{stage}/instances?wait=true"),
            Some(json!({"tag": tag, "pull": "missing"})),
        );
        assert_eq!(code, 200, "{d}");
        d
    };
    let name = |d: &Value| d["instance"]["container_name"].as_str().unwrap().to_owned();

    for (stage, node) in [("a", "host-1"), ("b", "host-2"), ("c", "host-3")] {
        let d = deploy(stage, "v1");
        assert_eq!(d["status"], "succeeded", "{d:#}\n{}", f.logs());
        assert_eq!(f.fetch(&name(&d)), "v1");
        assert_eq!(f.on_node(node).len(), 1, "{stage} runs on {node}");
    }

    // Blue-green and rollback on host-1; the others are untouched.
    let d = deploy("a", "v2");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(f.fetch(&name(&d)), "v2");
    assert_eq!(f.on_node("host-1").len(), 1, "v1 retired on host-1");
    let (code, d) = f.api("POST", "/v1/projects/app/stages/a/rollback?wait=true", None);
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(f.fetch(&name(&d)), "v1");
    assert_eq!(f.on_node("host-2").len(), 1);
    assert_eq!(f.on_node("host-3").len(), 1);

    // host-2 cut off the network: offline; a deploy to it is accepted and waits.
    let cut = f.agent_container("host-2");
    docker(&["network", "disconnect", &f.network, &cut]);
    wait_for(60, "host-2 to be offline", || {
        (f.status("host-2") == "offline").then_some(())
    });
    let (code, d) = f.api(
        "POST",
        "/v1/projects/app/stages/b/instances",
        Some(json!({"tag": "v2", "pull": "missing"})),
    );
    assert_eq!(code, 202, "{d}");
    let id = d["id"]
        .as_str()
        .or(d["deploy_id"].as_str())
        .unwrap_or_else(|| panic!("{d}"))
        .to_owned();
    let (_, waiting) = f.api("GET", &format!("/v1/deploys/{id}"), None);
    assert_eq!(waiting["status"], "in_progress", "{waiting:#}");
    let (_, r) = f.api("POST", "/v1/reconcile", None);
    assert_eq!(r["unreachable"], json!(["host-2"]), "{r:#}");

    // Back: the deploy runs, and each of host-2's orders was handed out once.
    let out = Command::new("docker")
        .args(["network", "connect", "--alias", "skippy", &f.network, &cut])
        .output()
        .expect("docker network connect");
    assert!(out.status.success(), "{}", text(&out));
    let done = wait_for(120, "the waiting deploy to finish", || {
        let (_, d) = f.api("GET", &format!("/v1/deploys/{id}"), None);
        (d["status"] != "in_progress").then_some(d)
    });
    assert_eq!(done["status"], "succeeded", "{done:#}\n{}", f.logs());
    assert_eq!(f.on_node("host-2").len(), 1, "v1 retired on host-2");
    let (_, orders) = f.api("GET", "/v1/work-orders?node=host-2", None);
    let orders = orders.as_array().cloned().unwrap_or_default();
    assert!(!orders.is_empty());
    for o in &orders {
        assert_eq!(o["attempts"], 1, "handed out once: {o:#}");
        assert_ne!(o["status"], "queued", "{o:#}");
    }
}
