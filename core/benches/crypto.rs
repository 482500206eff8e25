//! Per-core rates of the cryptographic work murmur does per event: sign, verify one by
//! one, batch-verify, range-verify (one signature per range + hash links), and the
//! encode/decode round trip. Throughput is reported in events per second.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use murmur_core::verify::{verify_batch, verify_range};
use murmur_core::{Draft, Event, Keypair, MAX_EVENT_BYTES, Payload, Seq, Timestamp, Topic};
use std::hint::black_box;
use std::time::Duration;

const PAYLOAD: usize = 256;

fn chain(key: &Keypair, len: usize) -> Vec<Event> {
    murmur_core::testing::chain_with(key, "bench/sensors/temp", len, |_| {
        Bytes::from(vec![b'x'; PAYLOAD])
    })
}

fn benches(c: &mut Criterion) {
    let key = Keypair::from_seed(&[1; 32]);
    let events = chain(&key, 256);
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign (encode+hash+sign)", |b| {
        let d = Draft {
            topic: Topic::new("bench/sensors/temp").unwrap(),
            seq: Seq(5),
            prev: Some(events[4].id()),
            time: Timestamp::from_ms(1),
            body: Payload::data(vec![b'x'; PAYLOAD]),
        };
        b.iter(|| Event::sign(black_box(&d), &key).unwrap())
    });
    g.bench_function("verify one", |b| {
        b.iter(|| black_box(&events[7]).verify().unwrap())
    });
    g.bench_function("decode (bounded, canonical check, id hash)", |b| {
        let bytes = events[7].bytes().clone();
        b.iter(|| Event::decode(black_box(bytes.clone()), MAX_EVENT_BYTES).unwrap())
    });
    g.finish();

    for n in [64usize, 256] {
        // Independent events from many authors, as live gossip delivers them.
        let singles: Vec<Event> = (0..n)
            .map(|i| chain(&Keypair::from_seed(&[i as u8; 32]), 1).remove(0))
            .collect();
        let mut g = c.benchmark_group(format!("batch of {n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("verify one by one", |b| {
            b.iter(|| singles.iter().for_each(|e| e.verify().unwrap()))
        });
        g.bench_function("verify_batch", |b| {
            b.iter(|| assert!(verify_batch(black_box(&singles)).iter().all(Result::is_ok)))
        });
        g.bench_function("verify_range (one log)", |b| {
            b.iter(|| verify_range(black_box(&events[..n]), None).unwrap())
        });
        g.bench_function("decode + verify_range (catch-up path)", |b| {
            let raw: Vec<Bytes> = events[..n].iter().map(|e| e.bytes().clone()).collect();
            b.iter_batched(
                || raw.clone(),
                |raw| {
                    let evs: Vec<Event> = raw
                        .into_iter()
                        .map(|b| Event::decode(b, MAX_EVENT_BYTES).unwrap())
                        .collect();
                    verify_range(&evs, None).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group! {
    name = crypto;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = benches
}
criterion_main!(crypto);
