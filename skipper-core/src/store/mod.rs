//! `Store` implementations: in memory (tests, embedders' experiments) and SQLite (the default).
//!
//! - [`MemoryStore`]: always compiled; nothing survives the process.
//! - `SqliteStore` (feature `sqlite`): one file, `skipper.db`, in a data directory, shared safely
//!   by several processes (WAL, busy timeout, leases in `BEGIN IMMEDIATE` transactions), with
//!   credentials encrypted by AES-256-GCM under a `SecretKey` from `SKIPPER_SECRET_KEY`.
//! - `conformance` (feature `test-util`): the suite both pass, for any new backend to reuse.

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SECRET_KEY_ENV, SecretKey, SqliteStore};

/// The error a fenced write returns when its holder no longer holds the lease.
pub(crate) fn lease_lost(fence: &crate::backend::Fence) -> crate::Error {
    crate::Error::LeaseLost {
        key: fence.key.clone(),
    }
}
