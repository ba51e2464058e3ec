//! The conformance suite every [`Store`] must pass.
//!
//! Each function exercises part of the trait contract against a store and panics (like an
//! `assert!`) on the first breach. They use fresh random names, so they can run one after the
//! other on the same store, on a store that already holds data, and on stores shared by
//! several handles. A new backend's tests call [`run_all`] (and
//! [`credentials_hidden_from_debug`]):
//!
//! ```no_run
//! # async fn t() {
//! let store = skipper_core::store::MemoryStore::new();
//! skipper_core::store::conformance::run_all(&store).await;
//! skipper_core::store::conformance::credentials_hidden_from_debug(&store).await;
//! # }
//! ```

use std::fmt::Debug;
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use crate::ErrorKind;
use crate::backend::{DeploymentFilter, InstanceFilter, Store};
use crate::model::{
    DeployError, DeployStatus, Deployment, Instance, InstanceState, Project, SeenTag, Stage, Step,
    StepRecord, StepStatus, Timestamp, Trigger, Upstream, new_id,
};
use crate::reference::ImageRef;

/// The image repository the samples use.
pub const SAMPLE_IMAGE: &str = "localhost:5000/team/web";

/// A fresh name, unique to this call: `prefix` and 12 hex digits (a valid project name when
/// `prefix` is one).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", new_id())
}

/// A project named `name` on [`SAMPLE_IMAGE`], with stages `dev` and `prod`.
pub fn sample_project(name: &str) -> Project {
    let mut prod = Stage::new("prod");
    prod.tag_pattern = "v*".into();
    prod.confirm = true;
    prod.promote_from = Some("dev".into());
    let mut project = Project::new(name, SAMPLE_IMAGE)
        .expect("sample project name is valid")
        .with_stage(Stage::new("dev"))
        .with_stage(prod);
    project.port = Some(8080);
    project.env.insert("RUST_LOG".into(), "info".into());
    project
}

/// A running instance of `project` in `stage` created at `created_at`, with a fresh id.
pub fn sample_instance(project: &str, stage: &str, created_at: Timestamp) -> Instance {
    let id = new_id();
    Instance {
        image: sample_image("v1"),
        tag: "v1".into(),
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
        container_name: format!("skipper-{project}-{stage}-{id}"),
        container_id: Some(format!("c-{id}")),
        address: Some("127.0.0.1:49153".into()),
        upstream: Some(Upstream {
            scheme: "http".into(),
            host: format!("skipper-{project}-{stage}-{id}"),
            port: 8080,
        }),
        domain: format!("{stage}-{project}-{id}.example.com"),
        state: InstanceState::Running,
        active: false,
        deployment_id: new_id(),
        project: project.into(),
        stage: stage.into(),
        created_at,
        updated_at: created_at,
        id,
    }
}

/// A succeeded deployment of `project` to `stage` started at `started_at`, with a fresh id and a
/// short step log.
pub fn sample_deployment(project: &str, stage: &str, started_at: Timestamp) -> Deployment {
    Deployment {
        id: new_id(),
        project: project.into(),
        stage: stage.into(),
        image: sample_image("v1"),
        tag: "v1".into(),
        digest: Some(format!("sha256:{}", "cd".repeat(32))),
        instance_id: Some(new_id()),
        previous_instance: None,
        replaced: vec![new_id()],
        status: DeployStatus::Succeeded,
        trigger: Trigger::Manual,
        steps: vec![
            StepRecord {
                step: Step::Validate,
                status: StepStatus::Done,
                message: "tag v1 matches *".into(),
                at: started_at,
            },
            StepRecord {
                step: Step::Pull,
                status: StepStatus::Done,
                message: "pulled".into(),
                at: started_at,
            },
        ],
        error: None,
        started_at,
        finished_at: Some(started_at + chrono::Duration::seconds(3)),
        settings: None,
        correlation_id: None,
    }
}

fn sample_image(tag: &str) -> ImageRef {
    ImageRef::parse(&format!("{SAMPLE_IMAGE}:{tag}")).expect("sample image reference is valid")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Run every check below (except [`credentials_hidden_from_debug`], which needs `Debug`).
pub async fn run_all(store: &dyn Store) {
    projects(store).await;
    instances(store).await;
    instance_filters_and_order(store).await;
    deployments(store).await;
    deployment_filters_order_and_limit(store).await;
    settings(store).await;
    credentials(store).await;
    seen_tags(store).await;
    leases(store).await;
    lease_renewal(store).await;
    lease_expiry(store).await;
    lease_takeover(store).await;
    fenced_writes(store).await;
    identity(store).await;
}

/// Identity: a store's id is stable across calls and not empty.
pub async fn identity(store: &dyn Store) {
    let id = store.store_id().await.expect("store id");
    assert!(!id.is_empty());
    assert_eq!(store.store_id().await.expect("store id again"), id);
}

/// Leases: the holder is visible; a lease is taken over only from the holder named.
pub async fn lease_takeover(store: &dyn Store) {
    let key = unique_name("lease");
    let (a, b, c) = (
        unique_name("holder-a"),
        unique_name("holder-b"),
        unique_name("holder-c"),
    );
    let ttl = Duration::from_secs(60);
    assert_eq!(store.lease_holder(&key).await.expect("holder"), None);
    assert!(store.try_lock(&key, &a, ttl).await.expect("lock a"));
    assert_eq!(
        store.lease_holder(&key).await.expect("holder").as_deref(),
        Some(a.as_str())
    );
    assert!(
        !store
            .take_over_lock(&key, &c, &b, ttl)
            .await
            .expect("take over from the wrong holder"),
        "only from the holder named"
    );
    assert!(
        store
            .take_over_lock(&key, &a, &b, ttl)
            .await
            .expect("take over"),
        "a live lease is taken over from its named (dead) holder"
    );
    assert!(!store.try_lock(&key, &a, ttl).await.expect("lock a again"));
    assert!(
        !store
            .take_over_lock(&key, &a, &c, ttl)
            .await
            .expect("second take over"),
        "b has it now"
    );
    assert!(
        !store
            .take_over_lock(&unique_name("lease"), &a, &c, ttl)
            .await
            .expect("free key"),
        "a free lease is taken with try_lock, not taken over"
    );
    store.unlock(&key, &b).await.expect("unlock b");
}

/// Fenced writes land while the holder holds the lease and are refused, writing nothing, once
/// another holder has it.
pub async fn fenced_writes(store: &dyn Store) {
    let key = unique_name("lease");
    let (a, b) = (unique_name("holder-a"), unique_name("holder-b"));
    let ttl = Duration::from_secs(60);
    let project = unique_name("fenced");
    let now = Utc::now();
    let mut inst = sample_instance(&project, "dev", now);
    let mut dep = sample_deployment(&project, "dev", now);
    let fence_a = crate::backend::Fence {
        key: key.clone(),
        holder: a.clone(),
    };
    let err = store
        .put_fenced(
            &fence_a,
            std::slice::from_ref(&inst),
            std::slice::from_ref(&dep),
        )
        .await
        .expect_err("no lease held");
    assert_eq!(err.kind(), crate::ErrorKind::Interrupted, "{err}");
    assert!(store.get_instance(&inst.id).await.expect("get").is_none());

    assert!(store.try_lock(&key, &a, ttl).await.expect("lock a"));
    store
        .put_fenced(
            &fence_a,
            std::slice::from_ref(&inst),
            std::slice::from_ref(&dep),
        )
        .await
        .expect("fenced write while held");
    assert_eq!(
        store.get_instance(&inst.id).await.expect("get"),
        Some(inst.clone())
    );
    assert_eq!(
        store.get_deployment(&dep.id).await.expect("get"),
        Some(dep.clone())
    );

    assert!(
        store
            .take_over_lock(&key, &a, &b, ttl)
            .await
            .expect("take over")
    );
    let before = (inst.clone(), dep.clone());
    inst.active = !inst.active;
    dep.tag = "changed".into();
    let err = store
        .put_fenced(
            &fence_a,
            std::slice::from_ref(&inst),
            std::slice::from_ref(&dep),
        )
        .await
        .expect_err("lease lost");
    assert_eq!(err.kind(), crate::ErrorKind::Interrupted, "{err}");
    assert_eq!(
        store.get_instance(&inst.id).await.expect("get"),
        Some(before.0)
    );
    assert_eq!(
        store.get_deployment(&dep.id).await.expect("get"),
        Some(before.1)
    );
    store.unlock(&key, &b).await.expect("unlock b");
}

/// Projects: put/get round trip, replace by name, listing by name, delete (twice).
pub async fn projects(store: &dyn Store) {
    let b = sample_project(&unique_name("pb"));
    let a = sample_project(&unique_name("pa"));
    store.put_project(&b).await.expect("put project b");
    store.put_project(&a).await.expect("put project a");
    assert_eq!(
        store.get_project(&a.name).await.expect("get a"),
        Some(a.clone())
    );
    assert_eq!(
        store.get_project(&b.name).await.expect("get b"),
        Some(b.clone())
    );
    assert_eq!(
        store
            .get_project(&unique_name("none"))
            .await
            .expect("get missing"),
        None
    );

    let listed = store.list_projects().await.expect("list projects");
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert!(names.is_sorted(), "projects are listed by name: {names:?}");
    let ours: Vec<&Project> = listed.iter().filter(|p| *p == &a || *p == &b).collect();
    assert_eq!(
        ours,
        vec![&a, &b],
        "both projects listed, by name, once each"
    );

    let mut changed = a.clone();
    changed.port = Some(9000);
    changed.stages.remove("prod");
    store.put_project(&changed).await.expect("replace project");
    assert_eq!(
        store.get_project(&a.name).await.expect("get replaced"),
        Some(changed)
    );
    let listed = store.list_projects().await.expect("list after replace");
    assert_eq!(
        listed.iter().filter(|p| p.name == a.name).count(),
        1,
        "replaced, not added"
    );

    store.delete_project(&a.name).await.expect("delete project");
    assert_eq!(store.get_project(&a.name).await.expect("get deleted"), None);
    store
        .delete_project(&a.name)
        .await
        .expect("deleting a missing project succeeds");
    let listed = store.list_projects().await.expect("list after delete");
    assert!(!listed.iter().any(|p| p.name == a.name));
    assert!(listed.iter().any(|p| p.name == b.name));
    store
        .delete_project(&b.name)
        .await
        .expect("delete project b");
}

/// Instances: put/get round trip, replace by id, delete (twice).
pub async fn instances(store: &dyn Store) {
    let project = unique_name("inst");
    let instance = sample_instance(&project, "dev", Utc::now());
    store.put_instance(&instance).await.expect("put instance");
    assert_eq!(
        store
            .get_instance(&instance.id)
            .await
            .expect("get instance"),
        Some(instance.clone())
    );
    assert_eq!(
        store.get_instance(&new_id()).await.expect("get missing"),
        None
    );

    let mut changed = instance.clone();
    changed.state = InstanceState::Stopped;
    changed.active = true;
    changed.address = None;
    changed.updated_at = instance.updated_at + secs(5);
    store
        .put_instance(&changed)
        .await
        .expect("replace instance");
    assert_eq!(
        store
            .get_instance(&instance.id)
            .await
            .expect("get replaced"),
        Some(changed.clone())
    );
    let listed = store
        .list_instances(&InstanceFilter {
            project: Some(project.clone()),
            stage: None,
        })
        .await
        .expect("list instances");
    assert_eq!(listed, vec![changed], "replaced by id, not added");

    store
        .delete_instance(&instance.id)
        .await
        .expect("delete instance");
    assert_eq!(
        store.get_instance(&instance.id).await.expect("get deleted"),
        None
    );
    store
        .delete_instance(&instance.id)
        .await
        .expect("deleting a missing instance succeeds");
}

/// Instances: filters by project and stage, oldest first.
pub async fn instance_filters_and_order(store: &dyn Store) {
    let project = unique_name("order");
    let other = unique_name("other");
    let t0 = Utc::now();
    // Put out of order; the store must sort.
    let dev_new = sample_instance(&project, "dev", t0 + secs(20));
    let dev_old = sample_instance(&project, "dev", t0);
    let prod = sample_instance(&project, "prod", t0 + secs(10));
    let elsewhere = sample_instance(&other, "dev", t0 + secs(5));
    for i in [&dev_new, &dev_old, &prod, &elsewhere] {
        store.put_instance(i).await.expect("put instance");
    }

    let by_project = store
        .list_instances(&InstanceFilter {
            project: Some(project.clone()),
            stage: None,
        })
        .await
        .expect("list by project");
    assert_eq!(
        by_project,
        vec![dev_old.clone(), prod.clone(), dev_new.clone()]
    );

    let by_stage = store
        .list_instances(&InstanceFilter {
            project: Some(project.clone()),
            stage: Some("dev".into()),
        })
        .await
        .expect("list by project and stage");
    assert_eq!(by_stage, vec![dev_old.clone(), dev_new.clone()]);

    let none = store
        .list_instances(&InstanceFilter {
            project: Some(project.clone()),
            stage: Some("staging".into()),
        })
        .await
        .expect("list empty stage");
    assert!(none.is_empty());

    let all = store
        .list_instances(&InstanceFilter::default())
        .await
        .expect("list all instances");
    assert!(
        all.windows(2).all(|w| w[0].created_at <= w[1].created_at),
        "all instances oldest first"
    );
    let ours: Vec<&str> = all
        .iter()
        .filter(|i| i.project == project || i.project == other)
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(
        ours,
        vec![&*dev_old.id, &*elsewhere.id, &*prod.id, &*dev_new.id]
    );

    for i in [&dev_new, &dev_old, &prod, &elsewhere] {
        store.delete_instance(&i.id).await.expect("delete instance");
    }
}

/// Deployments: put/get round trip (with an error record), replace by id.
pub async fn deployments(store: &dyn Store) {
    let project = unique_name("dep");
    let mut deployment = sample_deployment(&project, "dev", Utc::now());
    deployment.status = DeployStatus::InProgress;
    deployment.finished_at = None;
    store
        .put_deployment(&deployment)
        .await
        .expect("put deployment");
    assert_eq!(
        store
            .get_deployment(&deployment.id)
            .await
            .expect("get deployment"),
        Some(deployment.clone())
    );
    assert_eq!(
        store.get_deployment(&new_id()).await.expect("get missing"),
        None
    );

    let mut failed = deployment.clone();
    failed.status = DeployStatus::Failed;
    failed.log(Step::Health, StepStatus::Failed, "GET /health → 503");
    failed.error = Some(DeployError {
        step: Step::Health,
        kind: ErrorKind::Unhealthy,
        message: "container did not become healthy".into(),
        logs: vec!["starting".into(), "panic: no database".into()],
    });
    failed.finished_at = Some(deployment.started_at + secs(60));
    store
        .put_deployment(&failed)
        .await
        .expect("replace deployment");
    assert_eq!(
        store
            .get_deployment(&deployment.id)
            .await
            .expect("get replaced"),
        Some(failed.clone())
    );
    let listed = store
        .list_deployments(&DeploymentFilter {
            project: Some(project),
            ..DeploymentFilter::default()
        })
        .await
        .expect("list deployments");
    assert_eq!(listed, vec![failed], "replaced by id, not added");
}

/// Deployments: filters by project and stage, newest first, limit.
pub async fn deployment_filters_order_and_limit(store: &dyn Store) {
    let project = unique_name("hist");
    let other = unique_name("other");
    let t0 = Utc::now();
    let d1 = sample_deployment(&project, "dev", t0);
    let d3 = sample_deployment(&project, "dev", t0 + secs(20));
    let p2 = sample_deployment(&project, "prod", t0 + secs(10));
    let elsewhere = sample_deployment(&other, "dev", t0 + secs(30));
    for d in [&d3, &d1, &elsewhere, &p2] {
        store.put_deployment(d).await.expect("put deployment");
    }
    let list = |project: Option<&str>, stage: Option<&str>, limit: Option<usize>| {
        let filter = DeploymentFilter {
            project: project.map(str::to_owned),
            stage: stage.map(str::to_owned),
            limit,
        };
        async move {
            store
                .list_deployments(&filter)
                .await
                .expect("list deployments")
        }
    };

    assert_eq!(
        list(Some(&project), None, None).await,
        vec![d3.clone(), p2.clone(), d1.clone()]
    );
    assert_eq!(
        list(Some(&project), Some("dev"), None).await,
        vec![d3.clone(), d1.clone()]
    );
    assert_eq!(
        list(Some(&project), Some("prod"), None).await,
        vec![p2.clone()]
    );
    assert_eq!(
        list(Some(&project), None, Some(2)).await,
        vec![d3.clone(), p2.clone()]
    );
    assert_eq!(
        list(Some(&project), Some("dev"), Some(1)).await,
        vec![d3.clone()]
    );
    assert!(list(Some(&project), None, Some(0)).await.is_empty());
    assert!(
        list(Some(&unique_name("none")), None, None)
            .await
            .is_empty()
    );

    let all = list(None, None, None).await;
    assert!(
        all.windows(2).all(|w| w[0].started_at >= w[1].started_at),
        "all deployments newest first"
    );
    let ours: Vec<&str> = all
        .iter()
        .filter(|d| d.project == project || d.project == other)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(ours, vec![&*elsewhere.id, &*d3.id, &*p2.id, &*d1.id]);
    let limited = list(None, None, Some(1)).await;
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0], all[0], "the limit keeps the newest");
}

/// Settings: missing is `None`, put/get, overwrite.
pub async fn settings(store: &dyn Store) {
    let key = unique_name("setting");
    assert_eq!(
        store.get_setting(&key).await.expect("get missing setting"),
        None
    );
    store.put_setting(&key, "one").await.expect("put setting");
    assert_eq!(
        store
            .get_setting(&key)
            .await
            .expect("get setting")
            .as_deref(),
        Some("one")
    );
    store
        .put_setting(&key, "two")
        .await
        .expect("overwrite setting");
    assert_eq!(
        store
            .get_setting(&key)
            .await
            .expect("get overwritten")
            .as_deref(),
        Some("two")
    );
    store
        .put_setting(&key, "")
        .await
        .expect("put empty setting");
    assert_eq!(
        store.get_setting(&key).await.expect("get empty").as_deref(),
        Some("")
    );
}

/// Credentials: round trip, overwrite, names only in the listing, delete (twice).
pub async fn credentials(store: &dyn Store) {
    let b = unique_name("cred-b");
    let a = unique_name("cred-a");
    let secret_a = format!("s3cret-{}", new_id());
    let secret_b = format!("p@ss word ✓ {}", new_id());
    store
        .put_credential(&b, &SecretString::from(secret_b.clone()))
        .await
        .expect("put credential b");
    store
        .put_credential(&a, &SecretString::from(secret_a.clone()))
        .await
        .expect("put credential a");
    let got = store.get_credential(&a).await.expect("get credential");
    assert_eq!(
        got.as_ref().map(|s| s.expose_secret()),
        Some(secret_a.as_str())
    );
    let got = store.get_credential(&b).await.expect("get credential b");
    assert_eq!(
        got.as_ref().map(|s| s.expose_secret()),
        Some(secret_b.as_str())
    );
    assert!(
        store
            .get_credential(&unique_name("none"))
            .await
            .expect("get missing")
            .is_none()
    );

    let names = store.list_credentials().await.expect("list credentials");
    assert!(names.is_sorted(), "credential names are sorted: {names:?}");
    let ours: Vec<&String> = names.iter().filter(|n| **n == a || **n == b).collect();
    assert_eq!(ours, vec![&a, &b]);
    assert!(
        !names
            .iter()
            .any(|n| n.contains(&secret_a) || n.contains(&secret_b)),
        "the listing holds names, never values"
    );

    let replaced = format!("rotated-{}", new_id());
    store
        .put_credential(&a, &SecretString::from(replaced.clone()))
        .await
        .expect("overwrite credential");
    let got = store.get_credential(&a).await.expect("get overwritten");
    assert_eq!(
        got.as_ref().map(|s| s.expose_secret()),
        Some(replaced.as_str())
    );
    let names = store
        .list_credentials()
        .await
        .expect("list after overwrite");
    assert_eq!(
        names.iter().filter(|n| **n == a).count(),
        1,
        "replaced, not added"
    );

    store
        .delete_credential(&a)
        .await
        .expect("delete credential");
    assert!(
        store
            .get_credential(&a)
            .await
            .expect("get deleted")
            .is_none()
    );
    store
        .delete_credential(&a)
        .await
        .expect("deleting a missing credential succeeds");
    let names = store.list_credentials().await.expect("list after delete");
    assert!(!names.contains(&a));
    assert!(names.contains(&b));
    store
        .delete_credential(&b)
        .await
        .expect("delete credential b");
}

/// Credential values never show in the store's `Debug` output (plain or pretty).
pub async fn credentials_hidden_from_debug<S: Store + Debug>(store: &S) {
    let name = unique_name("debug");
    let secret = format!("never-print-{}", new_id());
    store
        .put_credential(&name, &SecretString::from(secret.clone()))
        .await
        .expect("put credential");
    let got = store.get_credential(&name).await.expect("get credential");
    assert!(got.is_some());
    for shown in [
        format!("{store:?}"),
        format!("{store:#?}"),
        format!("{got:?}"),
    ] {
        assert!(
            !shown.contains(&secret),
            "a secret leaked into Debug output: {shown}"
        );
    }
    store
        .delete_credential(&name)
        .await
        .expect("delete credential");
}

/// Seen tags: insert, update of the digest (keeping when it was first seen), per repository.
pub async fn seen_tags(store: &dyn Store) {
    let repo = format!("localhost:5000/{}", unique_name("repo"));
    let other = format!("localhost:5000/{}", unique_name("repo"));
    let t0 = Utc::now();
    let seen = |repository: &str, tag: &str, digest: Option<&str>, at: Timestamp| SeenTag {
        repository: repository.into(),
        tag: tag.into(),
        digest: digest.map(str::to_owned),
        first_seen: at,
        updated_at: at,
    };
    assert!(
        store
            .list_seen_tags(&repo)
            .await
            .expect("list empty")
            .is_empty()
    );

    let v1 = seen(&repo, "v1", Some("sha256:aaa"), t0);
    let v2 = seen(&repo, "v2", None, t0 + secs(1));
    let elsewhere = seen(&other, "v1", Some("sha256:zzz"), t0);
    for s in [&v1, &v2, &elsewhere] {
        store.put_seen_tag(s).await.expect("put seen tag");
    }
    let mut listed = store.list_seen_tags(&repo).await.expect("list seen tags");
    listed.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(listed, vec![v1.clone(), v2.clone()]);

    // The tag moved: same tag, new digest, seen again later.
    let moved = seen(&repo, "v1", Some("sha256:bbb"), t0 + secs(60));
    store.put_seen_tag(&moved).await.expect("update seen tag");
    let mut listed = store
        .list_seen_tags(&repo)
        .await
        .expect("list after update");
    listed.sort_by(|a, b| a.tag.cmp(&b.tag));
    let expected_v1 = SeenTag {
        first_seen: t0,
        ..moved
    };
    assert_eq!(
        listed,
        vec![expected_v1, v2],
        "updated in place, first_seen kept"
    );
    assert_eq!(
        store.list_seen_tags(&other).await.expect("list other"),
        vec![elsewhere]
    );
}

/// Leases: a second holder is refused, the holder renews, release hands it over, only the
/// holder can release, keys are independent.
pub async fn leases(store: &dyn Store) {
    let key = unique_name("lease");
    let (a, b) = (unique_name("holder-a"), unique_name("holder-b"));
    let ttl = Duration::from_secs(60);
    assert!(
        store.try_lock(&key, &a, ttl).await.expect("lock a"),
        "a free lease is taken"
    );
    assert!(
        !store.try_lock(&key, &b, ttl).await.expect("lock b"),
        "a held lease is refused"
    );
    assert!(
        store.try_lock(&key, &a, ttl).await.expect("renew a"),
        "the holder renews"
    );

    let other_key = unique_name("lease");
    assert!(
        store
            .try_lock(&other_key, &b, ttl)
            .await
            .expect("other key"),
        "keys are independent"
    );

    store
        .unlock(&key, &b)
        .await
        .expect("unlock by a non-holder is a no-op");
    assert!(
        !store.try_lock(&key, &b, ttl).await.expect("lock b again"),
        "still a's"
    );

    store.unlock(&key, &a).await.expect("unlock a");
    assert!(
        store
            .try_lock(&key, &b, ttl)
            .await
            .expect("lock b after release"),
        "released"
    );
    assert!(
        !store.try_lock(&key, &a, ttl).await.expect("lock a again"),
        "now b's"
    );

    store.unlock(&key, &b).await.expect("unlock b");
    store
        .unlock(&key, &b)
        .await
        .expect("unlocking a free lease succeeds");
    store
        .unlock(&other_key, &b)
        .await
        .expect("unlock other key");
}

/// Leases: renewing extends the lease from the renewal, not from the first take.
pub async fn lease_renewal(store: &dyn Store) {
    let key = unique_name("lease");
    let (a, b) = (unique_name("holder-a"), unique_name("holder-b"));
    assert!(
        store
            .try_lock(&key, &a, Duration::from_millis(50))
            .await
            .expect("lock a")
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store
            .try_lock(&key, &a, Duration::from_secs(60))
            .await
            .expect("renew a")
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        !store
            .try_lock(&key, &b, Duration::from_secs(60))
            .await
            .expect("lock b"),
        "the renewal's ttl counts"
    );
    store.unlock(&key, &a).await.expect("unlock a");
}

/// Leases: after `ttl` without renewal another holder takes the lease (a killed process never
/// holds a stage forever), and the old holder is then refused.
pub async fn lease_expiry(store: &dyn Store) {
    let key = unique_name("lease");
    let (a, b) = (unique_name("holder-a"), unique_name("holder-b"));
    let long = Duration::from_secs(60);
    assert!(
        store
            .try_lock(&key, &a, Duration::from_millis(50))
            .await
            .expect("lock a")
    );
    assert!(!store.try_lock(&key, &b, long).await.expect("lock b early"));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        store.try_lock(&key, &b, long).await.expect("lock b late"),
        "an expired lease is free"
    );
    assert!(
        !store.try_lock(&key, &a, long).await.expect("lock a late"),
        "the old holder lost it"
    );
    store
        .unlock(&key, &a)
        .await
        .expect("unlock by the old holder is a no-op");
    assert!(!store.try_lock(&key, &a, long).await.expect("lock a again"));
    store.unlock(&key, &b).await.expect("unlock b");
}
