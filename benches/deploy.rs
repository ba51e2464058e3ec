//! A full deploy against the in-memory fakes: the engine's own overhead per deploy.
//!
//! Run with: `cargo bench --bench deploy`
//!
//! Every iteration is a complete blue-green replace on one stage: validate, reconcile the stage,
//! pull, create, start, health probe (healthy at the first probe, so no sleeps), route the
//! instance domain, switch the stage domain, retire the old instance, record, notify.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use skipper_core::store::MemoryStore;
use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime, RecordingNotifier};
use skipper_core::{DeployRequest, DeployStatus, Engine, ImageRef, Project, Stage};

const REPO: &str = "localhost:5000/team/web";

async fn engine() -> Engine {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(&format!("{REPO}:v1"), Behavior::Healthy);
    rt.add_image(&format!("{REPO}:v2"), Behavior::Healthy);
    let engine = Engine::builder(rt, Arc::new(MemoryStore::new()))
        .proxy(Arc::new(FakeProxy::new()))
        .notifier(Arc::new(RecordingNotifier::new()))
        .build();
    let mut p = Project::new("web", REPO).expect("project");
    p.port = Some(8080);
    p.health.path = Some("/health".into());
    engine
        .put_project(&p.with_stage(Stage::new("dev")))
        .await
        .expect("put project");
    engine
}

fn deploy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let images = [
        ImageRef::parse(&format!("{REPO}:v1")).expect("ref"),
        ImageRef::parse(&format!("{REPO}:v2")).expect("ref"),
    ];
    c.bench_function("deploy/blue_green_replace", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                let mut e = engine().await;
                for i in 0..iters {
                    // A fresh engine every 200 deploys keeps the in-memory history small, so
                    // the figure is per-deploy work, not history growth. Setup is not timed.
                    if i % 200 == 0 && i > 0 {
                        e = engine().await;
                    }
                    let image = images[(i % 2) as usize].clone();
                    let start = Instant::now();
                    let d = e
                        .deploy(DeployRequest::new("web", "dev", image))
                        .await
                        .expect("deploy");
                    total += start.elapsed();
                    assert_eq!(d.status, DeployStatus::Succeeded);
                    black_box(d);
                }
                total
            })
        })
    });
}

/// One reconcile pass over 1,000 instances in 300 stages (100 projects × 3 stages, 3 or 4
/// instances each), all healthy and routed: what the server's periodic reconcile costs when
/// there is nothing to repair.
fn reconcile(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let engine = rt.block_on(async {
        let runtime = Arc::new(FakeRuntime::new());
        for t in 0..4 {
            runtime.add_image(&format!("{REPO}:v{t}"), Behavior::Healthy);
        }
        let e = Engine::builder(runtime, Arc::new(MemoryStore::new()))
            .proxy(Arc::new(FakeProxy::new()))
            .build();
        let mut n = 0;
        for p in 0..100 {
            let mut project = Project::new(format!("p{p}"), REPO).expect("project");
            project.port = Some(8080);
            project.health.path = Some("/health".into());
            for s in ["dev", "rel", "prod"] {
                let mut stage = Stage::new(s);
                stage.max_instances = 4;
                project = project.with_stage(stage);
            }
            e.put_project(&project).await.expect("put project");
            for s in ["dev", "rel", "prod"] {
                let count = if n + 4 <= 1000 && (p * 3) % 3 == 0 && s == "dev" {
                    4
                } else {
                    3
                };
                for t in 0..count {
                    if n == 1000 {
                        break;
                    }
                    let image = ImageRef::parse(&format!("{REPO}:v{t}")).expect("ref");
                    let d = e
                        .deploy(DeployRequest::new(format!("p{p}"), s, image))
                        .await
                        .expect("deploy");
                    assert_eq!(d.status, DeployStatus::Succeeded);
                    n += 1;
                }
            }
        }
        let all = e
            .instances(&skipper_core::InstanceFilter::default())
            .await
            .expect("instances");
        assert_eq!(all.len(), 1000, "1,000 instances");
        e
    });
    c.bench_function("reconcile/1000_instances_300_stages", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = engine.reconcile().await.expect("reconcile");
                assert!(r.is_clean(), "{r:?}");
                black_box(r)
            })
        })
    });
}

criterion_group!(benches, deploy, reconcile);
criterion_main!(benches);
