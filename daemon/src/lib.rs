//! # murmur-daemon
//!
//! The murmur node: configuration, the node key, the ingest pipeline (group commit of
//! local publishes), the local control API (HTTP/1.1 + JSON on a Unix socket), follow
//! streams, metrics, and clean shutdown. [`node::run`] runs a node until its
//! cancellation token fires; the `murmur` binary wires signals to that token.
//!
//! ```text
//!  app ──HTTP/unix──▶ server ──bounded queue──▶ writer thread ──WriteBatch+fsync──▶ RocksDB
//!                      │  ▲                        (sign, chain)                     │
//!                      │  └──── follow streams ◀── offset watch ◀────────────────────┘
//! ```

#![deny(missing_docs)]

pub mod alloc;
pub mod api;
pub mod clock;
pub mod config;
pub mod consumers;
pub mod docs;
pub mod fleet;
pub mod follow;
pub mod ingest;
pub mod keyfile;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod replicate;
pub mod retention;
pub mod server;
pub mod service;

pub use config::Config;
pub use murmur_p2p::psk::to_file as psk_file;
