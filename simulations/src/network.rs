//! The virtual clock and network: the event queue, links with their latency and
//! jitter, loss, duplication, upload bandwidth, partitions and swizzle-clog.

use super::*;

impl Sim {
    pub(crate) fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: t,
            seq: self.seq,
            ev,
        }));
    }

    pub(crate) fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    pub(crate) fn end(&self) -> u64 {
        ((self.sc.publish_s + self.sc.settle_s) * US as f64) as u64
    }

    pub(crate) fn connected(&self, a: usize, b: usize) -> bool {
        self.nodes[a].online
            && self.nodes[b].online
            && !self.nodes[a].cut
            && !self.nodes[b].cut
            && !(self.partitioned && self.nodes[a].side != self.nodes[b].side)
    }

    /// Node `i`'s neighbours it can reach now.
    pub(crate) fn reachable(&self, i: usize) -> Vec<usize> {
        self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|&p| self.connected(i, p))
            .collect()
    }

    /// A rendezvous lookup answered: node `i` dials up to `want` of the key's providers
    /// it has no link to (a new link, both ways; the machines meet at their next tick,
    /// as libp2p reports the connection). Dials of nodes that are away fail.
    pub(crate) fn found(&mut self, i: usize, key: &str, want: usize) {
        if !self.nodes[i].online {
            return;
        }
        let mut cands: Vec<usize> = self
            .providers
            .get(key)
            .map(|p| {
                p.iter()
                    .copied()
                    .filter(|&q| q != i && !self.nodes[i].neighbors.contains(&q))
                    .collect()
            })
            .unwrap_or_default();
        // Kademlia returns the providers the closest nodes keep, in no useful order.
        for k in 0..cands.len() {
            let j = self.rng.random_range(k..cands.len());
            cands.swap(k, j);
        }
        let mut made = 0;
        for q in cands {
            if made == want {
                break;
            }
            if !self.connected(i, q)
                || self.nodes[q].banned.contains(&i)
                || self.nodes[i].banned.contains(&q)
            {
                continue;
            }
            self.nodes[i].neighbors.push(q);
            self.nodes[q].neighbors.push(i);
            made += 1;
        }
    }

    /// Sends a message over the link a → b (lost, duplicated, delayed as configured).
    pub(crate) fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.send_after(0, from, to, msg);
    }

    /// Sends a message `extra` µs from now.
    pub(crate) fn send_after(&mut self, extra: u64, from: usize, to: usize, msg: Msg) {
        if !self.connected(from, to) || self.rng.random_range(0.0..1.0) < self.sc.loss {
            return;
        }
        let copies = if self.rng.random_range(0.0..1.0) < self.sc.duplicate {
            2
        } else {
            1
        };
        let base = self.link_latency(from, to);
        // The sender's uplink: messages leave one after another at `bandwidth`.
        let mut extra = extra;
        if let Some(bw) = self.sc.bandwidth.filter(|b| *b > 0.0) {
            let start = (self.now + extra).max(self.nodes[from].uplink_free);
            let done = start + (msg.wire_bytes() as f64 * US as f64 / bw) as u64;
            self.nodes[from].uplink_free = done;
            extra = done - self.now;
        }
        for _ in 0..copies {
            let j = self.sc.jitter.max(0.0);
            let lat = ((base * self.rng.random_range(1.0 - j..=1.0 + j)) as u64).max(1);
            let bytes = msg.wire_bytes();
            self.inflight[to] += bytes;
            self.peak_inflight = self.peak_inflight.max(self.inflight[to]);
            self.at(
                self.now + extra + lat,
                Ev::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    /// The latency of the link between `a` and `b` (either way), µs: drawn from
    /// `latency_ms` by a hash of the seed and the pair, so no table is kept.
    pub(crate) fn link_latency(&self, a: usize, b: usize) -> f64 {
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let mut z = self.sc.seed ^ (x << 32 | y).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        let (lo, hi) = self.sc.latency_ms;
        (lo + u * (hi.max(lo) - lo)) * 1000.0
    }
}
