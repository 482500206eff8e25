//! # murmur-store
//!
//! Persistence for murmur behind the [`murmur_core::Store`] trait:
//! - [`RocksStore`]: RocksDB, one atomic `WriteBatch` per insert with all indexes, one
//!   WAL sync per batch (group commit), bounded caches;
//! - [`MemoryStore`]: the same laws in memory, for tests and simulation;
//! - [`check::verify`]: the offline integrity check behind `murmur verify`.
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
mod docs;
mod keys;
mod memory;
mod rocks;

#[cfg(test)]
mod conformance;

pub use docs::Snapshot;
pub use memory::MemoryStore;
pub use rocks::{RocksConfig, RocksStore, SCHEMA_VERSION, StoreError};
