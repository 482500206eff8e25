//! The client of murmur's local API: every request and response type of the daemon's
//! HTTP API over its Unix socket ([`api`]), and a typed async [`Client`].
//!
//! An application on a device talks to its own murmur daemon through this crate alone:
//! it depends on serde, hyper and tokio, not on RocksDB, libp2p or automerge. The
//! daemon's server answers with these same types, and the `murmur` CLI uses this
//! client, so the three cannot drift apart.
//!
//! Publishing answers once the event is durable on this node (and only then is it
//! gossiped to peers). Following gives every matching event exactly once, in local
//! arrival order, including events that arrived from other devices; a follower resumes
//! after a disconnect from the last `offset` + 1.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use murmur_client::Client;
//!
//! # async fn demo() -> Result<(), murmur_client::ClientError> {
//! let mut client = Client::new("/var/lib/murmur/murmur.sock".as_ref());
//! let ack = client.publish("sensors/kitchen/temp", "21.5").await?;
//! println!("durable as seq {} at offset {}", ack.seq, ack.offset);
//!
//! let mut events = client.follow("sensors/#", Some(0)).await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {} {}", event.topic, event.seq, event.data);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/tail.rs` is the same as a program: `cargo run -p murmur-client --example
//! tail -- SOCKET PATTERN`.

pub mod api;
mod conn;

pub use conn::{Client, ClientError, encode_query, payload_request};
