//! `Command::Reconnect`: the daemon asks for it when a peer's live push stops
//! reaching it while the connection stays up. The connection closes, the peer is
//! dialed again at the address it was dialed at, and gossip flows on the new
//! connection. Loopback only, mDNS off.

use std::time::Duration;

use murmur_p2p::{Command, Event, Handle, PeerId};
use tokio::sync::mpsc;

mod common;
use common::node;

/// Waits up to 10 s for an event `want` accepts; others are dropped.
async fn next(events: &mut mpsc::Receiver<Event>, what: &str, want: impl Fn(&Event) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if want(&ev) => return,
            Ok(Some(_)) => {}
            other => panic!("no {what}: {other:?}"),
        }
    }
}

/// Publishes on the channel until `to` hears it (the subscriptions are exchanged
/// after connecting), at most 10 s.
async fn gossip_reaches(from: &Handle, to: &mut mpsc::Receiver<Event>, tag: &str) {
    for i in 0..50 {
        assert!(
            from.send(Command::Publish {
                topic: "murmur:#".into(),
                data: format!("{tag} {i}").into_bytes(),
            })
            .await
        );
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, to.recv()).await {
            if matches!(&ev, Event::Gossip { data, .. } if data.starts_with(tag.as_bytes())) {
                return;
            }
        }
    }
    panic!("gossip ({tag}) never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_closes_the_connection_dials_again_and_gossip_flows_on_the_new_one() {
    let (a, mut a_events, _) = node(1).await;
    let (b, mut b_events, b_addr) = node(2).await;
    let peer: PeerId = b.peer_id();
    for h in [&a, &b] {
        assert!(h.send(Command::Subscribe("murmur:#".into())).await);
    }
    a.dial(b_addr).await.expect("dial");
    next(
        &mut a_events,
        "connection",
        |e| matches!(e, Event::Connected(p) if *p == peer),
    )
    .await;
    gossip_reaches(&a, &mut b_events, "before").await;

    assert!(a.send(Command::Reconnect(peer)).await);
    next(
        &mut a_events,
        "disconnection",
        |e| matches!(e, Event::Disconnected(p) if *p == peer),
    )
    .await;
    next(
        &mut a_events,
        "new connection",
        |e| matches!(e, Event::Connected(p) if *p == peer),
    )
    .await;
    gossip_reaches(&a, &mut b_events, "after").await;
    let peers = a.peers().await;
    let b_info = peers.iter().find(|p| p.peer == peer).expect("b is a peer");
    assert_eq!(b_info.how, "reconnect", "{peers:?}");
}
