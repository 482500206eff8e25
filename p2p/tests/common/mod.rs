//! What the network tests share: a node on loopback (mDNS off, no links of its own).

use std::time::Duration;

use murmur_p2p::{Event, Handle, Multiaddr};
use tokio::sync::mpsc;

/// A network node with key `seed` listening on loopback, its events, and its address
/// (with its peer id).
pub async fn node(seed: u8) -> (Handle, mpsc::Receiver<Event>, Multiaddr) {
    let config = murmur_p2p::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        mdns: false,
        links: 0,
        ..murmur_p2p::Config::default()
    };
    let (handle, events, event_loop) =
        murmur_p2p::spawn([seed; 32], &config, &mut murmur_p2p::Registry::default())
            .expect("network starts");
    tokio::spawn(event_loop.run());
    for _ in 0..100 {
        if let Some(a) = handle.addresses().await.into_iter().next() {
            let a = a.with_p2p(handle.peer_id()).expect("a /p2p address");
            return (handle, events, a);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node did not start listening");
}
