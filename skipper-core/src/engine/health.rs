//! The health gate.

use tokio::time::Instant;

use super::{Engine, Guard, timed};
use crate::backend::{ContainerInfo, HealthStatus, RunState};
use crate::error::{Error, Result};
use crate::model::HealthCheck;

/// The first wait between probes; each later wait doubles, up to the health check's interval.
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// How a container's health is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate<'a> {
    /// HTTP GET of a path on the app port.
    Http { port: u16, path: &'a str },
    /// The image's own Docker HEALTHCHECK.
    Docker,
    /// Still running after the settle period.
    Settle,
}

impl Gate<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Gate::Http { port, path } => format!("HTTP GET {path} on port {port}"),
            Gate::Docker => "the image's Docker HEALTHCHECK".into(),
            Gate::Settle => "the container staying up".into(),
        }
    }
}

impl Engine {
    /// Wait until the container is healthy, or fail with what was probed and what came back,
    /// plus the container's last log lines. A container that exits fails at once.
    pub(crate) async fn wait_healthy(
        &self,
        rt: &std::sync::Arc<dyn crate::backend::Runtime>,
        container: &str,
        container_id: &str,
        health: &HealthCheck,
        gate: Gate<'_>,
        guard: &Guard,
    ) -> Result<ContainerInfo> {
        let call = self.inner.settings.timeouts.call;
        let started = Instant::now();
        let deadline = started + health.deadline;
        let mut last: String;
        // Probe at once, then back off toward the interval: an app that listens a moment after
        // its start is seen then, not a whole interval later.
        let mut wait = FIRST_RETRY.min(health.interval);
        loop {
            guard.check()?;
            let info = timed(
                || format!("inspect of {container}"),
                call,
                rt.inspect_container(container_id),
            )
            .await?;
            match info.state {
                RunState::Exited | RunState::Dead => {
                    let code = info.exit_code.map_or("unknown".into(), |c| c.to_string());
                    return Err(self
                        .unhealthy(
                            container,
                            container_id,
                            format!("the container exited with code {code}"),
                        )
                        .await);
                }
                RunState::Restarting => {
                    let code = info
                        .exit_code
                        .map_or(String::new(), |c| format!(" (it exited with code {c})"));
                    return Err(self
                        .unhealthy(
                            container,
                            container_id,
                            format!("the container crashed and is restarting{code}"),
                        )
                        .await);
                }
                RunState::Created | RunState::Paused => {
                    last = format!("container is {:?}", info.state)
                }
                RunState::Running => match gate {
                    Gate::Http { port, path } => {
                        let probe = rt.probe_http(&info, port, path, health.timeout);
                        match tokio::time::timeout(health.timeout, probe).await {
                            Ok(Ok(p)) if p.is_healthy() => return Ok(info),
                            Ok(Ok(p)) => last = p.detail,
                            Ok(Err(e)) => last = e.to_string(),
                            Err(_) => {
                                last = format!(
                                    "GET {path} got no answer within {}",
                                    humantime::format_duration(health.timeout)
                                )
                            }
                        }
                    }
                    Gate::Docker => match info.health {
                        HealthStatus::Healthy => return Ok(info),
                        HealthStatus::Unhealthy => {
                            return Err(self
                                .unhealthy(
                                    container,
                                    container_id,
                                    "the image's Docker HEALTHCHECK reports unhealthy".into(),
                                )
                                .await);
                        }
                        other => last = format!("Docker health status is {other:?}"),
                    },
                    Gate::Settle => {
                        if started.elapsed() >= health.settle {
                            return Ok(info);
                        }
                        last = "still settling".into();
                    }
                },
            }
            if Instant::now() + wait > deadline {
                let reason = format!(
                    "not healthy within {} by {}; last result: {last}",
                    humantime::format_duration(health.deadline),
                    gate.describe()
                );
                return Err(self.unhealthy(container, container_id, reason).await);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                e = guard.stopped() => return Err(e),
            }
            wait = (wait * 2).min(health.interval);
        }
    }

    async fn unhealthy(&self, container: &str, container_id: &str, reason: String) -> Error {
        let logs = timed(
            || "log tail".into(),
            self.inner.settings.timeouts.call,
            self.inner
                .runtime
                .logs(container_id, self.inner.settings.log_lines),
        )
        .await
        .unwrap_or_else(|e| vec![format!("(logs unavailable: {e})")]);
        Error::Unhealthy {
            container: container.to_owned(),
            reason,
            logs,
        }
    }
}
