//! Gossip channels: how murmur topics map onto gossipsub topics.
//!
//! A node joins one gossip channel per interest pattern (`#`, `sensors/#`, `cmd/dev-7`),
//! not one per topic. Every member of a channel wants every event that matches its
//! pattern, so a member that stores a run can forward it to the rest of the mesh, and a
//! node with 10,000 topics under `sensors/#` still sits in one mesh. The channel count
//! is the interest's pattern count, bounded by [`MAX_JOINED`]; peers' announcements
//! never make a node join anything.
//!
//! A publisher sends a run into a set of channels that reaches every connected peer
//! that wants the topic (see [`cover`]): in a fleet whose nodes share a pattern that is
//! one channel, and one more per other pattern a neighbour wants the topic through. A
//! node that stores a run that came on one channel bridges it the same way to
//! neighbours that are not on that channel. The message id includes the channel, so
//! the same run on two channels is two messages, each deduplicated within its mesh.

use std::collections::{BTreeMap, BTreeSet};

use crate::topic::{Pattern, Topic};

/// The gossipsub topic of a channel is this prefix and the pattern.
pub const PREFIX: &str = "murmur:";

/// Most channels a node joins: the most interest patterns it may hold. rust-libp2p's
/// gossipsub refuses a peer's subscriptions past 100 by default; murmur nodes allow a
/// peer [`MAX_PER_PEER`].
pub const MAX_JOINED: usize = 32;

/// Channels of the fleet's own topics (`$fleet/health`, and in a closed fleet
/// `$fleet/policy`) that a node joins beside its [`MAX_JOINED`] interest patterns.
pub const FLEET_CHANNELS: usize = 2;

/// Most channels remembered per peer (room for nodes of a later version with more);
/// announcements past it are dropped.
pub const MAX_PER_PEER: usize = 64;

/// Kademlia keys under which nodes announce what they replicate (provider records),
/// and look up who replicates what they want: one per first topic segment
/// (`murmur/rv/1/sensors` for `sensors/#` and `sensors/+/temp`), and
/// [`WILDCARD_ROOT`] for patterns that start with a wildcard (`#`, `+/temp`).
pub const RENDEZVOUS_PREFIX: &str = "murmur/rv/1/";

/// The rendezvous segment of patterns that start with a wildcard.
pub const WILDCARD_ROOT: &str = "*";

/// The rendezvous key a node replicating `pattern` announces itself under.
pub fn rendezvous(pattern: &Pattern) -> String {
    let first = pattern.as_str().split('/').next().unwrap_or_default();
    let root = if first == "+" || first == "#" {
        WILDCARD_ROOT
    } else {
        first
    };
    format!("{RENDEZVOUS_PREFIX}{root}")
}

/// The keys to look up to find peers that may replicate topics of `pattern`: its own
/// rendezvous, and the wildcard one (a node replicating `#` or `+/temp` may hold
/// them). A node that replicates `#` finds other such nodes; nodes with narrower
/// interests find it, and links work both ways.
pub fn lookups(pattern: &Pattern) -> Vec<String> {
    let own = rendezvous(pattern);
    let wild = format!("{RENDEZVOUS_PREFIX}{WILDCARD_ROOT}");
    if own == wild {
        vec![own]
    } else {
        vec![own, wild]
    }
}

/// The gossipsub topic name of the channel for `pattern`.
pub fn name(pattern: &Pattern) -> String {
    format!("{PREFIX}{pattern}")
}

/// The pattern of a channel name, if it is one.
pub fn parse(name: &str) -> Option<Pattern> {
    Pattern::new(name.strip_prefix(PREFIX)?).ok()
}

/// The channels to send a run on `topic` into so that every peer in `peers` that wants
/// `topic` (one of its channels matches it) is on at least one of them, given that the
/// run already travels on `covered` (the channel it arrived on, or none for our own
/// events) and that we are members of `joined`.
///
/// Greedy: our own channels first (we are in their meshes), then the channel that
/// reaches the most peers still missing, until none is. Ties go to the broader
/// pattern (shorter), then the name, so every node picks the same channels and the
/// copies of a run deduplicate.
pub fn cover<P: Ord>(
    topic: &Topic,
    joined: &BTreeSet<Pattern>,
    peers: &BTreeMap<P, BTreeSet<Pattern>>,
    covered: Option<&Pattern>,
) -> Vec<Pattern> {
    let mut missing: Vec<&BTreeSet<Pattern>> = peers
        .values()
        .filter(|chans| chans.iter().any(|c| c.matches(topic)))
        .filter(|chans| covered.is_none_or(|c| !chans.contains(c)))
        .collect();
    let mut chosen = Vec::new();
    if covered.is_none() {
        // Our own events go into our own channels that match, at least the first one:
        // peers not yet known to us may be in that mesh.
        for c in joined.iter().filter(|c| c.matches(topic)) {
            let reaches = missing.iter().any(|chans| chans.contains(c));
            if reaches || chosen.is_empty() {
                missing.retain(|chans| !chans.contains(c));
                chosen.push(c.clone());
            }
        }
    }
    while !missing.is_empty() {
        let mut counts: BTreeMap<&Pattern, usize> = BTreeMap::new();
        for chans in &missing {
            for c in chans.iter().filter(|c| c.matches(topic)) {
                *counts.entry(c).or_default() += 1;
            }
        }
        let Some(best) = counts
            .into_iter()
            .max_by(|(a, n), (b, m)| {
                n.cmp(m)
                    .then(b.as_str().len().cmp(&a.as_str().len()))
                    .then(b.cmp(a))
            })
            .map(|(c, _)| c.clone())
        else {
            break;
        };
        missing.retain(|chans| !chans.contains(&best));
        chosen.push(best);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(ps: &[&str]) -> BTreeSet<Pattern> {
        ps.iter().map(|p| Pattern::new(*p).unwrap()).collect()
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn rendezvous_keys_are_the_first_segment_or_the_wildcard() {
        let p = |s: &str| Pattern::new(s).unwrap();
        assert_eq!(rendezvous(&p("sensors/+/temp")), "murmur/rv/1/sensors");
        assert_eq!(rendezvous(&p("sensors")), "murmur/rv/1/sensors");
        assert_eq!(rendezvous(&p("#")), "murmur/rv/1/*");
        assert_eq!(rendezvous(&p("+/temp")), "murmur/rv/1/*");
        assert_eq!(
            lookups(&p("sensors/#")),
            vec!["murmur/rv/1/sensors", "murmur/rv/1/*"]
        );
        assert_eq!(lookups(&p("#")), vec!["murmur/rv/1/*"]);
    }

    #[test]
    fn names_round_trip_and_strangers_are_not_channels() {
        let p = Pattern::new("sensors/+/temp").unwrap();
        assert_eq!(name(&p), "murmur:sensors/+/temp");
        assert_eq!(parse(&name(&p)), Some(p));
        assert_eq!(parse("sensors/a"), None);
        assert_eq!(parse("murmur:a/#/b"), None);
    }

    #[test]
    fn a_fleet_that_shares_a_pattern_uses_one_channel() {
        let joined = pats(&["#"]);
        let peers: BTreeMap<u8, _> = (0..5).map(|i| (i, pats(&["#"]))).collect();
        assert_eq!(
            cover(&t("sensors/7/temp"), &joined, &peers, None),
            vec![Pattern::new("#").unwrap()]
        );
        // A run that came on `#` reaches every neighbour already: no bridging.
        let hash = Pattern::new("#").unwrap();
        assert!(cover(&t("sensors/7/temp"), &joined, &peers, Some(&hash)).is_empty());
    }

    #[test]
    fn each_neighbour_that_wants_the_topic_is_reached_once() {
        let joined = pats(&["#"]);
        let mut peers = BTreeMap::new();
        peers.insert(1, pats(&["#"]));
        peers.insert(2, pats(&["sensors/#"]));
        peers.insert(3, pats(&["sensors/#", "cmd/#"]));
        peers.insert(4, pats(&["cmd/#"]));
        peers.insert(5, pats(&["sensors/7/temp"]));
        let got = cover(&t("sensors/7/temp"), &joined, &peers, None);
        assert_eq!(
            got,
            vec![
                Pattern::new("#").unwrap(),
                Pattern::new("sensors/#").unwrap(),
                Pattern::new("sensors/7/temp").unwrap(),
            ]
        );
        // Bridging a run that came on `sensors/#`: only peers 1 and 5 are not on it.
        let on = Pattern::new("sensors/#").unwrap();
        let got = cover(&t("sensors/7/temp"), &joined, &peers, Some(&on));
        assert_eq!(
            got,
            vec![
                Pattern::new("#").unwrap(),
                Pattern::new("sensors/7/temp").unwrap()
            ]
        );
        // cmd/x, which we do not replicate: peers 3 and 4 share `cmd/#`, peer 1 has `#`.
        let got = cover(&t("cmd/x"), &pats(&[]), &peers, None);
        assert_eq!(
            got,
            vec![Pattern::new("cmd/#").unwrap(), Pattern::new("#").unwrap()]
        );
    }

    #[test]
    fn a_peer_announcing_many_patterns_costs_at_most_one_channel() {
        let joined = pats(&["sensors/#"]);
        let mut peers = BTreeMap::new();
        peers.insert(1, pats(&["sensors/#"]));
        let hostile: Vec<String> = (0..MAX_PER_PEER).map(|i| format!("+/{i}/#")).collect();
        let mut h: BTreeSet<Pattern> = hostile
            .iter()
            .map(|p| Pattern::new(p.as_str()).unwrap())
            .collect();
        h.insert(Pattern::new("#").unwrap());
        h.insert(Pattern::new("sensors/+/temp").unwrap());
        peers.insert(2, h);
        let got = cover(&t("sensors/7/temp"), &joined, &peers, None);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], Pattern::new("sensors/#").unwrap());
    }

    #[test]
    fn own_events_go_out_even_before_any_peer_is_known() {
        let joined = pats(&["a/#", "#"]);
        let got = cover(&t("a/b"), &joined, &BTreeMap::<u8, _>::new(), None);
        assert_eq!(got, vec![Pattern::new("#").unwrap()]);
    }
}
