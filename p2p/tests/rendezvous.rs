//! Topic-aware discovery's network half: a node announces a rendezvous key, and a node
//! that only knows a third (the bootstrap) looks the key up and dials the provider,
//! which `peers` then shows as found by `topic`. Loopback only, mDNS off.

use std::time::Duration;

use murmur_p2p::{Command, Handle, Multiaddr};

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")
}

async fn node(seed: u8) -> (Handle, Multiaddr) {
    let config = murmur_p2p::Config {
        listen: vec![loopback()],
        mdns: false,
        // Nothing learned from the routing table is dialed.
        links: 0,
        ..murmur_p2p::Config::default()
    };
    let (handle, mut events, event_loop) =
        murmur_p2p::spawn([seed; 32], &config, &mut murmur_p2p::Registry::default())
            .expect("network starts");
    tokio::spawn(event_loop.run());
    // Read and drop the events: unread, they would hold the network back.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    for _ in 0..100 {
        if let Some(a) = handle.addresses().await.into_iter().next() {
            let a = a.with_p2p(handle.peer_id()).expect("a /p2p address");
            return (handle, a);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node did not start listening");
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_dials_the_provider_of_a_rendezvous_key() {
    let (boot, boot_addr) = node(1).await;
    let (provider, _) = node(2).await;
    let (seeker, _) = node(3).await;
    provider.dial(boot_addr.clone()).await.expect("dial");
    seeker.dial(boot_addr).await.expect("dial");
    until("both in the bootstrap's routing table", async || {
        boot.routing_table().await.len() == 2
    })
    .await;
    until("the seeker to know the bootstrap", async || {
        seeker.routing_table().await.contains(&boot.peer_id())
    })
    .await;
    let key = "murmur/rv/1/fleet".to_string();
    provider.send(Command::Provide(key.clone())).await;
    let connected = async |h: &Handle| {
        h.peers()
            .await
            .into_iter()
            .find(|p| p.peer == provider.peer_id())
            .map(|p| p.how)
    };
    // Kademlia's own bootstrap connects everyone in a fleet of three: the seeker hangs
    // up on the provider (a ban of one second) so that only the lookup can bring it back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    seeker
        .send(Command::Ban {
            peer: provider.peer_id(),
            for_: Duration::from_secs(1),
        })
        .await;
    until("the seeker and the provider to be apart", async || {
        connected(&seeker).await.is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        connected(&seeker).await,
        None,
        "nothing else reconnected them"
    );
    // The record has to reach the bootstrap first; lookups are repeated as the daemon's
    // machine would (every few seconds while short of links).
    for _ in 0..20 {
        seeker
            .send(Command::FindPeers {
                key: key.clone(),
                want: 1,
            })
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if connected(&seeker).await.is_some() {
            break;
        }
    }
    assert_eq!(
        connected(&seeker).await,
        Some("topic"),
        "found by the lookup"
    );
    // A key nobody provides dials nothing new.
    seeker
        .send(Command::FindPeers {
            key: "murmur/rv/1/nobody".into(),
            want: 3,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        seeker
            .peers()
            .await
            .iter()
            .all(|p| p.peer == boot.peer_id() || p.peer == provider.peer_id()),
        "only the bootstrap and the provider"
    );
}
