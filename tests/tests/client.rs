//! `murmur-client` against the real binary: what an application on the device uses.

mod common;

use common::Node;
use futures_util::StreamExt;
use murmur_client::api::{ChangeRequest, InterestRequest, Op, PublishRequest};
use murmur_client::{Client, ClientError, payload_request};

#[tokio::test]
async fn the_typed_client_publishes_reads_follows_and_reports_errors() {
    let n = Node::start("[p2p]\nenabled = false\n");
    let mut c = Client::new(&n.socket());

    // A follower from offset 0 sees everything published below, once, in order.
    let mut follower = Client::new(&n.socket());
    let stream = follower.follow("app/#", Some(0)).await.unwrap();
    let mut stream = std::pin::pin!(stream);

    let one = c.publish("app/a", "hello").await.unwrap();
    assert_eq!((one.topic.as_str(), one.seq, one.offset), ("app/a", 0, 0));
    let binary = c.publish("app/a", [0xff_u8, 0, 1]).await.unwrap();
    assert_eq!(binary.seq, 1);
    let batch = c
        .publish_batch(
            (0..10)
                .map(|i| payload_request("app/b", format!("b{i}").as_bytes()))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(batch.len(), 10);
    assert_eq!(batch[9].seq, 9);
    assert_eq!(batch[9].offset, 11);

    for want in 0..12u64 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("the follower gets every event")
            .expect("stream open")
            .expect("an event");
        assert_eq!(ev.offset, Some(want));
        if want == 1 {
            assert_eq!(ev.encoding, "base64");
            assert_eq!(ev.payload(), vec![0xff, 0, 1]);
        }
    }

    let page = c.read(Some("app/b"), 0, 100).await.unwrap();
    assert_eq!(page.events.len(), 10);
    assert_eq!(page.next, 12);
    let log = c.log("app/a", None, 0, 100).await.unwrap();
    assert_eq!(log.events[0].data, "hello");
    let st = c.status().await.unwrap();
    assert_eq!(st.events, 12);
    let topics = c.topics().await.unwrap();
    assert_eq!(topics.topics.len(), 2);

    // Documents through the same client.
    let ch = c
        .change_doc(&ChangeRequest {
            topic: "app/docs".into(),
            doc: "settings".into(),
            ops: vec![Op::Set {
                path: "mode".into(),
                value: serde_json::json!("eco"),
            }],
            message: None,
        })
        .await
        .unwrap();
    assert_eq!(ch.seq, 0);
    let d = c.doc("app/docs", "settings", "").await.unwrap();
    assert_eq!(d.value, serde_json::json!({"mode": "eco"}));
    assert_eq!(c.docs("app/docs").await.unwrap().docs, vec!["settings"]);

    // Errors are typed, with the API's stable code.
    let bad = c
        .publish_request(&PublishRequest {
            topic: "bad/+/topic".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    match bad {
        ClientError::Api { status, code, .. } => {
            assert_eq!(status.as_u16(), 400);
            assert_eq!(code, "invalid_topic");
        }
        other => panic!("{other:?}"),
    }
    let refused = c
        .change_interest(&InterestRequest {
            add: Some("a/#/b".into()),
            remove: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, ClientError::Api { .. }), "{refused:?}");
    let gone = Client::new(&n.dir.join("nothing.sock"))
        .status()
        .await
        .unwrap_err();
    assert!(matches!(gone, ClientError::NotRunning(_)), "{gone:?}");
}
