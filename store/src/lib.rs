//! # murmur-store
//!
//! Persistence for murmur behind the [`murmur_core::Store`] trait:
//! - [`RocksStore`]: RocksDB, one atomic `WriteBatch` per insert with all indexes, one
//!   WAL sync per batch (group commit), bounded caches;
//! - [`MemoryStore`]: the same laws in memory, for tests and simulation;
//! - [`check::verify`]: the offline integrity check behind `murmur verify`;
//! - [`repair`]: `murmur repair`, which keeps a copy of a damaged database and rebuilds
//!   it from every event that still verifies.
//!
//! Damage is never a quiet loss: RocksDB's WAL recovery refuses a bad record (see
//! `db_options` in `rocks.rs`), its errors are classified by kind into
//! [`StoreError::Damaged`] and [`StoreError::Locked`], and a database that comes back
//! with fewer events than it had made durable is refused ([`MARK_FILE`]).
//!
//! Open a store, insert verified events, read them back:
//!
//! ```no_run
//! use murmur_core::{Durability, Store};
//! let store = murmur_store::RocksStore::open("/tmp/murmur-db".as_ref(), &Default::default())?;
//! let outcomes = store.insert(&[/* verified events */], Durability::Sync)?;
//! # Ok::<(), murmur_store::StoreError>(())
//! ```

#![deny(missing_docs)]

pub mod check;
mod consumers;
mod docs;
mod error;
mod keys;
mod memory;
pub mod repair;
mod rocks;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod damage_tests;

pub use consumers::ConsumerRecord;
pub use docs::SnapshotRef;
pub use memory::MemoryStore;
pub use murmur_core::storage::Snapshot;
pub use rocks::{
    KeyOf, Keyed, MARK_FILE, PreparedPrune, RocksConfig, RocksStore, SCHEMA_VERSION, StoreError,
};
