//! The small scenario runs in the test suite: ~50 nodes, a third cut away for 30 s
//! while publishing continues, then healed. Checks the end state and determinism.

use murmur_sim::{Push, Scenario, Sim, Swizzle};

fn small() -> Scenario {
    // Embedded at build time: a test binary reused from another clone of the repo (the
    // target directory is shared) must not read a path that may be gone.
    toml::from_str(include_str!("../scenarios/small.toml")).expect("valid scenario")
}

/// The small scenario without its partition.
fn calm() -> Scenario {
    let mut sc = small();
    sc.partition = None;
    sc
}

#[test]
fn a_partitioned_fleet_heals_and_every_node_holds_every_event() {
    let r = Sim::new(small()).unwrap().run().unwrap();
    println!("{}", r.table());
    assert!(r.events > 500, "{r:?}");
    assert!(r.complete, "every interested node holds every event: {r:?}");
    let heal = r.converged_after_heal_ms.expect("converged after the heal");
    assert!(heal < 30_000.0, "converged {heal} ms after the heal");
    // Outside the partition, push reaches half the fleet within a few hops.
    assert!(r.t50_ms.0 < 500.0, "{r:?}");
}

#[test]
fn the_push_defaults_are_the_p2p_layers() {
    use murmur_p2p::gossip;
    let d = Scenario::default();
    assert_eq!(d.push, Push::Gossipsub);
    assert_eq!(
        (
            d.mesh_n,
            d.mesh_lo,
            d.mesh_hi,
            d.lazy,
            d.history,
            d.heartbeat_ms,
            d.ihave_ids
        ),
        (
            gossip::MESH_N,
            gossip::MESH_N_LOW,
            gossip::MESH_N_HIGH,
            gossip::GOSSIP_LAZY,
            gossip::HISTORY_GOSSIP,
            gossip::HEARTBEAT_MS,
            gossip::CONTROL_IDS
        )
    );
    assert_eq!(d.idontwant_above, Some(gossip::IDONTWANT_ABOVE as u64));
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = Sim::new(small()).unwrap().run().unwrap();
    let b = Sim::new(small()).unwrap().run().unwrap();
    assert_eq!(a.state_hash, b.state_hash);
    assert_eq!(a.steps, b.steps);
    assert_eq!(
        (a.t99_ms.0.to_bits(), a.push_bytes_per_event.to_bits()),
        (b.t99_ms.0.to_bits(), b.push_bytes_per_event.to_bits())
    );
    let mut other = small();
    other.seed += 1;
    let c = Sim::new(other).unwrap().run().unwrap();
    assert_ne!(a.steps, c.steps, "another seed, another run");
}

#[test]
fn churn_and_loss_still_end_complete() {
    let mut sc = calm();
    sc.churn_per_min = 0.2;
    sc.loss = 0.05;
    sc.duplicate = 0.02;
    // Nodes that leave just before publishing stops return 20 s later, 10 s before the
    // small scenario's 30 s of settling end; a sync message lost on the way stalls a
    // round for the 10 s request timeout. Give the last returners two more rounds.
    sc.settle_s = 60.0;
    let r = Sim::new(sc).unwrap().run().unwrap();
    assert!(r.complete, "{r:?}");
}

#[test]
fn plumtree_forms_a_tree_and_still_heals_a_partition() {
    // One publisher: the eager links prune down to a tree, so a node gets each event
    // about once, where a mesh of gossipsub's default size (D 6) delivers it several
    // times.
    let mut one = calm();
    one.publishers = 1;
    one.rate = 10.0;
    let mut wide = one.clone();
    (
        wide.mesh_n,
        wide.mesh_lo,
        wide.mesh_hi,
        wide.lazy,
        wide.history,
    ) = (6, 5, 12, 6, 3);
    let gossip = Sim::new(wide).unwrap().run().unwrap();
    one.push = Push::Plumtree;
    let tree = Sim::new(one).unwrap().run().unwrap();
    assert!(tree.complete && gossip.complete, "{tree:?} {gossip:?}");
    assert!(tree.redundancy < 0.3, "{tree:?}");
    assert!(gossip.redundancy > 1.0, "{gossip:?}");
    assert!(tree.push_bytes_per_event < gossip.push_bytes_per_event / 2.0);
    // The default scenario (five publishers, a third cut away) ends complete too.
    let mut sc = small();
    sc.push = Push::Plumtree;
    let r = Sim::new(sc).unwrap().run().unwrap();
    assert!(r.complete, "{r:?}");
    assert!(
        r.converged_after_heal_ms.is_some_and(|ms| ms < 30_000.0),
        "{r:?}"
    );
}

#[test]
fn forged_events_never_get_in_and_the_check_would_see_them() {
    // Three byzantine nodes publish events with bad signatures, by push and from their
    // own stores to anti-entropy.
    let mut sc = calm();
    sc.forgers = 3;
    let r = Sim::new(sc.clone()).unwrap().run().unwrap();
    assert!(r.forged > 100, "{r:?}");
    assert_eq!(r.violations, 0, "{:?}", r.violation_examples);
    assert!(r.complete, "{r:?}");
    // The same run with push verification turned off: the check catches it.
    sc.verify_push = false;
    let broken = Sim::new(sc).unwrap().run().unwrap();
    assert!(broken.violations > 0, "{broken:?}");
}

#[test]
fn nodes_that_return_without_their_store_get_everything_again() {
    let mut sc = calm();
    sc.churn_per_min = 0.2;
    sc.settle_s = 60.0;
    let kept = Sim::new(sc.clone()).unwrap().run().unwrap();
    sc.churn_wipe = 1.0;
    let wiped = Sim::new(sc).unwrap().run().unwrap();
    assert!(kept.complete && wiped.complete, "{wiped:?}");
    assert_eq!(wiped.violations, 0, "{:?}", wiped.violation_examples);
    // Nodes did lose their stores, and `complete` includes that every event a wiped
    // node held came back to it.
    assert_eq!(kept.refetched, 0);
    assert!(wiped.refetched > 500, "{wiped:?}");
    assert!(wiped.sync_bytes_per_event > kept.sync_bytes_per_event);
}

#[test]
fn swizzle_clog_heals() {
    // Ten nodes cut one by one every 2 s from 10 s, then restored in random order.
    let mut sc = calm();
    sc.swizzle = Some(Swizzle {
        k: 10,
        at: 10.0,
        step_s: 2.0,
    });
    let r = Sim::new(sc).unwrap().run().unwrap();
    assert!(r.complete, "{r:?}");
    let heal = r
        .converged_after_heal_ms
        .expect("converged after the last restore");
    assert!(heal < 30_000.0, "{heal} ms");
}

#[test]
fn a_slow_uplink_delays_events_but_loses_none() {
    let fast = Sim::new(calm()).unwrap().run().unwrap();
    let mut sc = calm();
    // 20 kB/s: an author's flood of one event to 8 neighbours takes ~0.2 s.
    sc.bandwidth = Some(20_000.0);
    let slow = Sim::new(sc).unwrap().run().unwrap();
    assert!(slow.complete, "{slow:?}");
    assert!(
        slow.t99_ms.0 > 3.0 * fast.t99_ms.0,
        "{:?} vs {:?}",
        slow.t99_ms,
        fast.t99_ms
    );
}

#[test]
fn a_cloned_key_is_proven_to_every_node() {
    // Two publishers' keys are copied onto other devices at 20 s, which publish their
    // own events from the same heads: both logs fork.
    let mut sc = calm();
    sc.clones = 2;
    let r = Sim::new(sc).unwrap().run().unwrap();
    assert_eq!(r.violations, 0, "{:?}", r.violation_examples);
    assert!(r.forks_met > 0, "{r:?}");
    assert!(r.complete, "{r:?}");
    // Every node ends up holding both proofs, not only those that met both sides.
    assert_eq!(r.fork_proven_at, Some(r.interested), "{r:?}");
}

#[test]
fn a_topic_few_nodes_want_needs_its_nodes_to_find_each_other() {
    // 20% of 300 nodes want the topic. With the links discovery happens to give (8 per
    // node, blind to topics), many of them have no neighbour that wants it and never
    // get its events; with the machine's topic-aware discovery (rendezvous lookups
    // until 3 connected peers replicate the pattern), all of them do.
    let mut sc = calm();
    sc.nodes = 300;
    sc.interested = 0.2;
    sc.topic_links = 0;
    let blind = Sim::new(sc.clone()).unwrap().run().unwrap();
    assert!(!blind.complete, "{blind:?}");
    sc.topic_links = 3;
    let aware = Sim::new(sc).unwrap().run().unwrap();
    assert!(aware.complete, "{aware:?}");
    assert_eq!(aware.violations, 0);
}

/// The retention scenario (1,000 nodes, each keeping the newest 20 events of each log
/// with the daemon's policy, 2% archives, churn with reset devices): nothing pruned is
/// stored again, no node stores what lies outside its window, and every pruning node
/// ends with exactly its window. Without window pulls, a device far behind takes more
/// than its window from a peer (the check counts them).
#[test]
fn retention_at_a_thousand_nodes_keeps_the_window_and_nothing_comes_back() {
    let sc: Scenario = toml::from_str(include_str!("../scenarios/retention.toml")).unwrap();
    let r = Sim::new(sc.clone()).unwrap().run().unwrap();
    println!("{}", r.table());
    let ret = r.retention.clone().expect("retention figures");
    assert_eq!(r.violations, 0, "{:?}", r.violation_examples);
    assert!(ret.pruned > 500_000, "{ret:?}");
    assert_eq!(ret.refetched_pruned, 0, "{ret:?}");
    assert_eq!(ret.stored_outside_window, 0, "{ret:?}");
    assert!(ret.converged_on_window, "{ret:?}");
    assert!(r.complete);
    // A reset device never held more than a steady node does between two passes.
    assert!(ret.peak_held_reset <= ret.peak_held.0, "{ret:?}");

    let mut without = sc;
    if let Some(r) = without.retention.as_mut() {
        r.window_pulls = false;
    }
    let r = Sim::new(without).unwrap().run().unwrap();
    let ret = r.retention.expect("retention figures");
    assert!(ret.stored_outside_window > 0, "{ret:?}");
    assert_eq!(ret.refetched_pruned, 0, "{ret:?}");
}

#[test]
fn a_closed_fleet_of_a_thousand_refuses_what_its_policy_refuses_and_learns_a_hidden_revocation_at_the_heal()
 {
    let sc: Scenario = toml::from_str(include_str!("../scenarios/permissions.toml")).unwrap();
    let r = Sim::new(sc.clone()).unwrap().run().unwrap();
    println!("{}", r.table());
    let f = r.fleet.clone().expect("fleet figures");
    assert_eq!(r.violations, 0, "{:?}", r.violation_examples);
    assert!(r.complete, "every honest node holds every permitted event");
    assert_eq!(
        f.knew, f.honest,
        "every honest node knows of the revocation: {f:?}"
    );
    // Hidden from the cut third until the heal (30 s after the revocation), then
    // known everywhere within seconds.
    let all = f.knew_after_s.1.expect("every node knew");
    assert!((30.0..40.0).contains(&all), "{f:?}");
    assert!(
        f.published_after > 0 && f.unprivileged_published > 0,
        "{f:?}"
    );
    assert!(
        f.stored_unknowing > 0,
        "the cut third took them before it knew: {f:?}"
    );
    assert!(f.refused.get("revoked").is_some_and(|n| *n > 0), "{f:?}");
    assert!(f.refused.get("no_grant").is_some_and(|n| *n > 0), "{f:?}");
    assert!(f.links_dropped > 0, "{f:?}");

    // Without the check in the machines, the invariant sees what gets in.
    let mut without = sc;
    without.nodes = 200;
    if let Some(f) = without.fleet.as_mut() {
        f.enforce = false;
    }
    let r = Sim::new(without).unwrap().run().unwrap();
    assert!(
        r.violations > 0,
        "the invariant must catch unpermitted events"
    );
}
