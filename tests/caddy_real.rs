//! Skipper routing through a real Caddy (Debian's, started by `scripts/caddy.sh` with an empty
//! config): `CaddyClient` against the admin API with small HTTP servers of the test's own as
//! upstreams, and the `skipper` binary deploying the test images through Caddy on the real
//! Docker engine.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test caddy_real -- --ignored --test-threads=1`
//!
//! Requests go through Caddy's HTTP port with the route's `Host`. Which changes the client made
//! is read from Caddy's own admin log (`SKIPPER_TEST_CADDY_LOG`: every admin request, with its
//! method, URI and User-Agent), so "one PATCH" is what Caddy received. Each test uses domains of
//! its own and removes its routes; the tests take one lock, so they never change the shared
//! Caddy at the same time. Without the environment a test is skipped with a message, unless
//! `CI=true`.
//!
//! The deploy of v2 runs under the load checker (`tests/common/load.rs`: fresh and kept-alive
//! connections, no retries) and asserts that not one request failed, by status or on the
//! wire. That holds because Skipper's routes answer `Connection: close` while Caddy shuts an
//! old server down (with `shutdown_delay`), and `scripts/caddy.sh` sets
//! `net.ipv4.tcp_migrate_req=1`; without either, Caddy's reloads cut a few requests (see
//! BENCHMARKS.md). Nothing here asserts a duration.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skipper_caddy::{CaddyClient, CaddyConfig, proxy_id, route_id};
use skipper_core::{ErrorKind, ProxyManager, Route, RouteOptions, Upstream};

use common::KillOnDrop;
use common::bin::{Run, World};
use common::docker::Scope;
use common::env::TestEnv;
use common::http::http_get_as;
use common::load::{Load, LoadSettings, Summary};

/// One test at a time changes the shared Caddy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The stage domain of project `app` (from `team/app`), stage `dev`.
const STAGE_DOMAIN: &str = "stage-dev-app.localhost";

// ---- the harness ------------------------------------------------------------------------------

/// The Caddy of `scripts/caddy.sh`.
struct Caddy {
    env: TestEnv,
    admin: String,
    http: String,
    log: Option<PathBuf>,
}

impl Caddy {
    fn or_skip(test: &str) -> Option<Self> {
        let found = TestEnv::load().and_then(|env| {
            let admin = env.var("SKIPPER_TEST_CADDY_ADMIN").map(str::to_owned);
            let http = env.var("SKIPPER_TEST_CADDY_HTTP").map(str::to_owned);
            let log = env.var("SKIPPER_TEST_CADDY_LOG").map(PathBuf::from);
            match (admin, http) {
                (Some(admin), Some(http)) => Ok(Self {
                    env,
                    admin,
                    http,
                    log,
                }),
                _ => {
                    Err("Caddy is not set up: run scripts/test-env.sh (or scripts/caddy.sh)".into())
                }
            }
        });
        match found {
            Ok(c) => Some(c),
            Err(why) => {
                common::skip(test, &why);
                None
            }
        }
    }

    fn client(&self) -> CaddyClient {
        client(&self.admin, &self.http)
    }

    /// Where the admin log ends now.
    fn mark(&self) -> u64 {
        self.log
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// The changes (`METHOD uri`) Skipper's client sent since `mark`, as Caddy logged them.
    fn changes_since(&self, mark: u64) -> Vec<String> {
        let Some(path) = &self.log else {
            return Vec::new();
        };
        let text = std::fs::read(path).unwrap_or_default();
        let start = usize::try_from(mark).unwrap_or(usize::MAX).min(text.len());
        String::from_utf8_lossy(&text[start..])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["msg"] == "received request" && v["method"] != "GET")
            .filter(|v| {
                v.pointer("/headers/User-Agent/0")
                    .and_then(Value::as_str)
                    .is_some_and(|ua| ua.starts_with("skipper-caddy/"))
            })
            .map(|v| {
                format!(
                    "{} {}",
                    v["method"].as_str().unwrap_or("?"),
                    v["uri"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

fn client(admin: &str, http: &str) -> CaddyClient {
    CaddyClient::new(
        CaddyConfig::new(format!("http://{admin}").parse().expect("admin URL"))
            .with_listen(http)
            .with_timeout(Duration::from_secs(10)),
    )
    .expect("client")
}

/// A domain of this test run's own.
fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("{label}-{:x}{nanos:x}.localhost", std::process::id())
}

fn route(domain: &str, port: u16) -> Route {
    Route {
        domain: domain.into(),
        upstream: Upstream {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port,
        },
        options: RouteOptions::default(),
    }
}

/// The body of `GET /` through Caddy with `Host: domain` ("" when no route matches: Caddy
/// answers 200 with an empty body).
fn through(http: &str, domain: &str) -> String {
    match http_get_as(http, domain, "/") {
        Ok((200, body)) => body.trim().to_owned(),
        other => panic!("GET / through Caddy (Host: {domain}): {other:?}"),
    }
}

/// One request to the admin API (a fresh connection, HTTP/1.0): status and body.
fn admin(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to Caddy's admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// Removes Skipper's routes for its domains from a Caddy when dropped, also when a test fails.
struct RouteCleanup {
    admin: String,
    domains: Vec<String>,
}

impl Drop for RouteCleanup {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = std::panic::catch_unwind(|| {
                admin(&self.admin, "DELETE", &format!("/id/{}", route_id(d)), None)
            });
        }
    }
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `body` (and closing).
struct Backend {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one request through Caddy got.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are shown in failure messages, through Debug"
)]
enum Outcome {
    /// 200, with this body.
    Answer(String),
    /// Another status: a failure Skipper answers for (a route missing, a stopped upstream).
    Status(u16, String),
    /// No HTTP answer at all (reset, closed before answering).
    Transport(String),
}

/// Requests through Caddy with `Host: domain`, one after another on fresh connections, until
/// stopped; never retried. Each outcome is kept with the moment its request started.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Outcome)>>,
}

impl Poller {
    fn start(http: &str, domain: &str) -> Self {
        let (http, domain) = (http.to_owned(), domain.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let at = Instant::now();
                seen.push((
                    at,
                    match http_get_as(&http, &domain, "/") {
                        Ok((200, body)) => Outcome::Answer(body.trim().to_owned()),
                        Ok((status, body)) => Outcome::Status(status, body.trim().to_owned()),
                        Err(e) => Outcome::Transport(e.to_string()),
                    },
                ));
            }
            seen
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Outcome)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the poller")
    }
}

/// Every request got a whole answer, 200: the name never stopped resolving and no request was
/// lost on the wire. Requests sent before the switch was asked for (`began`) answered `from`,
/// requests sent after Caddy confirmed it (`returned`) answered `to`; in between both answer,
/// because the server the change replaced keeps answering for the HTTP app's `shutdown_delay`
/// (on Caddy 2.6), each answer with `Connection: close`.
///
/// Before that delay and close, and before `scripts/caddy.sh` set `net.ipv4.tcp_migrate_req=1`,
/// Caddy's own reloads reset or cut a few connections whoever changed the config (30 upstream
/// PATCHes with four workers: Caddy 2.6.2 fresh 7 resets in 6,971 requests, kept-alive 36 in
/// 6,147; BENCHMARKS.md has the causes and figures).
fn assert_clean_switch(
    seen: &[(Instant, Outcome)],
    from: &str,
    to: &str,
    began: Instant,
    returned: Instant,
) {
    let failed: Vec<_> = seen
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Answer(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let answered = |want: &str, when: &dyn Fn(Instant) -> bool| {
        seen.iter()
            .filter(|(at, _)| when(*at))
            .all(|(_, o)| matches!(o, Outcome::Answer(b) if b == want))
    };
    assert!(
        answered(from, &|at| at < began),
        "a request sent before the switch did not answer {from:?}"
    );
    assert!(
        answered(to, &|at| at > returned),
        "a request sent after the switch did not answer {to:?}"
    );
    let after = seen.iter().filter(|(at, _)| *at > returned).count();
    assert!(after > 0, "no request was sent after the switch");
    eprintln!(
        "{} requests, all answered 200; {after} sent after the switch answered {to:?}",
        seen.len(),
    );
}

/// Sleep off the runtime's thread (the backends and Caddy keep serving meanwhile).
async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---- CaddyClient against the real Caddy -------------------------------------------------------

#[tokio::test]
#[ignore = "needs docker engine"]
async fn create_switch_and_remove_a_route_in_a_real_caddy() {
    let _serial = SERIAL.lock().await;
    let caddy = common::or_skip!(Caddy::or_skip("create_switch_and_remove"));
    let (one, two) = (Backend::start("one"), Backend::start("two"));
    let domain = unique("switch");
    let _cleanup = RouteCleanup {
        admin: caddy.admin.clone(),
        domains: vec![domain.clone()],
    };
    let c = caddy.client();

    c.ensure_route(&route(&domain, one.port)).await.unwrap();
    assert_eq!(through(&caddy.http, &domain), "one");
    assert!(
        c.list_routes()
            .await
            .unwrap()
            .contains(&route(&domain, one.port)),
        "the new route is listed"
    );

    // The switch, under requests: one PATCH of the handler's upstreams, no request lost.
    let poller = Poller::start(&caddy.http, &domain);
    pause(300).await;
    let mark = caddy.mark();
    let began = Instant::now();
    c.ensure_route(&route(&domain, two.port)).await.unwrap();
    let returned = Instant::now();
    pause(300).await;
    assert_clean_switch(&poller.finish(), "one", "two", began, returned);
    if caddy.log.is_some() {
        assert_eq!(
            caddy.changes_since(mark),
            [format!("PATCH /id/{}/upstreams", proxy_id(&domain))]
        );
    }

    // Idempotent: the same route again changes nothing.
    let mark = caddy.mark();
    c.ensure_route(&route(&domain, two.port)).await.unwrap();
    assert!(caddy.changes_since(mark).is_empty());

    let mark = caddy.mark();
    c.remove_route(&domain).await.unwrap();
    assert_eq!(
        through(&caddy.http, &domain),
        "",
        "no route serves it any more"
    );
    assert!(
        !c.list_routes()
            .await
            .unwrap()
            .iter()
            .any(|r| r.domain == domain)
    );
    if caddy.log.is_some() {
        assert_eq!(
            caddy.changes_since(mark),
            [format!("DELETE /id/{}", route_id(&domain))]
        );
    }
    // Removing it again is fine.
    c.remove_route(&domain).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn a_route_that_landed_although_its_answer_was_lost_is_adopted() {
    let _serial = SERIAL.lock().await;
    let caddy = common::or_skip!(Caddy::or_skip("adopt_after_lost_answer"));
    let (one, two) = (Backend::start("one"), Backend::start("two"));
    let domain = unique("lost");
    let _cleanup = RouteCleanup {
        admin: caddy.admin.clone(),
        domains: vec![domain.clone()],
    };
    let c = caddy.client();
    // Make sure the server exists (an earlier test may have made it already).
    let warm = unique("warm");
    c.ensure_route(&route(&warm, one.port)).await.unwrap();
    c.remove_route(&warm).await.unwrap();

    // What a create whose answer was lost leaves behind: Skipper's route, already in Caddy.
    let landed = json!({
        "@id": route_id(&domain),
        "match": [{"host": [domain]}],
        "handle": [
            {
                "handler": "subroute",
                "routes": [{
                    "match": [{"vars": {"{http.shutting_down}": ["true"]}}],
                    "handle": [{"handler": "headers", "response": {"set": {"Connection": ["close"]}}}],
                }],
            },
            {
                "@id": proxy_id(&domain),
                "handler": "reverse_proxy",
                "upstreams": [{"dial": format!("127.0.0.1:{}", one.port)}],
            },
        ],
        "terminal": true,
    });
    let (status, body) = admin(
        &caddy.admin,
        "POST",
        "/config/apps/http/servers/srv0/routes",
        Some(&landed),
    );
    assert_eq!(status, 200, "{body}");

    let mark = caddy.mark();
    c.ensure_route(&route(&domain, one.port)).await.unwrap();
    assert!(
        caddy.changes_since(mark).is_empty(),
        "adopted as it is, no second route: {:?}",
        caddy.changes_since(mark)
    );
    assert_eq!(through(&caddy.http, &domain), "one");
    let ours: Vec<_> = c
        .list_routes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.domain == domain)
        .collect();
    assert_eq!(ours, [route(&domain, one.port)]);

    let mark = caddy.mark();
    c.ensure_route(&route(&domain, two.port)).await.unwrap();
    assert_eq!(through(&caddy.http, &domain), "two");
    if caddy.log.is_some() {
        assert_eq!(caddy.changes_since(mark).len(), 1);
    }
    c.remove_route(&domain).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn a_route_made_by_hand_is_left_alone_unless_adopted() {
    let _serial = SERIAL.lock().await;
    let caddy = common::or_skip!(Caddy::or_skip("route_made_by_hand"));
    let one = Backend::start("one");
    let domain = unique("hand");
    let _cleanup = RouteCleanup {
        admin: caddy.admin.clone(),
        domains: vec![domain.clone()],
    };
    let c = caddy.client();
    let warm = unique("warm");
    c.ensure_route(&route(&warm, one.port)).await.unwrap();
    c.remove_route(&warm).await.unwrap();

    let hand = json!({
        "match": [{"host": [domain]}],
        "handle": [{"handler": "static_response", "body": "by hand"}],
    });
    let (status, body) = admin(
        &caddy.admin,
        "POST",
        "/config/apps/http/servers/srv0/routes",
        Some(&hand),
    );
    assert_eq!(status, 200, "{body}");
    let hand_index = || {
        let (_, routes) = admin(
            &caddy.admin,
            "GET",
            "/config/apps/http/servers/srv0/routes",
            None,
        );
        let routes: Vec<Value> = serde_json::from_str(&routes).expect("routes");
        routes.iter().position(|r| *r == hand)
    };
    let index = hand_index().expect("the hand-made route is there");

    let mark = caddy.mark();
    let err = c.ensure_route(&route(&domain, one.port)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("adopt"), "{err}");
    c.remove_route(&domain).await.unwrap();
    assert!(caddy.changes_since(mark).is_empty());
    assert_eq!(through(&caddy.http, &domain), "by hand");
    assert_eq!(hand_index(), Some(index));
    assert!(
        !c.list_routes()
            .await
            .unwrap()
            .iter()
            .any(|r| r.domain == domain)
    );

    // With `route.adopt` Skipper takes it over, in place.
    let mut adopting = route(&domain, one.port);
    adopting.options.adopt = true;
    c.ensure_route(&adopting).await.unwrap();
    assert_eq!(through(&caddy.http, &domain), "one");
    assert_eq!(hand_index(), None);
    assert!(
        c.list_routes()
            .await
            .unwrap()
            .iter()
            .any(|r| r.domain == domain)
    );
    c.remove_route(&domain).await.unwrap();
}

// ---- the skipper binary through Caddy, on the real Docker engine ------------------------------

/// `skipper <args> --json` in `world`, off the runtime's thread.
async fn skipper(world: &World, args: &[&str]) -> Run {
    let mut c = world.command(args);
    c.current_dir(world.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let args_owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || c.output().expect("run skipper"))
        .await
        .expect("the command's thread");
    let args: Vec<&str> = args_owned.iter().map(String::as_str).collect();
    Run::from_output(&args, out)
}

fn caddy_config(admin: &str, http: &str) -> String {
    format!(
        "proxy:\n  kind: caddy\n  url: http://{admin}\n  server: srv0\n  upstream: published\n  \
         listen: \"{http}\"\n  drain: 1s\n"
    )
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn deploys_switch_the_stage_domain_through_caddy_losing_no_request() {
    let _serial = SERIAL.lock().await;
    let caddy = common::or_skip!(Caddy::or_skip("deploy_through_caddy"));
    if common::docker::engine_reachable()
        .map_err(|why| common::skip("deploy_through_caddy", &why))
        .is_err()
    {
        return;
    }
    let world = World::new(Scope::new("caddy-deploy"));
    world.write_config(&caddy_config(&caddy.admin, &caddy.http));
    let _cleanup = RouteCleanup {
        admin: caddy.admin.clone(),
        domains: vec![
            STAGE_DOMAIN.into(),
            "stage-dev-app-v1.localhost".into(),
            "stage-dev-app-v2.localhost".into(),
        ],
    };
    tokio::task::spawn_blocking(common::bin::skipper_bin)
        .await
        .expect("build the binary");

    let v1 = caddy.env.image("v1");
    skipper(&world, &["deploy", &v1, "--health-path", "/health"])
        .await
        .succeeded();
    assert_eq!(through(&caddy.http, STAGE_DOMAIN), "v1");
    assert_eq!(through(&caddy.http, "stage-dev-app-v1.localhost"), "v1");

    // The load checker during the deploy of v2: fresh and kept-alive connections, no retries.
    // It runs from before the deploy starts until after it finished (the deploy's own three
    // config changes, the drain and v1's stop all fall inside), however long that takes.
    let load = Load::start(&LoadSettings {
        target: caddy.http.parse().expect("Caddy's HTTP address"),
        host: STAGE_DOMAIN.into(),
        path: "/".into(),
        fresh: 2,
        kept: 2,
        timeout: Duration::from_secs(5),
        max_requests: None,
    });
    pause(300).await;
    let mark = caddy.mark();
    let v2 = caddy.env.image("v2");
    let deployed = skipper(&world, &["deploy", &v2, "--health-path", "/health"])
        .await
        .succeeded();
    pause(300).await;
    let summary = Summary::of(&load.finish());
    eprintln!("{}", summary.line());
    // Three config changes, each a reload of all of Caddy: v2's own route, the switch, v1's
    // route removed after the drain.
    if caddy.log.is_some() {
        let changes = caddy.changes_since(mark);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes[0].ends_with("/routes"), "{changes:?}");
        assert_eq!(
            changes[1..],
            [
                format!("PATCH /id/{}/upstreams", proxy_id(STAGE_DOMAIN)),
                format!("DELETE /id/{}", route_id("stage-dev-app-v1.localhost")),
            ],
        );
    }
    // What Skipper answers for: every request got a whole answer, and it was 200 (traffic moved
    // only to a healthy v2, v1 stopped only after the switch and the drain; Caddy's reloads cut
    // nothing, see assert_clean_switch), v1 then v2, and no v1 answer later than the switch
    // plus the drain (1 s).
    assert_eq!(
        summary.failures,
        0,
        "no request may fail, on fresh or kept-alive connections: {}",
        summary.line()
    );
    assert_eq!(
        summary.first_version.as_deref(),
        Some("v1"),
        "{}",
        summary.line()
    );
    assert_eq!(
        summary
            .versions
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["v1", "v2"],
        "{}",
        summary.line()
    );
    let switched = summary.switched_at.expect("v2 answered");
    let last_v1 = summary.last_first_at.expect("v1 answered");
    assert!(
        last_v1 <= switched + Duration::from_secs(1),
        "v1 answered after the switch plus the drain: {}",
        summary.line()
    );
    assert_eq!(through(&caddy.http, STAGE_DOMAIN), "v2");
    assert_eq!(through(&caddy.http, "stage-dev-app-v2.localhost"), "v2");
    // v1 was retired: its own route is gone, and only Skipper's routes are listed.
    assert_eq!(through(&caddy.http, "stage-dev-app-v1.localhost"), "");
    assert_eq!(deployed["tag"], "v2", "{deployed:#}");
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn routes_come_back_from_reconcile_after_caddy_restarts_with_an_empty_config() {
    let _serial = SERIAL.lock().await;
    let caddy = common::or_skip!(Caddy::or_skip("caddy_restart"));
    if common::docker::engine_reachable()
        .map_err(|why| common::skip("caddy_restart", &why))
        .is_err()
    {
        return;
    }
    let bin = caddy
        .env
        .var("SKIPPER_TEST_CADDY_BIN")
        .unwrap_or("caddy")
        .to_owned();
    // A Caddy of this test's own, on free ports, that it can kill and start again.
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (admin_addr, http_addr) = (
        format!("127.0.0.1:{}", free()),
        format!("127.0.0.1:{}", free()),
    );
    let state = tempfile::tempdir().expect("temp dir");
    let config = state.path().join("caddy.json");
    std::fs::write(
        &config,
        json!({"admin": {"listen": admin_addr}}).to_string(),
    )
    .unwrap();
    let start = || {
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("HOME", state.path())
            .env("XDG_CONFIG_HOME", state.path().join("config"))
            .env("XDG_DATA_HOME", state.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|child| KillOnDrop(Some(child)))
            .expect("start caddy")
    };
    let up = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&admin_addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "caddy did not start on {admin_addr}"
            );
            pause(50).await;
        }
    };
    let mut own = start();
    up().await;

    let world = World::new(Scope::new("caddy-restart"));
    world.write_config(&caddy_config(&admin_addr, &http_addr));
    tokio::task::spawn_blocking(common::bin::skipper_bin)
        .await
        .expect("build the binary");
    let v1 = caddy.env.image("v1");
    skipper(&world, &["deploy", &v1, "--health-path", "/health"])
        .await
        .succeeded();
    assert_eq!(through(&http_addr, STAGE_DOMAIN), "v1");

    // Killed, and started again without --resume: an empty config, no server, no routes.
    drop(own.take_and_kill());
    own = start();
    up().await;
    let (_, empty) = admin(&admin_addr, "GET", "/config/apps", None);
    assert_eq!(empty.trim(), "null");
    assert!(
        http_get_as(&http_addr, STAGE_DOMAIN, "/").is_err(),
        "nothing listens yet"
    );

    let report = skipper(&world, &["reconcile"]).await;
    assert_eq!(report.code, Some(0), "{:#}\n{}", report.json, report.stderr);
    let repaired: Vec<&str> = report.json["routes_repaired"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(repaired.contains(&STAGE_DOMAIN), "{:#}", report.json);
    assert_eq!(through(&http_addr, STAGE_DOMAIN), "v1");
    assert_eq!(through(&http_addr, "stage-dev-app-v1.localhost"), "v1");
    drop(own);
}

trait TakeAndKill {
    fn take_and_kill(&mut self) -> KillOnDrop;
}

impl TakeAndKill for KillOnDrop {
    /// Kill the child now (SIGKILL, as a crash would) and hand back an empty guard.
    fn take_and_kill(&mut self) -> KillOnDrop {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        KillOnDrop(None)
    }
}
