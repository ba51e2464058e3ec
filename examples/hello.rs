//! Run with: `scripts/test-env.sh && cargo run --example hello -- 127.0.0.1:5055/team/app:v1`
//!
//! Skipper's hello world: deploy one image on the local Docker engine with the library, print
//! where it answers, then remove it again so nothing is left running.

use std::sync::Arc;

use anyhow::{Context, bail};
use skipper_core::docker::DockerRuntime;
use skipper_core::store::MemoryStore;
use skipper_core::{DeployRequest, DeployStatus, Engine, ImageRef, Project, Stage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = std::env::args()
        .nth(1)
        .context("usage: hello <image:tag>, e.g. 127.0.0.1:5055/team/app:v1")?;
    let image = ImageRef::parse(&arg)?;

    // The engine runs on two backends here: Docker, and a store that lives in memory.
    let runtime = Arc::new(DockerRuntime::connect().await?);
    let engine = Engine::builder(runtime, Arc::new(MemoryStore::new())).build();

    // A project is one image repository plus its stages. The port comes from the image's
    // EXPOSE; the new container counts as healthy once GET /health answers 2xx.
    let mut project = Project::new("hello", &image.name())?.with_stage(Stage::new("dev"));
    project.health.path = Some("/health".into());
    engine.put_project(&project).await?;

    let deployment = engine
        .deploy(DeployRequest::new("hello", "dev", image))
        .await?;
    if deployment.status != DeployStatus::Succeeded {
        let error = deployment.error.context("a failed deploy has an error")?;
        bail!("deploy failed at step {}: {}", error.step, error.message);
    }
    let instance = engine
        .find_instance(deployment.instance_id.as_deref().unwrap_or_default())
        .await?;
    let address = instance.address.as_deref().unwrap_or("(not published)");
    println!("{} is live at http://{address}", deployment.image);

    engine.remove_instance(&instance.id).await?;
    println!("removed {}", instance.container_name);
    Ok(())
}
