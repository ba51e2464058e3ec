//! A small W3C WebDriver client over curl, for the dashboard's browser test: Debian's
//! `chromedriver` driving Debian's headless `chromium` (`scripts/browser.sh` installs both).
//!
//! Why not fantoccini: with `rustls-tls` it pulls hyper-rustls' default `aws-lc-rs` (a C build
//! with cmake) and some forty more crates into every `cargo test` of the workspace. The handful
//! of WebDriver commands the test needs are plain JSON over HTTP; curl already runs the other
//! server tests' calls (`common::api::curl`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

use super::KillOnDrop;
use super::api::{free_port, wait_for};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where `name` is: `$var` if set, else the first of `candidates` that exists, else `name` on
/// PATH; `None` when there is none.
fn find_binary(var: &str, candidates: &[&str], name: &str) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    if let Some(c) = candidates.iter().map(Path::new).find(|p| p.exists()) {
        return Some(c.to_owned());
    }
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// A running `chromedriver` on a free loopback port; killed when dropped.
pub(crate) struct Driver {
    url: String,
    chromium: PathBuf,
    _child: KillOnDrop,
}

impl Driver {
    /// Start chromedriver; `Err` says what is missing (run `scripts/browser.sh`).
    pub(crate) fn start() -> Result<Self, String> {
        let driver = find_binary(
            "SKIPPER_TEST_CHROMEDRIVER",
            &["/usr/bin/chromedriver"],
            "chromedriver",
        )
        .ok_or("no chromedriver (run scripts/browser.sh)")?;
        let chromium = find_binary("SKIPPER_TEST_CHROMIUM", &["/usr/bin/chromium"], "chromium")
            .ok_or("no chromium (run scripts/browser.sh)")?;
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", driver.display()))?;
        let d = Self {
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            _child: KillOnDrop(Some(child)),
        };
        wait_for(20, "chromedriver to be ready", || {
            d.raw("GET", "/status", None)
                .ok()
                .filter(|v| v["value"]["ready"] == true)
                .map(|_| ())
        });
        Ok(d)
    }

    /// One WebDriver call: the answer's JSON, or `Err` with its message.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "120", "-X", method]);
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = c
            .arg(format!("{}{path}", self.url))
            .output()
            .map_err(|e| format!("run curl: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "{method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        match v["value"]["error"].as_str() {
            Some(err) => Err(format!(
                "{method} {path}: {err}: {}",
                v["value"]["message"].as_str().unwrap_or_default()
            )),
            None => Ok(v),
        }
    }

    /// A new headless browser window of `width`×`height`.
    pub(crate) fn browser(&self, width: u32, height: u32) -> Browser<'_> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let v = self
            .raw("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("no browser session: {e}"));
        Browser {
            driver: self,
            session: v["value"]["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        }
    }
}

/// One browser session; closed when dropped.
pub(crate) struct Browser<'d> {
    driver: &'d Driver,
    session: String,
}

impl Browser<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.driver
            .raw(
                method,
                &format!("/session/{}{path}", self.session),
                body.as_ref(),
            )
            .map(|v| v["value"].clone())
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}\nat {}", self.url()))
    }

    /// Open `url` (and wait for its load).
    pub(crate) fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The address the window shows.
    pub(crate) fn url(&self) -> String {
        self.call("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The first element matching `css`, if any.
    pub(crate) fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .ok()?;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// Wait up to `secs` for an element matching `css`; its reference.
    pub(crate) fn wait(&self, secs: u64, css: &str) -> String {
        wait_for(secs, &format!("{css} on {}", self.url()), || self.find(css))
    }

    /// Run `act` on the element matching `css` (waiting up to 10 s for it). A live page may
    /// replace the element between finding it and acting on it ("stale element reference": the
    /// action did not happen); it is then found again.
    fn on_element(&self, css: &str, act: impl Fn(&str) -> Result<Value, String>) {
        for _ in 0..20 {
            let e = self.wait(10, css);
            match act(&e) {
                Ok(_) => return,
                Err(m) if m.contains("stale element") => continue,
                Err(m) => panic!("{m}\nat {}", self.url()),
            }
        }
        panic!("{css} kept being replaced at {}", self.url());
    }

    /// Click the element matching `css` (waiting up to 10 s for it).
    pub(crate) fn click(&self, css: &str) {
        self.on_element(css, |e| {
            self.call("POST", &format!("/element/{e}/click"), Some(json!({})))
        });
    }

    /// Replace the text of the field matching `css` with `text`, as a person types it.
    pub(crate) fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, |e| {
            self.call("POST", &format!("/element/{e}/clear"), Some(json!({})))?;
            self.call(
                "POST",
                &format!("/element/{e}/value"),
                Some(json!({ "text": text })),
            )
        });
    }

    /// The visible text of the element matching `css` ("" when there is none).
    pub(crate) fn text(&self, css: &str) -> String {
        self.find(css)
            .and_then(|e| self.call("GET", &format!("/element/{e}/text"), None).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Run `script` (a function body) in the page; what it returns.
    pub(crate) fn exec(&self, script: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Accept the open `confirm()` dialog, waiting up to 10 s for it; its text.
    pub(crate) fn accept_dialog(&self) -> String {
        let text = wait_for(10, "a confirmation dialog", || {
            self.call("GET", "/alert/text", None)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        });
        self.must("POST", "/alert/accept", Some(json!({})));
        text
    }

    /// Resize the window (a phone's screen, say).
    pub(crate) fn resize(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Save a PNG of the window to `path`.
    pub(crate) fn screenshot(&self, path: &Path) {
        let v = self.must("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .raw("DELETE", &format!("/session/{}", self.session), None);
    }
}
