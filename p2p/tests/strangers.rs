//! A murmur node keeps other libp2p networks out. A peer that speaks the public IPFS
//! DHT's Kademlia (`/ipfs/kad/1.0.0`) and identifies as an IPFS node never enters the
//! routing table and is disconnected; a murmur peer enters it (so the test can fail).
//! Loopback only, mDNS off.

use std::time::Duration;

use futures_util::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, kad, noise, tcp, yamux};
use tokio::sync::watch;

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")
}

/// A murmur node on loopback; its events are read and dropped (unread, they would hold
/// the network back), and its registry is returned.
async fn murmur_node(seed: u8) -> (murmur_p2p::Handle, Multiaddr, murmur_p2p::Registry) {
    let config = murmur_p2p::Config {
        listen: vec![loopback()],
        mdns: false,
        ..murmur_p2p::Config::default()
    };
    let mut registry = murmur_p2p::Registry::default();
    let (handle, mut events, event_loop) =
        murmur_p2p::spawn([seed; 32], &config, &mut registry).expect("network starts");
    tokio::spawn(event_loop.run());
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    for _ in 0..100 {
        if let Some(a) = handle.addresses().await.into_iter().next() {
            let a = a.with_p2p(handle.peer_id()).expect("a /p2p address");
            return (handle, a, registry);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the murmur node did not start listening");
}

#[derive(NetworkBehaviour)]
struct Ipfs {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// An IPFS-like node: identify `ipfs/0.1.0`, Kademlia on the default protocol, server
/// mode. Dials `to` and reports whether its connection to `to` is open.
fn ipfs_node(to: Multiaddr, target: PeerId) -> (PeerId, watch::Receiver<(bool, bool)>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(kad::PROTOCOL_NAME),
            );
            kad.set_mode(Some(kad::Mode::Server));
            Ipfs {
                identify: identify::Behaviour::new(identify::Config::new(
                    "ipfs/0.1.0".into(),
                    key.public(),
                )),
                kad,
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on(loopback()).expect("listen");
    swarm.dial(to).expect("dial");
    let me = *swarm.local_peer_id();
    // (was connected, is connected now)
    let (tx, rx) = watch::channel((false, false));
    tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target => {
                    tx.send_replace((true, true));
                }
                SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                } if peer_id == target => {
                    tx.send_replace((true, false));
                }
                _ => {}
            }
        }
    });
    (me, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipfs_dht_node_is_kept_out_and_a_murmur_node_is_routed() {
    let (a, a_addr, a_events) = murmur_node(1).await;
    let (b, _b_addr, _b_events) = murmur_node(2).await;
    let (stranger, mut link) = ipfs_node(a_addr.clone(), a.peer_id());
    b.dial(a_addr).await.expect("dial");

    // The murmur peer enters A's routing table (identify shows it speaks murmur's Kad).
    let mut routed = false;
    for _ in 0..200 {
        if a.routing_table().await.contains(&b.peer_id()) {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(routed, "a murmur peer must enter the routing table");

    // The IPFS node connected, was identified and disconnected, and was never routed.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        link.wait_for(|(was, now)| *was && !*now).await.is_ok()
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the IPFS node must be disconnected after identify"
    );
    let table = a.routing_table().await;
    assert!(
        !table.contains(&stranger),
        "a node speaking /ipfs/kad/1.0.0 entered the routing table: {table:?}"
    );
    let peers: Vec<PeerId> = a.peers().await.into_iter().map(|p| p.peer).collect();
    assert!(!peers.contains(&stranger), "still connected: {peers:?}");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &a_events).expect("encodes");
    assert!(
        text.contains("murmur_p2p_strangers_total 1"),
        "the stranger is counted:\n{text}"
    );
}
