//! The remote CLI against the real `skipper serve`: the binary serves a temp data directory on a
//! free port, and `skipper --url … --token …` runs against it. No deploy happens, but
//! `skipper serve` connects to the Docker engine when it starts, hence the `ignore`
//! (`scripts/test.sh` runs it).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_skipper");
const TOKEN: &str = "skp_remote_cli_test_token";

/// `skipper serve`, killed and reaped when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address").port()
}

fn serve() -> Server {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("empty.yaml");
    std::fs::write(&config, "").expect("an empty config");
    let url = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--log-format", "text", "--listen"])
        .arg(url.trim_start_matches("http://"))
        .env("SKIPPER_ADMIN_TOKEN", TOKEN)
        .env(
            "SKIPPER_SCOPE",
            format!("remote-cli-{}", std::process::id()),
        )
        .env_remove("SKIPPER_URL")
        .env_remove("SKIPPER_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start skipper serve");
    let server = Server {
        child,
        url,
        _dir: dir,
    };
    // Up when `health` says so (a bound on the wait, not a timing assertion).
    for _ in 0..200 {
        if skipper(&server, None, &["health"]).status.success() {
            return server;
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "a plain #[test]: no async runtime to block"
        )]
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("skipper serve did not come up at {}", server.url);
}

/// `skipper --url <server> [--token T] ARGS`, from a directory with no skipper.yaml.
fn skipper(s: &Server, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["--url", &s.url])
        .current_dir(s._dir.path())
        .env_remove("SKIPPER_URL")
        .env_remove("SKIPPER_TOKEN")
        .env_remove("SKIPPER_DATA_DIR")
        .env_remove("SKIPPER_CONFIG");
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    c.args(args).output().expect("run skipper")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}\nstderr: {}",
            stdout(o),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
#[ignore = "needs docker engine"]
fn the_cli_runs_against_skipper_serve() {
    let s = serve();
    let t = Some(TOKEN);

    let o = skipper(&s, None, &["health", "--json"]);
    assert!(o.status.success());
    assert_eq!(json_of(&o)["status"], "ok");

    // No token, a wrong one: exit 1, the CLI's envelope saying what to check.
    for token in [None, Some("wrong")] {
        let o = skipper(&s, token, &["ps", "--json"]);
        assert_eq!(o.status.code(), Some(1));
        let doc = json_of(&o);
        assert_eq!(doc["error"]["kind"], "unauthorized", "{doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("SKIPPER_TOKEN"),
            "{doc}"
        );
    }

    let o = skipper(&s, t, &["ps", "--json"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_of(&o), Value::Array(vec![]));
    let o = skipper(&s, t, &["history", "--json"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_of(&o), Value::Array(vec![]));
    let o = skipper(&s, t, &["history"]);
    assert_eq!(stdout(&o).trim(), "no deployments");

    let file = write(
        s._dir.path(),
        "skipper.yaml",
        "projects:\n  web:\n    image: 127.0.0.1:5055/team/app\n    port: 8080\n    stages:\n      dev:\n        tag_pattern: \"v*\"\n",
    );
    let o = skipper(&s, t, &["config", "import", &file]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "imported 1 project(s): web");
    let o = skipper(&s, t, &["config", "import", &file, "--json"]);
    assert_eq!(json_of(&o), serde_json::json!({ "imported": ["web"] }));
    let o = skipper(&s, t, &["config", "export"]);
    assert!(o.status.success(), "{o:?}");
    let yaml = stdout(&o);
    assert!(
        yaml.contains("  web:\n") && yaml.contains("image: 127.0.0.1:5055/team/app"),
        "{yaml}"
    );
    let bad = write(
        s._dir.path(),
        "bad.yaml",
        "projects:\n  web:\n    port: 0\n",
    );
    let o = skipper(&s, t, &["config", "import", &bad, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_of(&o)["error"]["kind"], "invalid");

    // The imported project's stage is listed (empty), and an unknown id is the engine's own
    // not-found.
    let o = skipper(&s, t, &["ps", "--project", "web", "--json"]);
    assert_eq!(json_of(&o), Value::Array(vec![]));
    let o = skipper(&s, t, &["rm", "abcd", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let doc = json_of(&o);
    assert_eq!(doc["error"]["kind"], "not_found", "{doc}");
    assert_eq!(doc["error"]["message"], "instance \"abcd\" not found");

    let o = skipper(&s, t, &["reconcile", "--json"]);
    assert!(o.status.success(), "{o:?}");
    assert!(json_of(&o)["adopted"].is_array());

    // The same through the environment.
    let o = Command::new(BIN)
        .args(["ps", "--json"])
        .current_dir(s._dir.path())
        .env("SKIPPER_URL", &s.url)
        .env("SKIPPER_TOKEN", TOKEN)
        .output()
        .expect("run skipper");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_of(&o), Value::Array(vec![]));

    // A flag the server cannot take is a usage error.
    let o = skipper(
        &s,
        t,
        &["deploy", "127.0.0.1:5055/team/app:v1", "--env", "A=b"],
    );
    assert_eq!(o.status.code(), Some(2));
}
