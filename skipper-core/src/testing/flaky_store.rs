//! A [`Store`] wrapper that fails chosen calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::backend::{DeploymentFilter, Fence, InstanceFilter, Store};
use crate::error::Result;
use crate::model::{DeployStatus, Deployment, Instance, Project, SeenTag};
use crate::testing::{Fault, Held, Hold};

/// Store calls that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// `get_project`.
    GetProject,
    /// `put_instance`, or a fenced write of instances that makes none active.
    PutInstance,
    /// `list_instances`.
    ListInstances,
    /// `put_deployment` (or a fenced write of only a deployment) of an in-progress deployment.
    PutDeploymentStarted,
    /// `put_deployment` of a succeeded deployment (the engine's record step).
    PutDeploymentSucceeded,
    /// `put_deployment` of a failed deployment.
    PutDeploymentFailed,
    /// `try_lock`.
    TryLock,
    /// The deploy's commit: a fenced write that makes an instance active.
    Commit,
    /// `list_deployments`.
    ListDeployments,
}

/// Wraps a store; calls listed with [`FlakyStore::inject`] fail once each.
pub struct FlakyStore {
    inner: Arc<dyn Store>,
    faults: Mutex<HashMap<StoreOp, Vec<Fault>>>,
    holds: Mutex<HashMap<StoreOp, Hold>>,
    crashed: std::sync::atomic::AtomicBool,
}

impl FlakyStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            faults: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            crashed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a [`Fault::Crash`] was reached.
    pub fn crashed(&self) -> bool {
        self.crashed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drop every injected fault not yet used.
    pub fn clear_faults(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Fail the next `op` with `fault`.
    pub fn inject(&self, op: StoreOp, fault: Fault) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op)
            .or_default()
            .push(fault);
    }

    /// Hold the next `op` until released (a slow store, or a process paused just before the
    /// call); it then goes ahead as usual.
    pub fn hold(&self, op: StoreOp) -> Held {
        let (hold, held) = Hold::new();
        self.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op, hold);
        held
    }

    async fn check(&self, op: StoreOp) -> Result<Option<Fault>> {
        let hold = self
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&op);
        if let Some(hold) = hold {
            hold.wait().await;
        }
        let fault = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&op)
            .and_then(|q| (!q.is_empty()).then(|| q.remove(0)));
        match fault {
            Some(f) => {
                f.before("flaky-store", &format!("{op:?}"), &self.crashed)
                    .await?;
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    /// Run `call` between the two halves of the fault injected for `op`, if any.
    async fn around<T>(
        &self,
        op: StoreOp,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let fault = self.check(op).await?;
        let value = call.await?;
        if let Some(f) = fault {
            f.after("flaky-store", &format!("{op:?}"))?;
        }
        Ok(value)
    }
}

fn deployment_op(d: &Deployment) -> StoreOp {
    match d.status {
        DeployStatus::InProgress => StoreOp::PutDeploymentStarted,
        DeployStatus::Succeeded => StoreOp::PutDeploymentSucceeded,
        DeployStatus::Failed => StoreOp::PutDeploymentFailed,
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn store_id(&self) -> Result<String> {
        self.inner.store_id().await
    }
    async fn put_project(&self, project: &Project) -> Result<()> {
        self.inner.put_project(project).await
    }
    async fn get_project(&self, name: &str) -> Result<Option<Project>> {
        self.around(StoreOp::GetProject, self.inner.get_project(name))
            .await
    }
    async fn list_projects(&self) -> Result<Vec<Project>> {
        self.inner.list_projects().await
    }
    async fn delete_project(&self, name: &str) -> Result<()> {
        self.inner.delete_project(name).await
    }
    async fn put_instance(&self, instance: &Instance) -> Result<()> {
        self.around(StoreOp::PutInstance, self.inner.put_instance(instance))
            .await
    }
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        self.inner.get_instance(id).await
    }
    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        self.around(StoreOp::ListInstances, self.inner.list_instances(filter))
            .await
    }
    async fn delete_instance(&self, id: &str) -> Result<()> {
        self.inner.delete_instance(id).await
    }
    async fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        self.around(
            deployment_op(deployment),
            self.inner.put_deployment(deployment),
        )
        .await
    }
    async fn get_deployment(&self, id: &str) -> Result<Option<Deployment>> {
        self.inner.get_deployment(id).await
    }
    async fn list_deployments(&self, filter: &DeploymentFilter) -> Result<Vec<Deployment>> {
        self.around(
            StoreOp::ListDeployments,
            self.inner.list_deployments(filter),
        )
        .await
    }
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        self.inner.get_setting(key).await
    }
    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        self.inner.put_setting(key, value).await
    }
    async fn put_credential(&self, name: &str, secret: &SecretString) -> Result<()> {
        self.inner.put_credential(name, secret).await
    }
    async fn get_credential(&self, name: &str) -> Result<Option<SecretString>> {
        self.inner.get_credential(name).await
    }
    async fn list_credentials(&self) -> Result<Vec<String>> {
        self.inner.list_credentials().await
    }
    async fn delete_credential(&self, name: &str) -> Result<()> {
        self.inner.delete_credential(name).await
    }
    async fn put_seen_tag(&self, seen: &SeenTag) -> Result<()> {
        self.inner.put_seen_tag(seen).await
    }
    async fn list_seen_tags(&self, repository: &str) -> Result<Vec<SeenTag>> {
        self.inner.list_seen_tags(repository).await
    }
    async fn try_lock(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.around(StoreOp::TryLock, self.inner.try_lock(key, holder, ttl))
            .await
    }
    async fn unlock(&self, key: &str, holder: &str) -> Result<()> {
        self.inner.unlock(key, holder).await
    }
    async fn lease_holder(&self, key: &str) -> Result<Option<String>> {
        self.inner.lease_holder(key).await
    }
    async fn take_over_lock(
        &self,
        key: &str,
        previous: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.inner.take_over_lock(key, previous, holder, ttl).await
    }
    async fn put_fenced(
        &self,
        fence: &Fence,
        instances: &[Instance],
        deployments: &[Deployment],
    ) -> Result<()> {
        let op = if instances.iter().any(|i| i.active) {
            StoreOp::Commit
        } else if !instances.is_empty() {
            StoreOp::PutInstance
        } else {
            deployments
                .first()
                .map_or(StoreOp::PutInstance, deployment_op)
        };
        self.around(op, self.inner.put_fenced(fence, instances, deployments))
            .await
    }
}
