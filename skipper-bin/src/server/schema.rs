//! OpenAPI schemas of the documents that handlers read as JSON values and validate with
//! `Config::parse_project` (the code that reads `skipper.yaml`, so its errors name the field).
//! These types only describe the documents; they are never deserialised.

#![allow(
    dead_code,
    reason = "documentation types: read by utoipa's derive, never constructed"
)]

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// A project: the fields of a project in `skipper.yaml`, plus `name`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectDoc {
    /// A DNS label: lower-case letters, digits and `-`.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
    name: String,
    /// The image repository, without a tag (`registry/org/app`).
    #[schema(
        pattern = "^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$",
        max_length = 255
    )]
    image: String,
    /// The name of a `registries:` entry whose credentials pull the image.
    registry: Option<String>,
    /// The app's port (default: the image's EXPOSE).
    #[schema(minimum = 1, maximum = 65535)]
    port: Option<u16>,
    /// A health path (`/health`), or the full health check.
    healthcheck: Option<HealthDoc>,
    /// Environment variables.
    env: Option<BTreeMap<String, String>>,
    /// Volumes, Docker style.
    volumes: Option<Vec<String>>,
    /// Extra container labels.
    labels: Option<BTreeMap<String, String>>,
    /// The Docker network.
    network: Option<String>,
    /// Proxy route options.
    route: Option<RouteDoc>,
    /// Stages by name.
    stages: Option<BTreeMap<String, StageFields>>,
    /// The node (a host running `skippy`) it runs on (default: the server's own host).
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    node: Option<String>,
}

/// The health check.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthDoc {
    /// The HTTP path to probe.
    #[schema(pattern = "^/[A-Za-z0-9/_.-]*$")]
    path: Option<String>,
    /// Between probes (`1s`).
    #[schema(pattern = "^[1-9][0-9]{0,3}(ms|s|m)( [1-9][0-9]{0,3}(ms|s|m))*$")]
    interval: Option<String>,
    /// For one probe.
    #[schema(pattern = "^[1-9][0-9]{0,3}(ms|s|m)( [1-9][0-9]{0,3}(ms|s|m))*$")]
    timeout: Option<String>,
    /// For the container to become healthy.
    #[schema(pattern = "^[1-9][0-9]{0,3}(ms|s|m)( [1-9][0-9]{0,3}(ms|s|m))*$")]
    deadline: Option<String>,
    /// Without a probe: how long it must stay up.
    #[schema(pattern = "^[1-9][0-9]{0,3}(ms|s|m)( [1-9][0-9]{0,3}(ms|s|m))*$")]
    settle: Option<String>,
}

/// Proxy route options.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteDoc {
    websocket: Option<bool>,
    block_exploits: Option<bool>,
    http2: Option<bool>,
    certificate_id: Option<u64>,
    ssl_forced: Option<bool>,
    access_list_id: Option<u64>,
    advanced_config: Option<String>,
    adopt: Option<bool>,
}

/// A stage's fields, as under `stages:` in `skipper.yaml`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageFields {
    /// The glob a tag must match (`v*`, `dev-*`).
    #[schema(pattern = "^[A-Za-z0-9*?._-]{1,64}$")]
    tag_pattern: String,
    /// Deploy matching new tags without being asked.
    auto_deploy: Option<bool>,
    /// How many versions run side by side.
    #[schema(minimum = 1, maximum = 100)]
    max_instances: Option<u32>,
    /// Deploys need `"confirm": true`.
    confirm: Option<bool>,
    /// Only tags that ran in this other stage.
    promote_from: Option<String>,
    /// The stage's own subdomain label.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    subdomain: Option<String>,
    /// The node the stage runs on (default: the project's).
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    node: Option<String>,
}

/// A new stage: its fields plus `name`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageDoc {
    /// A DNS label.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
    name: String,
    #[schema(pattern = "^[A-Za-z0-9*?._-]{1,64}$")]
    tag_pattern: String,
    auto_deploy: Option<bool>,
    #[schema(minimum = 1, maximum = 100)]
    max_instances: Option<u32>,
    confirm: Option<bool>,
    promote_from: Option<String>,
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    subdomain: Option<String>,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    node: Option<String>,
}

/// A `skipper.yaml` for import (its `projects:`; other sections are refused here).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigDoc {
    projects: Option<BTreeMap<String, ProjectFields>>,
}

/// A project's fields under `projects:` (the name is the key).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectFields {
    #[schema(
        pattern = "^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$",
        max_length = 255
    )]
    image: String,
    registry: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    port: Option<u16>,
    healthcheck: Option<HealthDoc>,
    env: Option<BTreeMap<String, String>>,
    volumes: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    network: Option<String>,
    route: Option<RouteDoc>,
    stages: Option<BTreeMap<String, StageFields>>,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    node: Option<String>,
}
