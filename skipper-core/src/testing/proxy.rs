//! An in-memory [`ProxyManager`] with fault injection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::backend::{ProxyManager, Route};
use crate::error::Result;
use crate::testing::{Fault, Held, Hold};

#[derive(Default)]
struct State {
    routes: BTreeMap<String, Route>,
    /// Faults for `ensure_route` by domain.
    ensure_faults: HashMap<String, Vec<Fault>>,
    remove_faults: Vec<Fault>,
    list_faults: Vec<Fault>,
    ensures: usize,
    /// `ensure_route` calls to hold, by domain: told on `reached`, applied once `release` is
    /// sent (or dropped).
    holds: HashMap<String, Hold>,
}

/// A route table in memory.
#[derive(Default)]
pub struct FakeProxy {
    state: Mutex<State>,
    crashed: std::sync::atomic::AtomicBool,
}

impl FakeProxy {
    /// An empty proxy.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail the next `ensure_route` for `domain`.
    pub fn fail_ensure(&self, domain: &str, fault: Fault) {
        self.lock()
            .ensure_faults
            .entry(domain.to_owned())
            .or_default()
            .push(fault);
    }

    /// Hold the next `ensure_route` for `domain` until released: a slow proxy, or a process
    /// paused in the middle of the call. The call then takes effect as usual.
    pub fn hold_ensure(&self, domain: &str) -> Held {
        let (hold, held) = Hold::new();
        self.lock().holds.insert(domain.to_owned(), hold);
        held
    }

    /// Fail the next `remove_route`.
    pub fn fail_remove(&self, fault: Fault) {
        self.lock().remove_faults.push(fault);
    }

    /// Fail the next `list_routes`.
    pub fn fail_list(&self, fault: Fault) {
        self.lock().list_faults.push(fault);
    }

    /// The current routes, by domain.
    pub fn routes(&self) -> BTreeMap<String, Route> {
        self.lock().routes.clone()
    }

    /// The route for `domain`, if any.
    pub fn route(&self, domain: &str) -> Option<Route> {
        self.lock().routes.get(domain).cloned()
    }

    /// Whether a [`Fault::Crash`] was reached.
    pub fn crashed(&self) -> bool {
        self.crashed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many `ensure_route` calls were made.
    pub fn ensure_calls(&self) -> usize {
        self.lock().ensures
    }
}

#[async_trait]
impl ProxyManager for FakeProxy {
    async fn ensure_route(&self, route: &Route) -> Result<()> {
        let hold = self.lock().holds.remove(&route.domain);
        if let Some(hold) = hold {
            hold.wait().await;
        }
        let fault = {
            let mut s = self.lock();
            s.ensures += 1;
            s.ensure_faults
                .get_mut(&route.domain)
                .and_then(|q| (!q.is_empty()).then(|| q.remove(0)))
        };
        let what = format!("ensure_route {}", route.domain);
        if let Some(f) = fault {
            f.before("fake-proxy", &what, &self.crashed).await?;
        }
        self.lock()
            .routes
            .insert(route.domain.clone(), route.clone());
        fault.map_or(Ok(()), |f| f.after("fake-proxy", &what))
    }

    async fn remove_route(&self, domain: &str) -> Result<()> {
        let fault = {
            let mut s = self.lock();
            (!s.remove_faults.is_empty()).then(|| s.remove_faults.remove(0))
        };
        let what = format!("remove_route {domain}");
        if let Some(f) = fault {
            f.before("fake-proxy", &what, &self.crashed).await?;
        }
        self.lock().routes.remove(domain);
        fault.map_or(Ok(()), |f| f.after("fake-proxy", &what))
    }

    async fn list_routes(&self) -> Result<Vec<Route>> {
        let fault = {
            let mut s = self.lock();
            (!s.list_faults.is_empty()).then(|| s.list_faults.remove(0))
        };
        if let Some(f) = fault {
            f.before("fake-proxy", "list_routes", &self.crashed).await?;
            f.after("fake-proxy", "list_routes")?;
        }
        Ok(self.lock().routes.values().cloned().collect())
    }
}
