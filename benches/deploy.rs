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

criterion_group!(benches, deploy);
criterion_main!(benches);
