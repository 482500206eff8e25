//! Sync messages are streams, and yamux closes a whole connection when either side
//! opens more than 512 at once. A round on thousands of topics sends thousands of
//! messages to one peer at once; while the receiver is busy (its daemon reads nothing
//! for a while) they must wait their turn, not kill the connection. Loopback only,
//! mDNS off.

use std::time::Duration;

use murmur_core::sync::Message;
use murmur_core::topic::Topic;
use murmur_p2p::{Command, Event};
use tokio::sync::mpsc;

mod common;
use common::node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_sync_messages_to_a_busy_peer_all_arrive_on_one_connection() {
    let (sender, mut sender_events, _) = node(1).await;
    let (receiver, mut receiver_events, receiver_addr) = node(2).await;
    sender.dial(receiver_addr).await.expect("dial");
    let peer = receiver.peer_id();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sender_events.recv()).await {
            Ok(Some(Event::Connected(p))) if p == peer => break,
            Ok(Some(_)) => {}
            other => panic!("no connection: {other:?}"),
        }
    }
    // The sender's other events: a disconnection is the failure this test is about.
    let (lost_tx, mut lost) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(ev) = sender_events.recv().await {
            if let Event::Disconnected(p) = ev
                && p == peer
            {
                let _ = lost_tx.send(()).await;
            }
        }
    });

    const N: usize = 3000;
    for i in 0..N {
        let topic = Topic::new(format!("sensors/{i:04}/temp")).expect("a topic");
        assert!(
            sender
                .send(Command::Sync {
                    peer,
                    msg: Message::InSync { topic },
                })
                .await
        );
    }
    // The receiving daemon is busy for 2 s: its network stops reading meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < N {
        tokio::select! {
            ev = tokio::time::timeout_at(deadline, receiver_events.recv()) => match ev {
                Ok(Some(Event::Sync { msg: Message::InSync { topic }, .. })) => {
                    got.insert(topic);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = lost.recv() => panic!("the connection was lost after {} messages", got.len()),
        }
    }
    assert_eq!(got.len(), N, "every message arrived, each once");
    assert!(
        lost.try_recv().is_err(),
        "the connection stayed up throughout"
    );
}
