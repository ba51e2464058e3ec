//! The dashboard through `app(state)` with `oneshot`, against the in-memory fakes: every page
//! and form (status, escaping, CSRF refusal, the redirect to sign in). Time is paused, so
//! health waits pass in virtual time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use skipper_core::config::Config;
use skipper_core::store::MemoryStore;
use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime};
use skipper_core::{DeployStatus, Engine, EngineSettings, ImageRef, Registry, SeenTag};
use tower::ServiceExt;

use crate::server::{AppState, app, auth, idempotency, nodes, state};

const TOKEN: &str = "ui-admin-token";
const REPO: &str = "localhost:5000/team/web";

struct Tags;

#[async_trait]
impl Registry for Tags {
    async fn list_tags(&self, _: &ImageRef) -> skipper_core::Result<Vec<String>> {
        Ok(["v1", "v2", "v10", "dev-1"].map(String::from).to_vec())
    }
    async fn resolve_digest(&self, _: &ImageRef) -> skipper_core::Result<String> {
        Ok(format!("sha256:{}", "a".repeat(64)))
    }
}

struct T {
    app: Router,
    state: AppState,
    rt: Arc<FakeRuntime>,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value of the first hidden `name` field.
    fn field(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let at = self.text.find(&needle).unwrap_or_else(|| {
            panic!("no field {name} in {}", self.text);
        }) + needle.len();
        self.text[at..].split('"').next().unwrap().to_owned()
    }
}

/// A signed-in browser: its session cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn harness() -> T {
    harness_with("").await
}

async fn harness_with(config: &str) -> T {
    let rt = Arc::new(FakeRuntime::new());
    for tag in ["v1", "v2", "v10", "dev-1"] {
        rt.add_image(&format!("{REPO}:{tag}"), Behavior::Healthy);
    }
    rt.add_image(&format!("{REPO}:sick"), Behavior::Unhealthy);
    let engine = Engine::builder(rt.clone(), Arc::new(MemoryStore::new()))
        .proxy(Arc::new(FakeProxy::new()))
        .registry(Arc::new(Tags))
        .settings(EngineSettings::default())
        .build();
    engine
        .store()
        .put_setting(auth::TOKEN_SETTING, &hex::encode(auth::hash(TOKEN)))
        .await
        .unwrap();
    let (state, _) = state(
        engine,
        Config::parse(config).unwrap(),
        idempotency::Idempotency::in_memory().unwrap(),
        std::sync::Arc::new(nodes::Nodes::in_memory(Duration::from_secs(5))),
        Duration::from_secs(30),
        None,
    )
    .await
    .unwrap();
    T {
        app: app(state.clone()),
        state,
        rt,
    }
}

fn form_body(fields: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

impl T {
    async fn call(&self, req: Request<Body>) -> Page {
        let r = self.app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, b: Option<&Browser>) -> Page {
        let mut r = Request::get(path);
        if let Some(b) = b {
            r = r.header(header::COOKIE, &b.cookie);
        }
        self.call(r.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, b: Option<&Browser>, fields: &[(&str, &str)]) -> Page {
        let mut r =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(b) = b {
            r = r.header(header::COOKIE, &b.cookie);
        }
        self.call(r.body(Body::from(form_body(fields))).unwrap())
            .await
    }

    /// A form post with the browser's CSRF token added.
    async fn submit(&self, path: &str, b: &Browser, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("csrf", b.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, Some(b), &all).await
    }

    async fn sign_in(&self) -> Browser {
        let form = self.get("/login", None).await;
        assert_eq!(form.status, StatusCode::OK);
        let login_cookie = form.cookies()[0].split(';').next().unwrap().to_owned();
        let csrf = form.field("csrf");
        let r = self
            .call(
                Request::post("/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::COOKIE, &login_cookie)
                    .body(Body::from(form_body(&[
                        ("csrf", &csrf),
                        ("token", TOKEN),
                        ("next", "/"),
                    ])))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
        let cookie = r
            .cookies()
            .into_iter()
            .find(|c| c.starts_with("skipper_session="))
            .expect("a session cookie")
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let b = Browser {
            cookie,
            csrf: String::new(),
        };
        let page = self.get("/", Some(&b)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        Browser {
            csrf: page.field("csrf"),
            ..b
        }
    }

    /// Project `web` (stages dev, and prod that asks for a confirmation) with a label that
    /// must render as text.
    async fn create_web(&self) {
        let doc = json!({
            "image": REPO, "port": 8080, "healthcheck": "/health",
            "labels": { "team": "<script>alert(1)</script>" },
            "stages": { "dev": { "tag_pattern": "*" }, "prod": { "tag_pattern": "v*", "confirm": true } },
        });
        let p = Config::parse_project("web", &doc.to_string(), &Default::default()).unwrap();
        self.state.engine.put_project(&p).await.unwrap();
    }

    /// Deploy through the form; the id of the deployment, once it ended.
    async fn deploy(&self, b: &Browser, stage: &str, fields: &[(&str, &str)]) -> String {
        let r = self
            .submit(&format!("/projects/web/stages/{stage}/deploy"), b, fields)
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
        let id = r
            .location()
            .strip_prefix("/deploys/")
            .expect("to the deploy page")
            .to_owned();
        self.ended(&id).await;
        id
    }

    async fn ended(&self, id: &str) -> skipper_core::Deployment {
        for _ in 0..600 {
            if let Some(d) = self.state.engine.store().get_deployment(id).await.unwrap()
                && d.status != DeployStatus::InProgress
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("deploy {id} did not end");
    }

    async fn instance(&self, tag: &str) -> skipper_core::Instance {
        self.state
            .engine
            .instances(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.tag == tag)
            .expect("the instance")
    }
}

#[tokio::test(start_paused = true)]
async fn every_page_sends_a_stranger_to_sign_in() {
    let t = harness().await;
    t.create_web().await;
    for path in [
        "/",
        "/projects/web",
        "/deploys",
        "/deploys/abc",
        "/deploy",
        "/events",
        "/deploys/abc/events",
        "/nodes",
    ] {
        let r = t.get(path, None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        let want = if path == "/" {
            "/login".to_owned()
        } else {
            format!(
                "/login?next={}",
                url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
            )
        };
        assert_eq!(r.location(), want, "{path}");
    }
    for path in [
        "/logout",
        "/projects/web/stages/dev/deploy",
        "/projects/web/stages/dev/rollback",
        "/projects/web/stages/dev/instances/abcd/stop",
        "/deploy",
        "/deploy/inspect",
    ] {
        let r = t.post(path, None, &[("csrf", "x"), ("tag", "v1")]).await;
        assert_eq!(
            (r.status, r.location()),
            (StatusCode::SEE_OTHER, "/login"),
            "{path}"
        );
    }
    // A made-up or stale cookie is no session.
    let fake = Browser {
        cookie: format!("skipper_session={}", "0".repeat(64)),
        csrf: String::new(),
    };
    assert_eq!(t.get("/", Some(&fake)).await.location(), "/login");
    // The static files need no session.
    let css = t.get("/static/app.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let js = t.get("/static/app.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.text.contains("EventSource"));
}

#[tokio::test(start_paused = true)]
async fn signing_in_takes_the_admin_token_and_a_fresh_form() {
    let t = harness().await;
    let form = t.get("/login?next=/deploys", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.text.contains("name=\"token\""));
    assert_eq!(form.field("next"), "/deploys");
    let csp = form.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(form.headers[header::CACHE_CONTROL], "no-store");
    let login_cookie = form.cookies()[0].split(';').next().unwrap().to_owned();
    let csrf = form.field("csrf");
    let post =
        |cookie: Option<String>, fields: Vec<(&'static str, String)>, proto: Option<&str>| {
            let mut r = Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(c) = cookie {
                r = r.header(header::COOKIE, c);
            }
            if let Some(p) = proto {
                r = r.header("x-forwarded-proto", p);
            }
            let body: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            r.body(Body::from(form_body(&body))).unwrap()
        };
    // No login cookie, or a token that is not its: refused, no session.
    let r = t
        .call(post(
            None,
            vec![("csrf", csrf.clone()), ("token", TOKEN.into())],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t
        .call(post(
            Some(login_cookie.clone()),
            vec![("csrf", "f".repeat(64)), ("token", TOKEN.into())],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A wrong token.
    let r = t
        .call(post(
            Some(login_cookie.clone()),
            vec![("csrf", csrf.clone()), ("token", "nope".into())],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("not the admin token"));
    assert_eq!(t.state.sessions.len(), 0);
    // The token, behind a TLS proxy: a Secure, HttpOnly, SameSite=Strict cookie; `next` is
    // followed only to a path of this server.
    let r = t
        .call(post(
            Some(login_cookie.clone()),
            vec![
                ("csrf", csrf.clone()),
                ("token", TOKEN.into()),
                ("next", "//evil.example/".into()),
            ],
            Some("https"),
        ))
        .await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"));
    let session = r
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("skipper_session="))
        .unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(session.contains(part), "{session}");
    }
    assert_eq!(t.state.sessions.len(), 1);
    // Over plain HTTP the cookie is not Secure (the browser would drop it).
    let r = t
        .call(post(
            Some(login_cookie),
            vec![
                ("csrf", csrf),
                ("token", TOKEN.into()),
                ("next", "/deploys".into()),
            ],
            None,
        ))
        .await;
    assert_eq!(r.location(), "/deploys");
    assert!(r.cookies().iter().all(|c| !c.contains("Secure")));
}

#[tokio::test(start_paused = true)]
async fn signing_out_ends_the_session() {
    let t = harness().await;
    let b = t.sign_in().await;
    // Sign-out is a form too: without the token it is refused.
    let r = t.post("/logout", Some(&b), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t.submit("/logout", &b, &[]).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
    assert!(r.cookies()[0].contains("Max-Age=0"));
    assert_eq!(t.get("/", Some(&b)).await.location(), "/login");
    // A signed-in browser that opens /login goes on to the dashboard.
    let b = t.sign_in().await;
    assert_eq!(t.get("/login", Some(&b)).await.location(), "/");
}

#[tokio::test(start_paused = true)]
async fn every_form_refuses_a_missing_or_foreign_csrf_token() {
    let t = harness().await;
    t.create_web().await;
    let b = t.sign_in().await;
    t.deploy(&b, "dev", &[("tag", "v1")]).await;
    let id = t.instance("v1").await.id;
    let other = t.sign_in().await;
    assert_ne!(other.csrf, b.csrf);
    let stop = format!("/projects/web/stages/dev/instances/{id}/stop");
    for path in [
        "/projects/web/stages/dev/deploy",
        "/projects/web/stages/dev/rollback",
        stop.as_str(),
        "/deploy",
        "/deploy/inspect",
        "/logout",
    ] {
        for csrf in [None, Some(""), Some(other.csrf.as_str())] {
            let mut fields = vec![("tag", "v2"), ("image", "localhost:5000/team/web:v2")];
            if let Some(c) = csrf {
                fields.push(("csrf", c));
            }
            let r = t.post(path, Some(&b), &fields).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} with {csrf:?}");
            assert!(r.text.contains("CSRF"), "{path}");
        }
    }
    // Nothing happened: v1 still runs, nothing else deployed, the session lives.
    assert_eq!(t.instance("v1").await.state.as_str(), "running");
    assert_eq!(
        t.state
            .engine
            .deployments(&Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(t.get("/", Some(&b)).await.status, StatusCode::OK);
    // A form must be a form.
    let r = t
        .call(
            Request::post("/projects/web/stages/dev/rollback")
                .header(header::COOKIE, &b.cookie)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"csrf": b.csrf}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test(start_paused = true)]
async fn the_dashboard_shows_each_project_its_stages_and_new_versions() {
    let t = harness().await;
    let b = t.sign_in().await;
    let empty = t.get("/", Some(&b)).await;
    assert!(empty.text.contains("No projects yet"));
    assert!(
        empty.text.contains("href=\"/deploy\""),
        "a Quick deploy button"
    );
    t.create_web().await;
    t.deploy(&b, "dev", &[("tag", "v1")]).await;
    // The watcher saw v2 and v10 (newer than v1, which dev serves).
    for tag in ["v1", "v2", "v10"] {
        t.state
            .engine
            .store()
            .put_seen_tag(&SeenTag {
                repository: REPO.into(),
                tag: tag.into(),
                digest: None,
                first_seen: chrono::Utc::now(),
                updated_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }
    let page = t.get("/", Some(&b)).await;
    assert_eq!(page.status, StatusCode::OK);
    let card = &page.text[page.text.find("id=\"project-web\"").unwrap()..];
    assert!(card.contains("data-state=\"healthy\""), "{card}");
    assert!(card.contains("1 running"));
    assert!(card.contains("update: v10"), "{card}");
    assert!(card.contains("/projects/web?stage=dev&amp;tag=v10"));
    assert!(card.contains(">prod</a>"));
    assert!(card.contains("badge stopped"), "prod runs nothing");
    assert!(card.contains("Latest: <a href=\"/deploys/"));
    // The marker's link preselects the tag in dev's deploy form.
    let p = t.get("/projects/web?stage=dev&tag=v10", Some(&b)).await;
    assert!(
        p.text.contains("<option value=\"v10\" selected>"),
        "{}",
        p.text
    );
    // A stopped stage is "stopped"; one whose serving container vanished is "failing".
    let id = t.instance("v1").await.id;
    t.submit(
        &format!("/projects/web/stages/dev/instances/{id}/stop"),
        &b,
        &[],
    )
    .await;
    let page = t.get("/", Some(&b)).await;
    assert!(
        page.text.contains("data-state=\"stopped\""),
        "{}",
        page.text
    );
    t.submit(
        &format!("/projects/web/stages/dev/instances/{id}/start"),
        &b,
        &[],
    )
    .await;
    let container = t.instance("v1").await.container_id.unwrap();
    t.rt.remove_behind_back(&container);
    let page = t.get("/", Some(&b)).await;
    assert!(
        page.text.contains("data-state=\"failing\""),
        "{}",
        page.text
    );
}

#[tokio::test(start_paused = true)]
async fn the_project_page_escapes_what_users_wrote() {
    let t = harness().await;
    t.create_web().await;
    let b = t.sign_in().await;
    let page = t.get("/projects/web", Some(&b)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.text.contains("<script>alert"), "{}", page.text);
    assert!(
        page.text
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
    );
    // A refused tag is echoed in the message, as text.
    let r = t
        .submit(
            "/projects/web/stages/dev/deploy",
            &b,
            &[("tag", "<b>x</b>")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(!r.text.contains("<b>x</b>"));
    assert!(r.text.contains("&#60;b&#62;x&#60;/b&#62;"), "{}", r.text);
    // A project that does not exist is a 404 page.
    let r = t.get("/projects/nope", Some(&b)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text.contains("no project"));
}

#[tokio::test(start_paused = true)]
async fn the_project_page_deploys_acts_on_instances_and_rolls_back() {
    let t = harness().await;
    t.create_web().await;
    let b = t.sign_in().await;
    let page = t.get("/projects/web", Some(&b)).await;
    // dev offers every tag; prod (tag_pattern v*) only its own, and asks for a confirmation.
    let dev = &page.text
        [page.text.find("id=\"stage-dev\"").unwrap()..page.text.find("id=\"stage-prod\"").unwrap()];
    assert!(dev.contains("<option value=\"dev-1\""), "{dev}");
    let prod = &page.text[page.text.find("id=\"stage-prod\"").unwrap()..];
    assert!(!prod.contains("<option value=\"dev-1\""));
    assert!(prod.contains("<option value=\"v10\""));
    assert!(prod.contains("name=\"confirm\" required"));
    assert!(prod.contains("data-confirm="));

    let first = t.deploy(&b, "dev", &[("tag", "v1")]).await;
    let second = t.deploy(&b, "dev", &[("tag", "v2")]).await;
    assert_ne!(first, second);
    let page = t.get("/projects/web", Some(&b)).await;
    let v2 = t.instance("v2").await;
    let row = &page.text[page
        .text
        .find(&format!("id=\"instance-{}\"", v2.id))
        .unwrap()..];
    assert!(row.contains("badge serving"), "{row}");
    assert!(row.contains("badge running state"));
    assert!(row.contains("/stop\""));
    assert!(
        page.text.contains(&format!("href=\"/deploys/{second}\"")),
        "history"
    );

    // Stop, start, restart: each answers with the project page's address.
    let base = format!("/projects/web/stages/dev/instances/{}", v2.id);
    let r = t.submit(&format!("{base}/stop"), &b, &[]).await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, "/projects/web#stage-dev")
    );
    assert_eq!(t.instance("v2").await.state.as_str(), "stopped");
    let page = t.get("/projects/web", Some(&b)).await;
    assert!(page.text.contains(&format!("id=\"start-{}\"", v2.id)));
    t.submit(&format!("{base}/start"), &b, &[]).await;
    assert_eq!(t.instance("v2").await.state.as_str(), "running");
    let r = t.submit(&format!("{base}/restart"), &b, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = t.submit(&format!("{base}/explode"), &b, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Rollback: back to v1, on that deployment's page.
    let r = t.submit("/projects/web/stages/dev/rollback", &b, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert!(r.location().starts_with("/deploys/"));
    let serving = t.state.engine.instances(&Default::default()).await.unwrap();
    assert!(
        serving.iter().any(|i| i.active && i.tag == "v1"),
        "{serving:?}"
    );

    // Remove.
    let v1 = t.instance("v1").await;
    let r = t
        .submit(
            &format!("/projects/web/stages/dev/instances/{}/remove", v1.id),
            &b,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        t.state
            .engine
            .instances(&Default::default())
            .await
            .unwrap()
            .iter()
            .all(|i| i.id != v1.id)
    );

    // prod asks for a confirmation: without it, the refusal is on the page.
    let r = t
        .submit("/projects/web/stages/prod/deploy", &b, &[("tag", "v2")])
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.text.contains("class=\"notice error\""), "{}", r.text);
    assert!(r.text.contains("confirm"));
    t.deploy(&b, "prod", &[("tag", "v2"), ("confirm", "on")])
        .await;
    assert!(t.instance("v2").await.active);
}

#[tokio::test(start_paused = true)]
async fn the_deploy_page_shows_steps_and_why_a_deploy_failed() {
    let t = harness().await;
    t.create_web().await;
    let b = t.sign_in().await;
    let ok = t.deploy(&b, "dev", &[("tag", "v1")]).await;
    let page = t.get(&format!("/deploys/{ok}"), Some(&b)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("data-status=\"succeeded\""));
    for step in ["validate", "pull", "health", "switch"] {
        assert!(
            page.text
                .contains(&format!("<span class=\"step\">{step}</span>")),
            "{step}"
        );
    }
    assert!(
        page.text.contains("data-live=\"\""),
        "a finished deploy is not live"
    );

    let bad = t.deploy(&b, "dev", &[("tag", "sick")]).await;
    let page = t.get(&format!("/deploys/{bad}"), Some(&b)).await;
    assert!(page.text.contains("data-status=\"failed\""));
    assert!(page.text.contains("id=\"failure\""));
    assert!(
        page.text
            .contains("The <strong>health</strong> step failed"),
        "{}",
        page.text
    );
    let d = t.ended(&bad).await;
    let cause = d.error.unwrap().message;
    assert!(
        page.text.contains(
            &askama::filters::escape(&cause, askama::filters::Html)
                .unwrap()
                .to_string()
        ),
        "{}",
        page.text
    );

    let r = t.get("/deploys/nope", Some(&b)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The event streams for the script, behind the session.
    for path in [format!("/deploys/{ok}/events"), "/events".to_owned()] {
        let r = t
            .app
            .clone()
            .oneshot(
                Request::get(&path)
                    .header(header::COOKIE, &b.cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deploys_page_filters_and_puts_running_ones_first() {
    let t = harness().await;
    t.create_web().await;
    let b = t.sign_in().await;
    let ok = t.deploy(&b, "dev", &[("tag", "v1")]).await;
    let bad = t.deploy(&b, "dev", &[("tag", "sick")]).await;
    let all = t.get("/deploys", Some(&b)).await;
    assert_eq!(all.status, StatusCode::OK);
    let (at_bad, at_ok) = (
        all.text.find(&format!("/deploys/{bad}\"")).unwrap(),
        all.text.find(&format!("/deploys/{ok}\"")).unwrap(),
    );
    assert!(at_bad < at_ok, "newest first");
    let failed = t.get("/deploys?status=failed", Some(&b)).await;
    assert!(failed.text.contains(&bad) && !failed.text.contains(&format!("/deploys/{ok}\"")));
    assert!(failed.text.contains("value=\"failed\" selected"));
    let prod = t.get("/deploys?project=web&stage=prod", Some(&b)).await;
    assert!(prod.text.contains("No deploys match"), "{}", prod.text);
    let r = t.get("/deploys?status=%3Cx%3E", Some(&b)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.text.contains("<x>"));
    // A deploy under way is listed on top, under "Running now".
    let (tx, rx) = tokio::sync::oneshot::channel();
    let slow = t.state.engine.clone();
    t.rt.inject(
        skipper_core::testing::Op::Pull,
        skipper_core::testing::Fault::Hang,
    );
    let mut feed = t.state.engine.activity();
    tokio::spawn(async move {
        let req = skipper_core::DeployRequest::new(
            "web",
            "dev",
            ImageRef::parse(&format!("{REPO}:v2")).unwrap(),
        );
        let _ = tx.send(slow.deploy(req).await);
    });
    let running = loop {
        if let Ok(skipper_core::Activity::Started(d)) = feed.recv().await {
            break d.id;
        }
    };
    let page = t.get("/deploys", Some(&b)).await;
    let now = page.text.find("Running now").expect("a running section");
    let at = page.text.find(&format!("/deploys/{running}\"")).unwrap();
    assert!(now < at && at < page.text.find(&format!("/deploys/{bad}\"")).unwrap());
    let live = t.get(&format!("/deploys/{running}"), Some(&b)).await;
    assert!(
        live.text
            .contains(&format!("data-live=\"deploy:{running}\""))
    );
    let dash = t.get("/", Some(&b)).await;
    assert!(dash.text.contains("Deploying now"));
    drop(rx);
}

#[tokio::test(start_paused = true)]
async fn quick_deploy_inspects_then_deploys() {
    let t = harness().await;
    let b = t.sign_in().await;
    let form = t.get("/deploy", Some(&b)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.text.contains("action=\"/deploy/inspect\""));
    // A malformed reference: the error next to the field, the input kept (escaped).
    let r = t
        .submit("/deploy/inspect", &b, &[("image", "<Bad Image>")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("id=\"image-error\""), "{}", r.text);
    assert!(r.text.contains("value=\"&#60;Bad Image&#62;\""));
    // An image that exists: the form pre-filled from what it says about itself.
    let image = format!("{REPO}:v1");
    let r = t.submit("/deploy/inspect", &b, &[("image", &image)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("action=\"/deploy\""));
    assert!(
        r.text.contains("name=\"project\" value=\"web\""),
        "{}",
        r.text
    );
    assert!(r.text.contains("name=\"port\" value=\"8080\""));
    assert!(r.text.contains("name=\"stage\" value=\"dev\""));
    // A bad port is refused next to its field.
    let r = t
        .submit(
            "/deploy",
            &b,
            &[
                ("image", &image),
                ("project", "web"),
                ("stage", "dev"),
                ("port", "http"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("port: give a number"));
    // Deploy: the project is made, and the browser goes to the live deploy page.
    let r = t
        .submit(
            "/deploy",
            &b,
            &[
                ("image", &image),
                ("project", "web"),
                ("stage", "dev"),
                ("port", "8080"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let id = r.location().strip_prefix("/deploys/").unwrap().to_owned();
    assert_eq!(t.ended(&id).await.status, DeployStatus::Succeeded);
    assert!(
        t.state
            .engine
            .store()
            .get_project("web")
            .await
            .unwrap()
            .is_some()
    );
    // Another repository under the same project name is refused, and says so.
    t.rt.add_image("localhost:5000/other/web:v1", Behavior::Healthy);
    let r = t
        .submit(
            "/deploy",
            &b,
            &[("image", "localhost:5000/other/web:v1"), ("project", "web")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("deploys"), "{}", r.text);
}

#[tokio::test(start_paused = true)]
async fn settings_show_and_change_what_can_change() {
    let t = harness().await;
    let stranger = t.get("/settings", None).await;
    assert_eq!(stranger.location(), "/login?next=%2Fsettings");
    let b = t.sign_in().await;
    let page = t.get("/settings", Some(&b)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("Subdomain pattern"));
    let url = page.text[page.text.find("id=\"webhook-url\"").unwrap()..]
        .split("value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:8080/v1/webhook/"),
        "{url}"
    );
    // Regenerate: a new URL, the old one gone.
    let r = t.submit("/settings/webhook/regenerate", &b, &[]).await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, "/settings#webhook")
    );
    let page = t.get("/settings", Some(&b)).await;
    assert!(!page.text.contains(&url));
    // auto_create is a checkbox.
    assert!(!t.state.auto_create());
    t.submit("/settings", &b, &[("auto_create", "on")]).await;
    assert!(t.state.auto_create());
    t.submit("/settings", &b, &[]).await;
    assert!(!t.state.auto_create());
    // Every settings form refuses a foreign token.
    for path in [
        "/settings",
        "/settings/webhook/regenerate",
        "/settings/registries",
        "/settings/registries/ghcr",
        "/settings/registries/ghcr/delete",
        "/settings/registries/ghcr/test",
    ] {
        let r = t.post(path, Some(&b), &[("csrf", "nope")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn registries_are_added_edited_and_deleted_their_tokens_never_shown() {
    let t = harness().await;
    let b = t.sign_in().await;
    // A bad URL: the error next to its field, what was typed kept (escaped), no entry.
    let r = t
        .submit(
            "/settings/registries",
            &b,
            &[
                ("name", "ghcr"),
                ("url", "<nope>"),
                ("type", "ghcr"),
                ("token", "s3cret"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("id=\"reg-url-error\""), "{}", r.text);
    assert!(r.text.contains("value=\"&#60;nope&#62;\""));
    assert!(!r.text.contains("s3cret"), "a token is never sent back");
    // Added: its token shown only as ••••.
    let r = t
        .submit(
            "/settings/registries",
            &b,
            &[
                ("name", "ghcr"),
                ("url", "https://ghcr.io"),
                ("type", "ghcr"),
                ("username", "bot"),
                ("token", "s3cret"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let page = t.get("/settings", Some(&b)).await;
    assert!(page.text.contains("id=\"registry-ghcr\""));
    assert!(
        page.text.contains("token <span class=\"mono\">••••</span>"),
        "{}",
        page.text
    );
    assert!(!page.text.contains("s3cret"));
    // A second with the same name is a conflict.
    let r = t
        .submit(
            "/settings/registries",
            &b,
            &[
                ("name", "ghcr"),
                ("url", "https://ghcr.io"),
                ("type", "ghcr"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Edited.
    let r = t
        .submit(
            "/settings/registries/ghcr",
            &b,
            &[
                ("url", "https://ghcr.example"),
                ("type", "ghcr"),
                ("username", "robot"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let page = t.get("/settings", Some(&b)).await;
    assert!(page.text.contains("https://ghcr.example"));
    assert!(page.text.contains(">robot<"));
    assert!(
        page.text.contains("••••"),
        "an empty token field keeps the stored token"
    );
    // Test connection to a registry that is not there: the reason, at the top.
    let r = t.submit("/settings/registries/nope/test", &b, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text.contains("no registry"));
    // Deleted.
    let r = t.submit("/settings/registries/ghcr/delete", &b, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = t.get("/settings", Some(&b)).await;
    assert!(!page.text.contains("id=\"registry-ghcr\""));
}

#[tokio::test]
async fn the_project_form_edits_every_field_of_skipper_yaml() {
    let t = harness().await;
    let b = t.sign_in().await;
    let made = [
        ("name", "shop"),
        ("image", REPO),
        ("stage_name", "dev"),
        ("stage_tag_pattern", "*"),
        ("stage_node", "edge-1"),
    ];
    // `new` is this form's own page: a project cannot take the name.
    let mut taken = made.to_vec();
    taken[0] = ("name", "new");
    let r = t.submit("/projects/new", &b, &taken).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("id=\"name-error\""), "{}", r.text);
    let r = t.submit("/projects/new", &b, &made).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(
        t.state.engine.project("shop").await.unwrap().stages["dev"]
            .node
            .as_deref(),
        Some("edge-1")
    );
    let every = [
        ("image", REPO),
        ("registry", ""),
        ("port", "8080"),
        ("health_path", "/up"),
        ("health_interval", "2s"),
        ("health_timeout", "3s"),
        ("health_deadline", "40s"),
        ("health_settle", "4s"),
        ("network", "shop-net"),
        ("node", "host-1"),
        ("env", "A=1"),
        ("volumes", "data:/data"),
        ("labels", "team=web"),
        ("route_websocket", "on"),
        ("route_http2", "on"),
        ("route_certificate_id", "7"),
        ("route_access_list_id", "3"),
        ("route_advanced_config", "client_max_body_size 10m;"),
    ];
    let r = t.submit("/projects/shop/edit", &b, &every).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let p = t.state.engine.project("shop").await.unwrap();
    let h = &p.health;
    assert_eq!(
        (h.interval, h.timeout, h.deadline, h.settle),
        (
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_secs(40),
            Duration::from_secs(4)
        )
    );
    assert_eq!(p.node.as_deref(), Some("host-1"));
    assert_eq!(p.network.as_deref(), Some("shop-net"));
    assert_eq!(p.volumes, vec!["data:/data".to_owned()]);
    let r = &p.route;
    assert!(r.websocket && r.http2 && !r.block_exploits && !r.ssl_forced && !r.adopt);
    assert_eq!((r.certificate_id, r.access_list_id), (Some(7), Some(3)));
    assert_eq!(
        r.advanced_config.as_deref(),
        Some("client_max_body_size 10m;")
    );
    // The form shows them all again, and a box left unticked turns an option off.
    let edit = t.get("/projects/shop/edit", Some(&b)).await;
    for shown in [
        "value=\"2s\"",
        "value=\"host-1\"",
        "value=\"edge-1\"",
        "value=\"7\"",
        "client_max_body_size 10m;",
    ] {
        assert!(edit.text.contains(shown), "{shown}: {}", edit.text);
    }
    let off: Vec<(&str, &str)> = every
        .iter()
        .copied()
        .filter(|(k, _)| *k != "route_websocket" && *k != "route_certificate_id")
        .collect();
    let r = t.submit("/projects/shop/edit", &b, &off).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let p = t.state.engine.project("shop").await.unwrap();
    assert!(!p.route.websocket && p.route.http2);
    assert_eq!(p.route.certificate_id, None);
    // Saving a stage keeps its node; a bad timing or id is refused at its field.
    let r = t
        .submit(
            "/projects/shop/stages/dev/edit",
            &b,
            &[("stage_tag_pattern", "v*"), ("stage_node", "edge-1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let p = t.state.engine.project("shop").await.unwrap();
    assert_eq!(p.stages["dev"].node.as_deref(), Some("edge-1"));
    assert_eq!(p.stages["dev"].tag_pattern, "v*");
    let mut bad = every.to_vec();
    bad.push(("health_settle", "soon"));
    bad.retain(|(k, v)| *k != "health_settle" || *v == "soon");
    let r = t.submit("/projects/shop/edit", &b, &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("id=\"health_settle-error\""), "{}", r.text);
    let mut bad = every.to_vec();
    bad.retain(|(k, _)| *k != "route_access_list_id");
    bad.push(("route_access_list_id", "three"));
    let r = t.submit("/projects/shop/edit", &b, &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(
        r.text.contains("give the proxy&#39;s numeric id") || r.text.contains("numeric id"),
        "{}",
        r.text
    );
}

#[tokio::test(start_paused = true)]
async fn projects_and_stages_are_made_edited_and_deleted_with_errors_at_their_fields() {
    let t = harness().await;
    let b = t.sign_in().await;
    let form = t.get("/projects/new", Some(&b)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.text.contains("name=\"stage_tag_pattern\""));
    // A bad image: refused, the message next to the image field, the input kept.
    let bad = [
        ("name", "shop"),
        ("image", "Not An Image!"),
        ("port", "8080"),
        ("stage_name", "dev"),
        ("stage_tag_pattern", "*"),
    ];
    let r = t.submit("/projects/new", &b, &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("id=\"image-error\""), "{}", r.text);
    assert!(r.text.contains("value=\"Not An Image!\""));
    // A port that is no number.
    let r = t
        .submit(
            "/projects/new",
            &b,
            &[("name", "shop"), ("image", REPO), ("port", "http")],
        )
        .await;
    assert!(r.text.contains("id=\"port-error\""), "{}", r.text);
    // Made, with its first stage and an env line.
    let good = [
        ("name", "shop"),
        ("image", REPO),
        ("port", "8080"),
        ("health_path", "/health"),
        ("env", "MODE=demo"),
        ("labels", "team=<b>web</b>"),
        ("stage_name", "dev"),
        ("stage_tag_pattern", "*"),
        ("stage_max_instances", "2"),
    ];
    let r = t.submit("/projects/new", &b, &good).await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, "/projects/shop"),
        "{}",
        r.text
    );
    let p = t.state.engine.project("shop").await.unwrap();
    assert_eq!(p.env["MODE"], "demo");
    assert_eq!(p.stages["dev"].max_instances, 2);
    // Again: a conflict, said at the top.
    let r = t.submit("/projects/new", &b, &good).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // The edit form shows every field (escaped) and edits keep what it does not show.
    let edit = t.get("/projects/shop/edit", Some(&b)).await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(
        edit.text.contains("team=&#60;b&#62;web&#60;/b&#62;"),
        "{}",
        edit.text
    );
    let r = t
        .submit(
            "/projects/shop/edit",
            &b,
            &[
                ("image", REPO),
                ("port", "9090"),
                ("health_path", "/up"),
                ("health_deadline", "30s"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let p = t.state.engine.project("shop").await.unwrap();
    assert_eq!(p.port, Some(9090));
    assert_eq!(p.health.path.as_deref(), Some("/up"));
    assert_eq!(p.health.deadline, Duration::from_secs(30));
    assert!(p.stages.contains_key("dev"), "the stages are kept");
    // Stages: add one whose promote_from names no stage (refused at that field), then a good
    // one; edit it; delete it.
    let r = t
        .submit(
            "/projects/shop/stages",
            &b,
            &[
                ("stage_name", "prod"),
                ("stage_tag_pattern", "v*"),
                ("stage_promote_from", "nope"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("class=\"field-error\""), "{}", r.text);
    let r = t
        .submit(
            "/projects/shop/stages",
            &b,
            &[
                ("stage_name", "prod"),
                ("stage_tag_pattern", "v*"),
                ("stage_promote_from", "dev"),
                ("stage_confirm", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let p = t.state.engine.project("shop").await.unwrap();
    assert!(p.stages["prod"].confirm);
    assert_eq!(p.stages["prod"].promote_from.as_deref(), Some("dev"));
    let r = t
        .submit(
            "/projects/shop/stages/prod/edit",
            &b,
            &[
                ("stage_tag_pattern", "release-*"),
                ("stage_promote_from", "dev"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let p = t.state.engine.project("shop").await.unwrap();
    assert_eq!(p.stages["prod"].tag_pattern, "release-*");
    assert!(!p.stages["prod"].confirm, "an unticked box is false");
    let r = t.submit("/projects/shop/stages/prod/delete", &b, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        !t.state
            .engine
            .project("shop")
            .await
            .unwrap()
            .stages
            .contains_key("prod")
    );
    // Export, import.
    let y = t.get("/config/export", Some(&b)).await;
    assert_eq!(y.status, StatusCode::OK);
    assert!(
        y.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("skipper.yaml")
    );
    assert!(y.text.contains("shop:"), "{}", y.text);
    let renamed = y.text.replace("shop:", "shop2:");
    let r = t.submit("/config/import", &b, &[("yaml", &renamed)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("Imported shop2"), "{}", r.text);
    let r = t
        .submit("/config/import", &b, &[("yaml", "projects: [<oops>")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(
        r.text.contains("&#60;oops&#62;"),
        "the document is kept, escaped"
    );
    // Delete the project.
    let r = t.submit("/projects/shop2/delete", &b, &[]).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"));
    assert!(
        t.state
            .engine
            .store()
            .get_project("shop2")
            .await
            .unwrap()
            .is_none()
    );
    for path in [
        "/projects/new",
        "/projects/shop/edit",
        "/projects/shop/delete",
        "/projects/shop/stages",
        "/projects/shop/stages/dev/edit",
        "/projects/shop/stages/dev/delete",
        "/config/import",
    ] {
        let r = t.post(path, Some(&b), &[("csrf", "nope")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert!(
        t.state
            .engine
            .store()
            .get_project("shop")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        t.get("/config/export", None).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn the_nodes_page_shows_each_node_its_state_and_what_runs_there() {
    let t = harness().await;
    let b = t.sign_in().await;
    let r = t.get("/nodes", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("No nodes yet"), "{}", r.text);
    t.state
        .nodes
        .register("host-1", "worker", Some("lab"), None)
        .unwrap();
    t.state
        .nodes
        .register("host-2", "worker", None, None)
        .unwrap();
    t.state.nodes.heartbeat("host-1").unwrap();
    let mut p = skipper_core::Project::new("web", REPO).unwrap();
    let mut dev = skipper_core::Stage::new("dev");
    dev.node = Some("host-1".into());
    p = p
        .with_stage(dev)
        .with_stage(skipper_core::Stage::new("prod"));
    t.state.engine.put_project(&p).await.unwrap();
    let r = t.get("/nodes", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK);
    let row = |id: &str| {
        let start = r
            .text
            .find(&format!("id=\"node-{id}\""))
            .expect("a row per node");
        let end = r.text[start..].find("</tr>").unwrap() + start;
        r.text[start..end].to_owned()
    };
    let one = row("host-1");
    assert!(one.contains("online") && one.contains("lab"), "{one}");
    assert!(one.contains("href=\"/projects/web\">web/dev</a>"), "{one}");
    assert!(
        !one.contains("web/prod"),
        "prod runs on the server's own host: {one}"
    );
    let two = row("host-2");
    assert!(
        two.contains("offline") && two.contains("never") && two.contains("nothing"),
        "{two}"
    );
}

#[tokio::test]
async fn send_a_test_event_reaches_the_notifiers_and_never_shows_a_url() {
    let t = harness_with(
        "notifications:\n  - { url: \"https://hooks.slack.test/services/T000/B000/sekrit\", format: slack, events: [deploy_failed] }\n",
    )
    .await;
    let b = t.sign_in().await;
    let r = t.get("/settings", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text.contains("https://hooks.slack.test") && r.text.contains("deploy_failed"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("sekrit"), "the URL's token is never shown");
    assert!(r.text.contains("id=\"test-notification\""));
    // Without the form's CSRF token: refused, nothing sent.
    let mut feed = t.state.engine.activity();
    let r = t.post("/settings/notifications/test", Some(&b), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(feed.try_recv().is_err(), "nothing sent without CSRF");
    let r = t.submit("/settings/notifications/test", &b, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.text.contains("A test event is on its way to 1 target"),
        "{}",
        r.text
    );
    match feed.try_recv() {
        Ok(skipper_core::Activity::Event(e)) => assert_eq!(e.kind, skipper_core::EventKind::Test),
        other => panic!("{other:?}"),
    }
}
