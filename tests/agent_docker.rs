//! `skippy` against a real `skipper serve` (which needs the Docker engine): registration, the
//! signed channel, an order handed over by the long-poll and answered once, a redelivered order
//! answered from the journal without running again, a token rotation mid-way, and revocation
//! stopping the agent.
//!
//! Run with: `cargo test --test agent_docker -- --ignored --test-threads=1`

#![allow(
    clippy::disallowed_methods,
    reason = "these tests are synchronous: they drive processes and wait with thread::sleep"
)]

mod common;

use common::api::{free_port, wait_for};

/// One API call with the admin token.
fn curl(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::api::curl(addr, method, path, body, Some(TOKEN))
}

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use common::KillOnDrop;
use common::bin::World;
use common::docker::Scope;

const TOKEN: &str = "agent-docker-test-admin-token";

/// `skippy` next to `skipper` in the target directory (built once per test process).
fn skippy_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let skipper = common::bin::skipper_bin();
    let bin = skipper.with_file_name("skippy");
    BUILT.get_or_init(|| {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--quiet", "-p", "skipper-bin", "--bin", "skippy"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build skippy");
        assert!(status.success(), "cargo build of skippy failed");
    });
    bin
}

fn agent(addr: &str, id: &str, token: &str, data: &Path, scope: &str) -> KillOnDrop {
    let child = Command::new(skippy_bin())
        .env("SKIPPER_SCOPE", scope)
        .env("SKIPPER_URL", format!("http://{addr}"))
        .env("AGENT_ID", id)
        .env("AGENT_TOKEN", token)
        .env("DATA_DIR", data)
        .env("HEARTBEAT_INTERVAL_MS", "200")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skippy");
    KillOnDrop(Some(child))
}

/// `skipper serve` on `addr` for `world`, answering `/v1/health`.
fn serve(world: &World, addr: &str) -> KillOnDrop {
    let mut c = world.text_command(&["serve", "--listen", addr, "--log-format", "json"]);
    c.env("SKIPPER_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = KillOnDrop(Some(c.spawn().expect("start skipper serve")));
    wait_for(30, "the server", || {
        (curl(addr, "GET", "/v1/health", None).0 == 200).then_some(())
    });
    child
}

fn order_done(addr: &str, id: &str) -> Value {
    wait_for(90, "the order to be answered", || {
        let (_, o) = curl(addr, "GET", &format!("/v1/work-orders/{id}"), None);
        (o["status"] == "succeeded" || o["status"] == "failed").then_some(o)
    })
}

#[test]
#[ignore = "needs docker engine"]
fn skippy_takes_orders_once_survives_a_rotation_and_stops_when_revoked() {
    let _env = common::or_skip!(common::env_or_skip("skippy", common::env::TestEnv::load));
    let world = World::new(Scope::new("agent"));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = {
        let mut c = world.text_command(&["serve", "--listen", &addr, "--log-format", "json"]);
        c.env("SKIPPER_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        KillOnDrop(Some(c.spawn().expect("start skipper serve")))
    };
    wait_for(30, "the server", || {
        (curl(&addr, "GET", "/v1/health", None).0 == 200).then_some(())
    });

    let (code, node) = curl(
        &addr,
        "POST",
        "/v1/nodes",
        Some(json!({"id": "host-1", "region": "lab"})),
    );
    assert_eq!(code, 201, "{node}");
    let token = node["token"].as_str().unwrap().to_owned();
    let data = world.dir.path().join("skippy");
    let mut skippy = agent(&addr, "host-1", &token, &data, &world.scope.name);
    wait_for(20, "the node to be online", || {
        (curl(&addr, "GET", "/v1/nodes/host-1", None).1["status"] == "online").then_some(())
    });

    let (_, o) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(json!({"kind": "ping"})),
    );
    let done = order_done(&addr, o["id"].as_str().unwrap_or_else(|| panic!("{o}")));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["result"]["pong"], true);
    assert_eq!(done["result"]["node"], "host-1");
    assert_eq!(done["attempts"], 1);

    // A redelivered order that already ran is answered from the journal, not run again: stop
    // the agent, queue an order, record it as done in the journal, start the agent.
    let child = skippy.child();
    child.kill().unwrap();
    let _ = skippy.take().wait();
    let (_, o) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(json!({"kind": "ping"})),
    );
    let oid = o["id"].as_str().unwrap().to_owned();
    std::fs::write(
        data.join("journal").join(format!("{oid}.json")),
        json!({"ok": true, "result": {"recorded": true}}).to_string(),
    )
    .unwrap();
    let mut skippy = agent(&addr, "host-1", &token, &data, &world.scope.name);
    let done = order_done(&addr, &oid);
    assert_eq!(
        done["result"],
        json!({"recorded": true}),
        "answered from the journal: {done:#}"
    );

    // Rotation while the agent runs: it picks the new token up from its heartbeat, keeps it in
    // DATA_DIR/token, and orders keep flowing.
    let (code, rot) = curl(&addr, "POST", "/v1/nodes/host-1/rotate-token", None);
    assert_eq!(code, 200, "{rot}");
    let new = rot["token"].as_str().unwrap().to_owned();
    wait_for(20, "the agent to switch tokens", || {
        (std::fs::read_to_string(data.join("token")).ok()? == new).then_some(())
    });
    let (_, o) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(json!({"kind": "ping", "priority": "critical"})),
    );
    assert_eq!(
        order_done(&addr, o["id"].as_str().unwrap())["status"],
        "succeeded"
    );

    // A runtime call forwarded to the node's Docker engine (what a deploy to the node is made
    // of): the agent runs it with its own scope and answers with the runtime's value.
    let net = world.scope.network();
    let (_, o) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(json!({"kind": "runtime", "payload": {"call": "ensure_network", "network": net}})),
    );
    let done = order_done(&addr, o["id"].as_str().unwrap_or_else(|| panic!("{o}")));
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let (_, o) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(
            json!({"kind": "runtime", "payload": {"call": "has_image", "image": "skipper-test/app:v1"}}),
        ),
    );
    let done = order_done(&addr, o["id"].as_str().unwrap_or_else(|| panic!("{o}")));
    assert_eq!(done["result"]["value"], true, "{done:#}");
    let (_, o) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(
            json!({"kind": "runtime", "payload": {"call": "inspect_container", "id": "no-such-container"}}),
        ),
    );
    let done = order_done(&addr, o["id"].as_str().unwrap_or_else(|| panic!("{o}")));
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["result"]["kind"], "not_found", "{done:#}");
    let (code, bad) = curl(
        &addr,
        "POST",
        "/v1/nodes/host-1/work-orders",
        Some(json!({"kind": "runtime", "payload": {"call": "rm_rf"}})),
    );
    assert_eq!(code, 400, "{bad}");

    // Revoked: the agent stops with a clear error (exit 3) instead of retrying forever.
    assert_eq!(curl(&addr, "DELETE", "/v1/nodes/host-1", None).0, 204);
    let out = wait_for(20, "skippy to stop", || {
        skippy.child().try_wait().ok().flatten()
    });
    assert_eq!(out.code(), Some(3));
    let mut err = String::new();
    use std::io::Read;
    let _ = skippy
        .take()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err);
    assert!(err.contains("refused") && err.contains("revoked"), "{err}");
    let _ = server.child().kill();
}

/// `kill -9` of the server while orders are queued and leased, then a restart: every order is
/// answered, and the agent ran each one once (its journal answers a redelivery).
#[test]
#[ignore = "needs docker engine"]
fn kill_9_of_the_server_with_orders_in_flight_loses_none_and_runs_none_twice() {
    let _env = common::or_skip!(common::env_or_skip(
        "kill9-orders",
        common::env::TestEnv::load
    ));
    let world = World::new(Scope::new("agent-kill9"));
    let addr = format!("127.0.0.1:{}", free_port());
    let serve = |world: &World| {
        let mut c = world.text_command(&["serve", "--listen", &addr, "--log-format", "json"]);
        c.env("SKIPPER_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = KillOnDrop(Some(c.spawn().expect("start skipper serve")));
        wait_for(30, "the server", || {
            (curl(&addr, "GET", "/v1/health", None).0 == 200).then_some(())
        });
        child
    };
    let mut server = serve(&world);
    let (_, node) = curl(&addr, "POST", "/v1/nodes", Some(json!({"id": "host-1"})));
    let token = node["token"].as_str().unwrap().to_owned();
    let data = world.dir.path().join("skippy");
    let log = world.dir.path().join("skippy.log");
    let child = Command::new(skippy_bin())
        .env("SKIPPER_URL", format!("http://{addr}"))
        .env("AGENT_ID", "host-1")
        .env("AGENT_TOKEN", &token)
        .env("DATA_DIR", &data)
        .env("SKIPPER_SCOPE", &world.scope.name)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start skippy");
    let _skippy = KillOnDrop(Some(child));
    let mut ids = Vec::new();
    for _ in 0..30 {
        let (code, o) = curl(
            &addr,
            "POST",
            "/v1/nodes/host-1/work-orders",
            Some(json!({"kind": "ping"})),
        );
        assert_eq!(code, 201, "{o}");
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    // Mid-flight: some answered, some not yet.
    server.child().kill().expect("kill -9 the server");
    let _ = server.take().wait();
    let _server = serve(&world);
    for id in &ids {
        let done = order_done(&addr, id);
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for id in &ids {
        let runs = text
            .lines()
            .filter(|l| l.contains("order done") && l.contains(id.as_str()))
            .count();
        assert_eq!(runs, 1, "order {id} ran {runs} times:\n{text}");
    }
}

/// One server, two nodes, each with its own `skippy`: a project whose stages name the nodes
/// deploys to each through its agent (pull, create, health probe on the node, blue-green, an
/// unhealthy version rolled back, a rollback), every container labelled with its node and
/// nothing on the server's own host; reconcile then finds nothing to repair on either.
#[test]
#[ignore = "needs docker engine"]
fn one_server_deploys_to_two_nodes_through_their_agents() {
    let env = common::or_skip!(common::env_or_skip("two-nodes", common::env::TestEnv::load));
    let world = World::new(Scope::new("nodes"));
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = serve(&world, &addr);
    let mut _agents = Vec::new();
    for id in ["host-1", "host-2"] {
        let (code, node) = curl(&addr, "POST", "/v1/nodes", Some(json!({"id": id})));
        assert_eq!(code, 201, "{node}");
        let token = node["token"].as_str().unwrap().to_owned();
        let data = world.dir.path().join(id);
        _agents.push(agent(&addr, id, &token, &data, &world.scope.name));
    }
    for id in ["host-1", "host-2"] {
        wait_for(20, "the nodes to be online", || {
            (curl(&addr, "GET", &format!("/v1/nodes/{id}"), None).1["status"] == "online")
                .then_some(())
        });
    }
    let (code, p) = curl(
        &addr,
        "POST",
        "/v1/projects",
        Some(json!({
            "name": "app", "image": env.image("v1").rsplit_once(':').unwrap().0, "port": 8080,
            "healthcheck": { "path": "/health", "deadline": "20s" },
            "stages": {
                "one": { "tag_pattern": "*", "node": "host-1" },
                "two": { "tag_pattern": "*", "node": "host-2" },
            },
        })),
    );
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["stages"]["one"]["node"], "host-1", "{p:#}");
    let deploy = |stage: &str, tag: &str| {
        let (code, d) = curl(
            &addr,
            "POST",
            &format!("/v1/projects/app/stages/{stage}/instances?wait=true"),
            Some(json!({"tag": tag})),
        );
        assert_eq!(code, 200, "{d}");
        d
    };
    let on_node = |node: &str| -> Vec<String> {
        let out = common::docker::docker(&[
            "ps",
            "-q",
            "--filter",
            &world.scope.filter(),
            "--filter",
            &format!("label=dev.skipper.node={node}"),
        ]);
        out.lines().map(str::to_owned).collect()
    };
    let address = |d: &Value| d["instance"]["address"].as_str().unwrap().to_owned();

    let d = deploy("one", "v1");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(common::http::body(&address(&d)), "v1");
    let d = deploy("two", "v2");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(common::http::body(&address(&d)), "v2");
    assert_eq!(on_node("host-1").len(), 1);
    assert_eq!(on_node("host-2").len(), 1);
    let all = common::docker::docker(&["ps", "-aq", "--filter", &world.scope.filter()]);
    assert_eq!(all.lines().count(), 2, "nothing beside the two: {all}");

    // Blue-green on host-1, an unhealthy version rolled back there, then a rollback.
    let d = deploy("one", "v2");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    let v2 = address(&d);
    assert_eq!(common::http::body(&v2), "v2");
    assert_eq!(on_node("host-1").len(), 1, "v1 retired on host-1");
    let d = deploy("one", "unhealthy");
    assert_eq!(d["status"], "failed", "{d:#}");
    assert_eq!(common::http::body(&v2), "v2", "v2 keeps serving");
    assert_eq!(on_node("host-1").len(), 1, "the unhealthy one is gone");
    let (code, d) = curl(
        &addr,
        "POST",
        "/v1/projects/app/stages/one/rollback?wait=true",
        None,
    );
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(common::http::body(&address(&d)), "v1");

    // (A node that goes offline, and a deploy that waits for it: tests/fleet_docker.rs.)
    let (_, r) = curl(&addr, "POST", "/v1/reconcile", None);
    assert!(r.get("unreachable").is_none(), "{r:#}");
    assert_eq!(on_node("host-2").len(), 1);
    assert_eq!(on_node("host-1").len(), 1);
    let (_, orders) = curl(&addr, "GET", "/v1/work-orders?node=host-1", None);
    let orders = orders.as_array().cloned().unwrap_or_default();
    assert!(!orders.is_empty());
    assert!(
        orders
            .iter()
            .all(|o| ["succeeded", "failed", "cancelled"]
                .contains(&o["status"].as_str().unwrap_or(""))),
        "nothing left waiting: {orders:#?}"
    );
}

/// A tenant's compose stack on a node: `PUT /v1/tenants/acme`, then `skipper deploy apply
/// --tenant-id acme` (the CLI against the server) waits until the agent has written the stack's
/// files (`.env` 0600) and run `docker-compose up -d`; the tenant then reads in sync with its
/// service running, and `down` takes it away.
#[test]
#[ignore = "needs docker engine"]
fn a_tenants_compose_stack_runs_on_its_node() {
    let _env = common::or_skip!(common::env_or_skip("tenant", common::env::TestEnv::load));
    let world = World::new(Scope::new("tenant"));
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = serve(&world, &addr);
    let (_, node) = curl(&addr, "POST", "/v1/nodes", Some(json!({"id": "host-1"})));
    let token = node["token"].as_str().unwrap().to_owned();
    let base = world.dir.path().join("stacks");
    let _agent = {
        let child = Command::new(skippy_bin())
            .env("SKIPPER_URL", format!("http://{addr}"))
            .env("AGENT_ID", "host-1")
            .env("AGENT_TOKEN", &token)
            .env("DATA_DIR", world.dir.path().join("skippy"))
            .env("SKIPPY_COMPOSE_BASE_DIR", &base)
            .env("HEARTBEAT_INTERVAL_MS", "200")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start skippy");
        KillOnDrop(Some(child))
    };
    // The scope's label on the service, so its cleanup removes it should the test fail.
    let compose = format!(
        "version: \"3.8\"\nservices:\n  app:\n    image: skipper-test/app:v1\n    labels:\n      dev.skipper.scope: {}\n    environment:\n      - GREETING\n",
        world.scope.name
    );
    let (code, t) = curl(
        &addr,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({
            "node": "host-1",
            "env": {"GREETING": "hello"},
            "stacks": {"web": {"compose": compose, "env": {"SECRET": "hunter2"}}},
        })),
    );
    assert_eq!(code, 201, "{t}");

    let out = Command::new(common::bin::skipper_bin())
        .args(["deploy", "apply", "--tenant-id", "acme"])
        .args(["--url", &format!("http://{addr}"), "--token", TOKEN])
        .output()
        .expect("skipper deploy apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("web: succeeded (app running)"), "{stdout}");

    let dir = base.join("acme").join("web");
    let env = std::fs::read_to_string(dir.join(".env")).unwrap();
    assert_eq!(env, "GREETING=hello\nSECRET=hunter2\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(".env"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (_, t) = curl(&addr, "GET", "/v1/tenants/acme", None);
    assert_eq!(t["in_sync"], true, "{t:#}");
    assert_eq!(
        t["current"]["web"]["services"][0]["state"], "running",
        "{t:#}"
    );
    assert!(!t.to_string().contains("hunter2"), "{t}");
    let running = common::docker::docker(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.project=t4-acme-web",
    ]);
    assert_eq!(running.lines().count(), 1, "{running}");
    let greeting = common::docker::docker(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        running.trim(),
    ]);
    assert!(greeting.contains("GREETING=hello"), "{greeting}");

    let (code, d) = curl(&addr, "POST", "/v1/deployments/acme/down", None);
    assert_eq!(code, 202, "{d}");
    wait_for(60, "the stack to be down", || {
        let (_, t) = curl(&addr, "GET", "/v1/tenants/acme", None);
        (t["current"]["web"]["status"] == "succeeded").then_some(())
    });
    let left = common::docker::docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=com.docker.compose.project=t4-acme-web",
    ]);
    assert_eq!(left.trim(), "", "down removed the service");
}
