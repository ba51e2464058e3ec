//! `GET /metrics`: Prometheus text, from an explicit registry (no process-global state).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use skipper_core::{Activity, DeployStatus, Deployment};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    method: String,
    route: String,
    status: u16,
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    deploys: Family<Outcome, Counter>,
    deploy_seconds: Histogram,
    step_seconds: Family<StepLabel, Histogram>,
    webhooks: Family<Outcome, Counter>,
    polls: Counter,
    poll_errors: Counter,
    reconciles: Family<Outcome, Counter>,
    requests: Family<RequestLabel, Counter>,
}

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut r = Registry::with_prefix("skipper");
        let deploys = Family::<Outcome, Counter>::default();
        r.register("deploys", "Deploys by outcome", deploys.clone());
        let deploy_seconds = seconds_buckets();
        r.register(
            "deploy_duration_seconds",
            "Time from a deploy's start to its end",
            deploy_seconds.clone(),
        );
        let step_seconds = Family::<StepLabel, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        r.register(
            "deploy_step_duration_seconds",
            "Time each deploy step took",
            step_seconds.clone(),
        );
        let webhooks = Family::<Outcome, Counter>::default();
        r.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome",
            webhooks.clone(),
        );
        let polls = Counter::default();
        r.register("watcher_polls", "Registry polling rounds", polls.clone());
        let poll_errors = Counter::default();
        r.register(
            "watcher_errors",
            "Registry polling errors",
            poll_errors.clone(),
        );
        let reconciles = Family::<Outcome, Counter>::default();
        r.register(
            "reconciles",
            "Periodic reconcile passes by outcome",
            reconciles.clone(),
        );
        let requests = Family::<RequestLabel, Counter>::default();
        r.register(
            "api_requests",
            "API requests by route and status",
            requests.clone(),
        );
        Self {
            registry: Mutex::new(r),
            deploys,
            deploy_seconds,
            step_seconds,
            webhooks,
            polls,
            poll_errors,
            reconciles,
            requests,
        }
    }

    /// Count what the engine did.
    pub(crate) fn activity(&self, a: &Activity) {
        if let Activity::Finished(d) = a {
            self.finished(d);
        }
    }

    fn finished(&self, d: &Deployment) {
        let outcome = match d.status {
            DeployStatus::Succeeded => "succeeded",
            DeployStatus::Failed => "failed",
            _ => "other",
        };
        self.deploys
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
        if let Some(end) = d.finished_at {
            let secs = (end - d.started_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.deploy_seconds.observe(secs);
        }
        let mut last = d.started_at;
        for r in &d.steps {
            let secs = (r.at - last).num_milliseconds().max(0) as f64 / 1000.0;
            self.step_seconds
                .get_or_create(&StepLabel {
                    step: r.step.to_string(),
                })
                .observe(secs);
            last = r.at;
        }
    }

    pub(crate) fn webhook(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.webhooks
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(crate) fn poll(&self, errors: usize) {
        self.polls.inc();
        self.poll_errors.inc_by(errors as u64);
    }

    pub(crate) fn reconcile(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reconciles
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(crate) fn request(&self, method: &str, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabel {
                method: method.into(),
                route: route.into(),
                status,
            })
            .inc();
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}
