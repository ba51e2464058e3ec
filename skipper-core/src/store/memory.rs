//! [`MemoryStore`]: the whole [`Store`] in process memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::backend::{DeploymentFilter, Fence, InstanceFilter, Store};
use crate::error::Result;
use crate::model::{Deployment, Instance, Project, SeenTag};

/// A [`Store`] that keeps everything in memory: for tests, examples and embedders' experiments.
///
/// Nothing survives the process, so leases only exclude holders within it. Ordering and lease
/// semantics are those of the SQLite store (both pass the same conformance
/// suite): instances oldest first, deployments newest first (ties broken by id), and a
/// lease is held while `now < taken_or_renewed_at + ttl`. Lease time is `tokio::time::Instant`, so
/// tests on a paused tokio clock can expire leases with `tokio::time::advance`.
///
/// `Debug` shows counts and never credential values.
pub struct MemoryStore {
    id: String,
    inner: Mutex<Inner>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            id: crate::model::new_id(),
            inner: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct Inner {
    projects: BTreeMap<String, Project>,
    instances: HashMap<String, Instance>,
    deployments: HashMap<String, Deployment>,
    settings: BTreeMap<String, String>,
    credentials: BTreeMap<String, SecretString>,
    /// `(repository, tag)` → what was seen.
    seen_tags: BTreeMap<(String, String), SeenTag>,
    /// key → (holder, expires at).
    leases: HashMap<String, (String, Instant)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section below leaves `Inner` consistent even if it panicked half-way
        // (each mutation is a single map operation), so a poisoned lock is safe to take over.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryStore")
            .field("projects", &inner.projects.len())
            .field("instances", &inner.instances.len())
            .field("deployments", &inner.deployments.len())
            .field("settings", &inner.settings.len())
            .field("credentials", &inner.credentials.len())
            .field("seen_tags", &inner.seen_tags.len())
            .field("leases", &inner.leases.len())
            .finish()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn store_id(&self) -> Result<String> {
        Ok(self.id.clone())
    }

    async fn put_project(&self, project: &Project) -> Result<()> {
        self.lock()
            .projects
            .insert(project.name.clone(), project.clone());
        Ok(())
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>> {
        Ok(self.lock().projects.get(name).cloned())
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        Ok(self.lock().projects.values().cloned().collect())
    }

    async fn delete_project(&self, name: &str) -> Result<()> {
        self.lock().projects.remove(name);
        Ok(())
    }

    async fn put_instance(&self, instance: &Instance) -> Result<()> {
        self.lock()
            .instances
            .insert(instance.id.clone(), instance.clone());
        Ok(())
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        Ok(self.lock().instances.get(id).cloned())
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let mut out: Vec<Instance> = self
            .lock()
            .instances
            .values()
            .filter(|i| matches(&filter.project, &i.project) && matches(&filter.stage, &i.stage))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn delete_instance(&self, id: &str) -> Result<()> {
        self.lock().instances.remove(id);
        Ok(())
    }

    async fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        self.lock()
            .deployments
            .insert(deployment.id.clone(), deployment.clone());
        Ok(())
    }

    async fn get_deployment(&self, id: &str) -> Result<Option<Deployment>> {
        Ok(self.lock().deployments.get(id).cloned())
    }

    async fn list_deployments(&self, filter: &DeploymentFilter) -> Result<Vec<Deployment>> {
        let inner = self.lock();
        // Sort and cut references; clone only what is returned.
        let mut out: Vec<&Deployment> = inner
            .deployments
            .values()
            .filter(|d| matches(&filter.project, &d.project) && matches(&filter.stage, &d.stage))
            .collect();
        out.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        if let Some(limit) = filter.limit {
            out.truncate(limit);
        }
        Ok(out.into_iter().cloned().collect())
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().settings.get(key).cloned())
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        self.lock()
            .settings
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn put_credential(&self, name: &str, secret: &SecretString) -> Result<()> {
        self.lock()
            .credentials
            .insert(name.to_owned(), secret.clone());
        Ok(())
    }

    async fn get_credential(&self, name: &str) -> Result<Option<SecretString>> {
        Ok(self.lock().credentials.get(name).cloned())
    }

    async fn list_credentials(&self) -> Result<Vec<String>> {
        Ok(self.lock().credentials.keys().cloned().collect())
    }

    async fn delete_credential(&self, name: &str) -> Result<()> {
        self.lock().credentials.remove(name);
        Ok(())
    }

    async fn put_seen_tag(&self, seen: &SeenTag) -> Result<()> {
        let key = (seen.repository.clone(), seen.tag.clone());
        self.lock()
            .seen_tags
            .entry(key)
            .and_modify(|old| {
                // Keep when it was first seen; take the new digest and change time.
                old.digest.clone_from(&seen.digest);
                old.updated_at = seen.updated_at;
            })
            .or_insert_with(|| seen.clone());
        Ok(())
    }

    async fn list_seen_tags(&self, repository: &str) -> Result<Vec<SeenTag>> {
        Ok(self
            .lock()
            .seen_tags
            .values()
            .filter(|s| s.repository == repository)
            .cloned()
            .collect())
    }

    async fn try_lock(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let expires = now.checked_add(ttl).unwrap_or_else(far_future);
        let mut inner = self.lock();
        match inner.leases.get_mut(key) {
            Some((owner, until)) if owner != holder && *until > now => Ok(false),
            Some(lease) => {
                *lease = (holder.to_owned(), expires);
                Ok(true)
            }
            None => {
                inner
                    .leases
                    .insert(key.to_owned(), (holder.to_owned(), expires));
                Ok(true)
            }
        }
    }

    async fn unlock(&self, key: &str, holder: &str) -> Result<()> {
        let mut inner = self.lock();
        if inner
            .leases
            .get(key)
            .is_some_and(|(owner, _)| owner == holder)
        {
            inner.leases.remove(key);
        }
        Ok(())
    }

    async fn lease_holder(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().leases.get(key).map(|(h, _)| h.clone()))
    }

    async fn take_over_lock(
        &self,
        key: &str,
        previous: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let expires = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        let mut inner = self.lock();
        match inner.leases.get_mut(key) {
            Some(lease) if lease.0 == previous => {
                *lease = (holder.to_owned(), expires);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put_fenced(
        &self,
        fence: &Fence,
        instances: &[Instance],
        deployments: &[Deployment],
    ) -> Result<()> {
        let mut inner = self.lock();
        if inner.leases.get(&fence.key).map(|(h, _)| h.as_str()) != Some(fence.holder.as_str()) {
            return Err(super::lease_lost(fence));
        }
        for i in instances {
            inner.instances.insert(i.id.clone(), i.clone());
        }
        for d in deployments {
            inner.deployments.insert(d.id.clone(), d.clone());
        }
        Ok(())
    }
}

/// Whether `value` passes an optional equality filter.
fn matches(filter: &Option<String>, value: &str) -> bool {
    filter.as_deref().is_none_or(|f| f == value)
}

/// An instant no lease outlives (for absurd ttls like `Duration::MAX`).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn conformance() {
        let store = MemoryStore::new();
        conformance::run_all(&store).await;
        conformance::credentials_hidden_from_debug(&store).await;
    }

    #[tokio::test(start_paused = true)]
    async fn leases_follow_the_tokio_clock() {
        let store = MemoryStore::new();
        assert!(
            store
                .try_lock("k", "a", Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert!(
            !store
                .try_lock("k", "b", Duration::from_secs(30))
                .await
                .unwrap()
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            store
                .try_lock("k", "b", Duration::from_secs(30))
                .await
                .unwrap()
        );
    }
}
