//! In-memory fakes of the backends, for tests and for embedders' own tests.
//!
//! - [`FakeRuntime`]: containers that "run" instantly, images registered by the test;
//! - [`FakeProxy`]: a route table;
//! - [`RecordingNotifier`]: keeps every event;
//! - [`FlakyStore`]: wraps any [`Store`](crate::Store) and fails chosen calls;
//! - [`MemoryStore`](crate::store::MemoryStore) is the in-memory store.
//!
//! Each fake takes [`Fault`]s: fail the next call with an error of some kind, or hang it (so the
//! engine's timeouts fire; use `#[tokio::test(start_paused = true)]` and no real time passes).

mod proxy;
mod runtime;

use std::sync::Mutex;

use async_trait::async_trait;

pub use proxy::FakeProxy;
pub use runtime::{Behavior, FakeImage, FakeRuntime, Op, docker_healthcheck};

use crate::backend::Notifier;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Event;

/// A failure to inject into a fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with an error of this kind.
    Error(ErrorKind),
    /// Never answer (the caller's timeout must fire).
    Hang,
    /// Take effect, then report an error of this kind (an answer lost after the change).
    AppliedThenError(ErrorKind),
    /// The process dies here: the call never returns and never takes effect, and the fake
    /// records that the crash point was reached (`crashed()`), so a test can abort the task
    /// the way `kill -9` stops a process.
    Crash,
}

impl Fault {
    /// Act out the part of the fault that comes before the call: `Error` fails, `Hang` and
    /// `Crash` never return (`Crash` sets `crashed` first), `AppliedThenError` lets the call
    /// go ahead.
    pub(crate) async fn before(
        self,
        backend: &'static str,
        what: &str,
        crashed: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        match self {
            Fault::Error(kind) => Err(Error::backend(
                backend,
                kind,
                format!("injected failure in {what}"),
            )),
            Fault::Hang => std::future::pending().await,
            Fault::Crash => {
                crashed.store(true, std::sync::atomic::Ordering::SeqCst);
                std::future::pending().await
            }
            Fault::AppliedThenError(_) => Ok(()),
        }
    }

    /// Act out the part of the fault that comes after the call took effect.
    pub(crate) fn after(self, backend: &'static str, what: &str) -> Result<()> {
        match self {
            Fault::AppliedThenError(kind) => Err(Error::backend(
                backend,
                kind,
                format!("injected failure in {what}, after it took effect"),
            )),
            _ => Ok(()),
        }
    }

    /// Act out the whole fault around a call that does nothing (a notifier).
    pub(crate) async fn apply(self, backend: &'static str, what: &str) -> Result<()> {
        let crashed = std::sync::atomic::AtomicBool::new(false);
        self.before(backend, what, &crashed).await?;
        self.after(backend, what)
    }
}

/// A call held in a fake until the test lets it go (a slow backend, or a process paused in the
/// middle of the call); it then takes effect as usual.
pub struct Held {
    /// Resolves once the call arrived and waits.
    pub reached: tokio::sync::oneshot::Receiver<()>,
    /// Send (or drop) to let the call go ahead.
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// The fake's side of a [`Held`] call.
pub(crate) struct Hold {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

impl Hold {
    pub(crate) fn new() -> (Self, Held) {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        let hold = Self {
            reached: reached_tx,
            release: release_rx,
        };
        (hold, Held { reached, release })
    }

    /// Say the call arrived, and wait to be let go.
    pub(crate) async fn wait(self) {
        let _ = self.reached.send(());
        let _ = self.release.await;
    }
}

/// A notifier that keeps every event, and can be told to fail.
#[derive(Default)]
pub struct RecordingNotifier {
    events: Mutex<Vec<Event>>,
    fault: Mutex<Option<Fault>>,
}

impl RecordingNotifier {
    /// A notifier that records and succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fail every delivery with `fault` (events are still recorded).
    pub fn fail_with(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }

    /// The events received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
        let fault = *self.fault.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            Some(f) => f.apply("recording-notifier", "notify").await,
            None => Ok(()),
        }
    }
}

mod flaky_store;
pub use flaky_store::{FlakyStore, StoreOp};

/// Each node's runtime and whether it is reachable.
type NodeMap =
    std::collections::BTreeMap<String, (std::sync::Arc<dyn crate::backend::Runtime>, bool)>;

/// A fixed set of nodes for tests ([`NodeRuntimes`](crate::backend::NodeRuntimes)): each node
/// id with its runtime, and a switch to make one unreachable.
#[derive(Default)]
pub struct StaticNodes {
    nodes: Mutex<NodeMap>,
}

impl StaticNodes {
    /// No nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) `node` with its runtime, reachable.
    pub fn add(&self, node: &str, runtime: std::sync::Arc<dyn crate::backend::Runtime>) {
        self.lock().insert(node.to_owned(), (runtime, true));
    }

    /// Make `node` reachable or not.
    pub fn set_reachable(&self, node: &str, reachable: bool) {
        if let Some(n) = self.lock().get_mut(node) {
            n.1 = reachable;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeMap> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl crate::backend::NodeRuntimes for StaticNodes {
    fn runtime(&self, node: &str) -> Option<std::sync::Arc<dyn crate::backend::Runtime>> {
        self.lock().get(node).map(|n| n.0.clone())
    }

    fn is_reachable(&self, node: &str) -> bool {
        self.lock().get(node).is_some_and(|n| n.1)
    }

    fn nodes(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}
