//! `RemoteRuntime`: the `Runtime` of a node, each call forwarded to its `skippy` as a work
//! order (priority `high`) and answered through the signed channel. The engine drives a remote
//! host as it drives the local one: its own time limits bound every call, and a call it gives
//! up on is cancelled so it never runs late. [`AgentNodes`] hands the engine one for each
//! registered node (a project or stage with `node:` runs there).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skipper_core::{
    ContainerInfo, ContainerSpec, Credentials, Error, ErrorKind, ImageMetadata, ImageRef,
    NodeRuntimes, ProbeResult, ProgressSender, PulledImage, Result, Runtime,
};

use super::nodes::Nodes;
use crate::runtime_call::{RuntimeCall, error_of};

/// The server's nodes as the engine sees them ([`NodeRuntimes`]): each registered node's
/// runtime forwards to its agent; a node is reachable while its heartbeats arrive.
pub(crate) struct AgentNodes(pub(crate) Arc<Nodes>);

impl NodeRuntimes for AgentNodes {
    fn runtime(&self, node: &str) -> Option<Arc<dyn Runtime>> {
        self.0
            .get(node)
            .ok()
            .map(|_| Arc::new(RemoteRuntime::new(self.0.clone(), node)) as Arc<dyn Runtime>)
    }

    fn is_reachable(&self, node: &str) -> bool {
        self.0.get(node).is_ok_and(|n| n.status == "online")
    }

    fn nodes(&self) -> Vec<String> {
        self.0
            .list()
            .map(|l| l.into_iter().map(|n| n.id).collect())
            .unwrap_or_default()
    }
}

/// A node's runtime.
pub(crate) struct RemoteRuntime {
    nodes: Arc<Nodes>,
    node: String,
}

impl RemoteRuntime {
    pub(crate) fn new(nodes: Arc<Nodes>, node: impl Into<String>) -> Self {
        Self {
            nodes,
            node: node.into(),
        }
    }

    /// The order's own deadline: past it the server expires it (a pull may take long).
    fn deadline(call: &RuntimeCall) -> Duration {
        match call {
            RuntimeCall::Pull { .. } => Duration::from_secs(30 * 60),
            _ => Duration::from_secs(10 * 60),
        }
    }

    async fn call<T: DeserializeOwned>(&self, call: RuntimeCall) -> Result<T> {
        let what = format!("{call:?}")
            .split([' ', '{'])
            .next()
            .unwrap_or("call")
            .to_owned();
        let payload = serde_json::to_value(&call)
            .map_err(|e| Error::backend("agent", ErrorKind::Internal, e.to_string()))?;
        let order = self
            .nodes
            .enqueue(
                &self.node,
                "runtime",
                &payload,
                "high",
                Self::deadline(&call),
            )
            .map_err(Error::from)?;
        // Cancelled if this future is dropped (the engine's time limit): it never runs late.
        let mut guard = Cancel {
            nodes: self.nodes.clone(),
            id: Some(order.id.clone()),
        };
        let done = self
            .nodes
            .wait_done(&order.id, Self::deadline(&call))
            .await
            .map_err(Error::from)?;
        guard.id = None;
        let Some(done) = done else {
            return Err(Error::Timeout {
                what: format!("node {} answering {what}", self.node),
                after: Self::deadline(&call),
            });
        };
        match done.status.as_str() {
            "succeeded" => {
                let v = done.result.unwrap_or(Value::Null)["value"].clone();
                serde_json::from_value(v).map_err(|e| {
                    Error::backend(
                        "agent",
                        ErrorKind::Internal,
                        format!("node {}'s answer to {what}: {e}", self.node),
                    )
                })
            }
            "failed" => Err(error_of(&done.result.unwrap_or(Value::Null))),
            other => Err(Error::backend(
                "agent",
                ErrorKind::Transient,
                format!(
                    "node {}'s order for {what} ended {other} (is the node online?)",
                    self.node
                ),
            )),
        }
    }
}

struct Cancel {
    nodes: Arc<Nodes>,
    id: Option<String>,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.nodes.cancel(&id);
        }
    }
}

#[async_trait]
impl Runtime for RemoteRuntime {
    async fn ensure_network(&self, network: &str) -> Result<()> {
        self.call::<Value>(RuntimeCall::EnsureNetwork {
            network: network.into(),
        })
        .await
        .map(|_| ())
    }

    async fn pull(
        &self,
        image: &ImageRef,
        _credentials: Option<Credentials>,
        _progress: Option<ProgressSender>,
    ) -> Result<PulledImage> {
        // Credentials never travel in orders: the agent's host pulls with its own Docker login.
        self.call(RuntimeCall::Pull {
            image: image.to_string(),
        })
        .await
    }

    async fn has_image(&self, image: &ImageRef) -> Result<bool> {
        self.call(RuntimeCall::HasImage {
            image: image.to_string(),
        })
        .await
    }

    async fn inspect_image(&self, image: &ImageRef) -> Result<ImageMetadata> {
        self.call(RuntimeCall::InspectImage {
            image: image.to_string(),
        })
        .await
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        self.call(RuntimeCall::CreateContainer {
            spec: Box::new(spec.clone()),
        })
        .await
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.call::<Value>(RuntimeCall::StartContainer { id: id.into() })
            .await
            .map(|_| ())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        self.call::<Value>(RuntimeCall::StopContainer {
            id: id.into(),
            grace_ms: grace.as_millis() as u64,
        })
        .await
        .map(|_| ())
    }

    async fn restart_container(&self, id: &str, grace: Duration) -> Result<()> {
        self.call::<Value>(RuntimeCall::RestartContainer {
            id: id.into(),
            grace_ms: grace.as_millis() as u64,
        })
        .await
        .map(|_| ())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.call::<Value>(RuntimeCall::RemoveContainer { id: id.into() })
            .await
            .map(|_| ())
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo> {
        self.call(RuntimeCall::InspectContainer { id: id.into() })
            .await
    }

    async fn list_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>> {
        self.call(RuntimeCall::ListContainers {
            selector: selector.clone(),
        })
        .await
    }

    async fn probe_http(
        &self,
        container: &ContainerInfo,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<ProbeResult> {
        // The probe runs on the agent's host, where the container is.
        self.call(RuntimeCall::ProbeHttp {
            container: Box::new(container.clone()),
            port,
            path: path.into(),
            timeout_ms: timeout.as_millis() as u64,
        })
        .await
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<Vec<String>> {
        self.call(RuntimeCall::Logs {
            id: id.into(),
            lines,
        })
        .await
    }
}

/// A simulated agent (omicron's sled-agent-sim): takes the node's orders from `Nodes` in
/// process and runs them on `rt`, as `skippy` does on Docker.
#[cfg(test)]
pub(crate) async fn simulated_agent(
    nodes: Arc<Nodes>,
    node: String,
    rt: Arc<dyn Runtime>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let Ok(Some(order)) = nodes
            .next(
                &node,
                Duration::from_secs(60),
                Duration::from_secs(1),
                &stop,
            )
            .await
        else {
            continue;
        };
        let answer = match serde_json::from_value::<RuntimeCall>(order.payload.clone()) {
            Ok(call) => crate::runtime_call::run(rt.as_ref(), call).await,
            Err(e) => {
                serde_json::json!({ "ok": false, "result": { "kind": "invalid", "message": e.to_string() } })
            }
        };
        let ok = answer["ok"].as_bool().unwrap_or(false);
        let _ = nodes.finish(&node, &order.id, ok, &answer["result"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skipper_core::store::MemoryStore;
    use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime};
    use skipper_core::{DeployRequest, DeployStatus, Engine, Project, Stage};

    const REPO: &str = "localhost:5000/team/web";

    /// The engine deploys to a node through its agent exactly as it deploys locally: blue-green,
    /// health gate, rollback of an unhealthy version; the containers are on the node's runtime.
    #[tokio::test]
    async fn the_engine_deploys_to_a_node_through_its_agent() {
        let nodes = Arc::new(Nodes::in_memory(Duration::from_secs(5)));
        nodes.register("host-1", "worker", None, None).unwrap();
        let host = Arc::new(FakeRuntime::new());
        for tag in ["v1", "v2"] {
            host.add_image(&format!("{REPO}:{tag}"), Behavior::Healthy);
        }
        host.add_image(&format!("{REPO}:sick"), Behavior::Unhealthy);
        let stop = tokio_util::sync::CancellationToken::new();
        let agent = tokio::spawn(simulated_agent(
            nodes.clone(),
            "host-1".into(),
            host.clone(),
            stop.clone(),
        ));
        let settings = skipper_core::EngineSettings::default();
        // The server's own host has nothing; the project names the node.
        let here = Arc::new(FakeRuntime::new());
        let engine = Engine::builder(here.clone(), Arc::new(MemoryStore::new()))
            .proxy(Arc::new(FakeProxy::new()))
            .nodes(Arc::new(AgentNodes(nodes.clone())))
            .settings(settings)
            .build();
        nodes.heartbeat("host-1").unwrap();
        let mut p = Project::new("web", REPO).unwrap();
        p.node = Some("host-1".into());
        p.port = Some(8080);
        p.health.path = Some("/health".into());
        p.health.deadline = Duration::from_secs(3);
        p.health.interval = Duration::from_millis(50);
        engine
            .put_project(&p.with_stage(Stage::new("dev")))
            .await
            .unwrap();
        let image = |t: &str| ImageRef::parse(&format!("{REPO}:{t}")).unwrap();
        let d1 = engine
            .deploy(DeployRequest::new("web", "dev", image("v1")))
            .await
            .unwrap();
        assert_eq!(d1.status, DeployStatus::Succeeded, "{:?}", d1.error);
        let d2 = engine
            .deploy(DeployRequest::new("web", "dev", image("v2")))
            .await
            .unwrap();
        assert_eq!(d2.status, DeployStatus::Succeeded, "{:?}", d2.error);
        assert_eq!(host.running().len(), 1, "v1 retired on the node");
        let sick = engine
            .deploy(DeployRequest::new("web", "dev", image("sick")))
            .await
            .unwrap();
        assert_eq!(sick.status, DeployStatus::Failed);
        assert_eq!(
            host.running().len(),
            1,
            "v2 keeps serving; the unhealthy one is gone"
        );
        let report = engine.reconcile().await.unwrap();
        assert!(
            report.is_clean() && report.unreachable.is_empty(),
            "{report:?}"
        );
        assert!(
            here.containers().is_empty(),
            "nothing ran on the server's host"
        );
        let ps = engine
            .observe(&skipper_core::InstanceFilter::default())
            .await
            .unwrap();
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert_eq!(ps[0].state, skipper_core::InstanceState::Running);
        let orders = nodes.orders(Some("host-1"), 1000).unwrap();
        assert!(
            orders
                .iter()
                .all(|o| o.status == "succeeded" || o.status == "failed"),
            "nothing left waiting"
        );
        stop.cancel();
        let _ = agent.await;
    }

    /// A node with no agent: the call waits, then the engine's own time limit ends it and the
    /// order is cancelled, never run late.
    #[tokio::test(start_paused = true)]
    async fn a_call_to_an_offline_node_is_bounded_and_cancelled() {
        let nodes = Arc::new(Nodes::in_memory(Duration::from_secs(5)));
        nodes.register("gone", "worker", None, None).unwrap();
        let rt = RemoteRuntime::new(nodes.clone(), "gone");
        let r = tokio::time::timeout(Duration::from_secs(2), rt.ensure_network("net")).await;
        assert!(r.is_err(), "still waiting when the caller gives up");
        let orders = nodes.orders(Some("gone"), 10).unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].status, "cancelled");
    }
}
