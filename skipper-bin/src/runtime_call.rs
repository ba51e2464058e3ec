//! A `Runtime` call as a work order: what the server's `RemoteRuntime` sends and `skippy`
//! runs against its own Docker engine. Both binaries compile this file in.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skipper_core::{ContainerInfo, ContainerSpec, Error, ErrorKind, ImageRef, Runtime};

/// One call of the `Runtime` trait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub(crate) enum RuntimeCall {
    EnsureNetwork {
        network: String,
    },
    /// Pulled with the agent host's own Docker credentials (none travel in orders).
    Pull {
        image: String,
    },
    HasImage {
        image: String,
    },
    InspectImage {
        image: String,
    },
    CreateContainer {
        spec: Box<ContainerSpec>,
    },
    StartContainer {
        id: String,
    },
    StopContainer {
        id: String,
        grace_ms: u64,
    },
    RestartContainer {
        id: String,
        grace_ms: u64,
    },
    RemoveContainer {
        id: String,
    },
    InspectContainer {
        id: String,
    },
    ListContainers {
        selector: BTreeMap<String, String>,
    },
    ProbeHttp {
        container: Box<ContainerInfo>,
        port: u16,
        path: String,
        timeout_ms: u64,
    },
    Logs {
        id: String,
        lines: usize,
    },
}

fn image(s: &str) -> skipper_core::Result<ImageRef> {
    ImageRef::parse(s)
}

/// Run `call` against `rt`: the order's answer, `{"ok": true, "value": …}` or
/// `{"ok": false, "result": {"kind", "message"}}`.
#[cfg_attr(
    not(test),
    allow(dead_code, reason = "the agent's half: the server only sends calls")
)]
pub(crate) async fn run(rt: &dyn Runtime, call: RuntimeCall) -> Value {
    let ms = Duration::from_millis;
    let r: skipper_core::Result<Value> = async {
        Ok(match call {
            RuntimeCall::EnsureNetwork { network } => {
                rt.ensure_network(&network).await?;
                Value::Null
            }
            RuntimeCall::Pull { image: i } => json!(rt.pull(&image(&i)?, None, None).await?),
            RuntimeCall::HasImage { image: i } => json!(rt.has_image(&image(&i)?).await?),
            RuntimeCall::InspectImage { image: i } => json!(rt.inspect_image(&image(&i)?).await?),
            RuntimeCall::CreateContainer { spec } => json!(rt.create_container(&spec).await?),
            RuntimeCall::StartContainer { id } => {
                rt.start_container(&id).await?;
                Value::Null
            }
            RuntimeCall::StopContainer { id, grace_ms } => {
                rt.stop_container(&id, ms(grace_ms)).await?;
                Value::Null
            }
            RuntimeCall::RestartContainer { id, grace_ms } => {
                rt.restart_container(&id, ms(grace_ms)).await?;
                Value::Null
            }
            RuntimeCall::RemoveContainer { id } => {
                rt.remove_container(&id).await?;
                Value::Null
            }
            RuntimeCall::InspectContainer { id } => json!(rt.inspect_container(&id).await?),
            RuntimeCall::ListContainers { selector } => json!(rt.list_containers(&selector).await?),
            RuntimeCall::ProbeHttp {
                container,
                port,
                path,
                timeout_ms,
            } => {
                json!(
                    rt.probe_http(&container, port, &path, ms(timeout_ms))
                        .await?
                )
            }
            RuntimeCall::Logs { id, lines } => json!(rt.logs(&id, lines).await?),
        })
    }
    .await;
    match r {
        Ok(value) => json!({ "ok": true, "result": { "value": value } }),
        Err(e) => {
            json!({ "ok": false, "result": { "kind": e.kind().as_str(), "message": e.chain() } })
        }
    }
}

/// The error an agent reported, as the engine's.
#[allow(
    dead_code,
    reason = "the server's half (RemoteRuntime); skippy only reports errors"
)]
pub(crate) fn error_of(result: &Value) -> Error {
    let kind = match result["kind"].as_str().unwrap_or("internal") {
        "invalid" => ErrorKind::Invalid,
        "not_found" => ErrorKind::NotFound,
        "conflict" => ErrorKind::Conflict,
        "unauthorized" => ErrorKind::Unauthorized,
        "rate_limited" => ErrorKind::RateLimited,
        "transient" => ErrorKind::Transient,
        "timeout" => ErrorKind::Timeout,
        "unhealthy" => ErrorKind::Unhealthy,
        "rejected" => ErrorKind::Rejected,
        _ => ErrorKind::Internal,
    };
    Error::backend(
        "agent",
        kind,
        result["message"]
            .as_str()
            .unwrap_or("the agent reported a failure")
            .to_owned(),
    )
}
