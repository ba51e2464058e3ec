//! The dashboard in a real browser: `skipper serve` on the real Docker engine, driven through
//! Debian's headless Chromium and chromedriver. Sign in; quick-deploy a test image and watch
//! the live page reach "succeeded"; stop and start the instance and see its state change
//! without a reload; a failing deploy shows its cause and the container's last log lines; the
//! webhook URL regenerates.
//! Screenshots of the main pages go to `$SKIPPER_TEST_SCREENSHOTS` (default
//! `target/screenshots`; the README's come from `docs/screenshots`).
//!
//! Run with:
//! `scripts/test-env.sh && scripts/browser.sh && cargo test --test dashboard_browser -- --ignored`
//! (`SKIPPER_TEST_SCREENSHOTS=docs/screenshots` to refresh the README's pictures)

#![allow(
    clippy::disallowed_methods,
    reason = "this test is synchronous: it drives processes and waits with thread::sleep"
)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::KillOnDrop;
use common::api::{free_port, wait_for};
use common::bin::World;
use common::docker::Scope;
use common::env::TestEnv;
use common::webdriver::{Browser, Driver};

const TOKEN: &str = "dashboard-browser-test-token";

/// `skipper serve` in its own world, with a known admin token.
struct Server {
    world: World,
    addr: String,
    _child: KillOnDrop,
    log: PathBuf,
}

impl Server {
    fn start(test: &str) -> Self {
        let world = World::new(Scope::new(&format!("ui-{test}")));
        let addr = format!("127.0.0.1:{}", free_port());
        let log = world.dir.path().join("serve.log");
        let out = std::fs::File::create(&log).expect("the server's log file");
        let mut c = world.text_command(&[
            "serve",
            "--listen",
            &addr,
            "--reconcile-interval",
            "2s",
            "--drain-timeout",
            "10s",
        ]);
        c.env("SKIPPER_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(out);
        let child = KillOnDrop(Some(c.spawn().expect("start skipper serve")));
        let a = addr.clone();
        wait_for(30, "the server to answer /v1/health", || {
            let (code, _) = common::api::curl(&a, "GET", "/v1/health", None, None);
            (code == 200).then_some(())
        });
        Self {
            world,
            addr,
            _child: child,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn screenshots() -> PathBuf {
    match std::env::var_os("SKIPPER_TEST_SCREENSHOTS").filter(|v| !v.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(d)
            }
        }
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots"),
    }
}

/// Wait until the deploy page in `b` shows the outcome `status` live: the page is never loaded
/// again (its script re-renders a quiet live view from the server, so it never stalls).
fn outcome(b: &Browser<'_>, secs: u64, status: &str) {
    b.exec("window.__skipperLive = 'same page'; return null");
    b.wait(secs, &format!("#outcome[data-status='{status}']"));
    assert_eq!(
        b.exec("return window.__skipperLive || null"),
        "same page",
        "the outcome showed without loading the page again"
    );
}

#[test]
#[ignore = "needs docker engine"]
fn the_dashboard_in_a_browser() {
    let env = common::or_skip!(common::env_or_skip(
        "the_dashboard_in_a_browser",
        TestEnv::load
    ));
    let driver = match Driver::start() {
        Ok(d) => d,
        Err(why) => {
            common::skip("the_dashboard_in_a_browser", &why);
            return;
        }
    };
    common::bin::skipper_bin();
    let server = Server::start("browser");
    let shots = screenshots();
    let b = driver.browser(1280, 900);
    // A second viewer, on the project page while the first one acts there.
    let watcher = driver.browser(1280, 900);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&b, &watcher, &server, &env, &shots);
    }));
    if let Err(e) = result {
        b.screenshot(&shots.join("failure.png"));
        eprintln!(
            "the server's log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
    let _ = &server.world;
}

fn run(
    b: &Browser<'_>,
    watcher: &Browser<'_>,
    server: &Server,
    env: &TestEnv,
    shots: &std::path::Path,
) {
    // A stranger is sent to sign in, and back to the page asked for after.
    b.goto(&server.url("/deploys"));
    b.wait(10, "#token");
    assert!(b.url().contains("/login?next="), "{}", b.url());
    b.type_into("#token", "not-the-token");
    b.click("#sign-in");
    b.wait(10, ".notice.error");
    assert!(b.text(".notice.error").contains("not the admin token"));
    b.screenshot(&shots.join("login.png"));
    b.type_into("#token", TOKEN);
    b.click("#sign-in");
    b.wait(10, "h1");
    assert!(b.url().ends_with("/deploys"), "{}", b.url());

    // Quick deploy: paste an image, see the form pre-filled from it, deploy, watch it go live.
    b.goto(&server.url("/"));
    b.click("a.button.primary[href='/deploy']");
    let image = env.image("v1");
    b.type_into("#image", &image);
    b.click("#inspect");
    b.wait(60, "#project");
    let prefilled = b.exec("return document.getElementById('port').value");
    assert_eq!(prefilled, "8080", "the port comes from the image's EXPOSE");
    b.type_into("#project", "shop");
    b.screenshot(&shots.join("quick-deploy.png"));
    b.click("#deploy");
    b.wait(10, "#steps");
    assert!(b.url().contains("/deploys/"), "{}", b.url());
    outcome(b, 90, "succeeded");
    let steps = b.text("#steps");
    for step in ["validate", "pull", "health", "record"] {
        assert!(steps.contains(step), "{steps}");
    }
    b.screenshot(&shots.join("deploy.png"));

    // The project page: stop and start the instance, the page changing in place, in this
    // browser and in another viewer's.
    watcher.goto(&server.url("/projects/shop"));
    watcher.wait(10, "#token");
    watcher.type_into("#token", TOKEN);
    watcher.click("#sign-in");
    watcher.wait(10, "tr[data-state='running']");
    watcher.exec("window.__skipperMarker = 'same page'; return null");
    b.goto(&server.url("/projects/shop"));
    b.wait(10, "tr[data-state='running']");
    b.exec("window.__skipperMarker = 'same page'; return null");
    b.click("button[id^='stop-']");
    let asked = b.accept_dialog();
    assert!(asked.contains("Stop v1"), "{asked}");
    for viewer in [b, watcher] {
        viewer.wait(30, "tr[data-state='stopped']");
        assert_eq!(
            viewer.exec("return window.__skipperMarker || null"),
            "same page",
            "the page was not reloaded"
        );
    }
    b.click("button[id^='start-']");
    for viewer in [b, watcher] {
        viewer.wait(30, "tr[data-state='running']");
        assert_eq!(
            viewer.exec("return window.__skipperMarker || null"),
            "same page"
        );
    }
    b.screenshot(&shots.join("project.png"));

    // A deploy that fails: its page says which step, why, and what the container printed.
    // The tag chosen survives a live update of the page arriving meanwhile.
    b.click("#tag-dev option[value='crash']");
    b.exec("document.getElementById('live').dataset.mark = 'before'; return null");
    let (code, _) = common::api::curl(
        &server.addr,
        "POST",
        "/v1/notifications/test",
        None,
        Some(TOKEN),
    );
    assert_eq!(code, 202);
    b.wait(30, "#live:not([data-mark])");
    assert_eq!(
        b.exec("return document.getElementById('tag-dev').value"),
        "crash",
        "the tag chosen was kept through the live update"
    );
    b.click("#deploy-dev");
    b.wait(10, "#steps");
    outcome(b, 90, "failed");
    b.wait(10, "#failure");
    let cause = b.text("#failure");
    assert!(cause.contains("step failed"), "{cause}");
    assert!(
        b.text("#logs")
            .contains("skipper-test crash: exiting with code 3"),
        "{cause}"
    );
    b.screenshot(&shots.join("deploy-failed.png"));

    // Everything at a glance: the dashboard and the deploys page.
    b.goto(&server.url("/"));
    b.wait(10, "#project-shop[data-state='healthy']");
    b.screenshot(&shots.join("dashboard.png"));
    b.goto(&server.url("/deploys"));
    b.wait(10, "tr[data-status='failed']");
    b.wait(10, "tr[data-status='succeeded']");
    b.screenshot(&shots.join("deploys.png"));
    // Settings: the webhook URL regenerates (the old one stops working).
    b.goto(&server.url("/settings"));
    let value = "return document.getElementById('webhook-url').value";
    let old = b.exec(value);
    assert!(
        old.as_str().unwrap_or_default().contains("/v1/webhook/"),
        "{old}"
    );
    b.click("#regenerate-webhook");
    assert!(b.accept_dialog().contains("stops working"));
    wait_for(10, "a new webhook URL", || {
        (b.exec(value) != old).then_some(())
    });
    let (code, _) = common::api::curl(
        &server.addr,
        "POST",
        old.as_str().unwrap().split_once(&server.addr).unwrap().1,
        Some(serde_json::json!({})),
        None,
    );
    assert_eq!(code, 404, "the old webhook URL is refused");
    b.screenshot(&shots.join("settings.png"));

    // On a phone: one column, nothing cut off.
    b.resize(390, 844);
    b.goto(&server.url("/"));
    b.wait(10, "#project-shop");
    let wide = b.exec("return document.documentElement.scrollWidth > window.innerWidth + 1");
    assert_eq!(wide, false, "the dashboard fits a phone's width");
    b.screenshot(&shots.join("dashboard-phone.png"));
}
