//! Human-readable and JSON output of the CLI.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use murmur_client::api::{
    EventJson, EventsPage, PeersResponse, Published, ReplicationJson, Status, TimeJson,
    TopicsResponse,
};
use murmur_store::check::Report;

fn time(t: TimeJson) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(t.ms)).to_string()
}

fn short(hex: &str) -> &str {
    hex.get(..8).unwrap_or(hex)
}

fn preview(ev: &EventJson) -> String {
    if ev.encoding == "utf8" {
        let one_line: String = ev
            .data
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if one_line.chars().count() > 120 {
            format!("{}…", one_line.chars().take(120).collect::<String>())
        } else {
            one_line
        }
    } else {
        format!("<{} bytes, base64>", ev.payload().len())
    }
}

fn json_line<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn status(s: &Status, repl: Option<&ReplicationJson>, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(&serde_json::json!({ "node": s, "replication": repl }));
    }
    println!("node id     {}", s.author);
    println!("version     {}", s.version);
    println!("data dir    {}", s.data_dir);
    println!(
        "uptime      {}",
        humantime::format_duration(Duration::from_secs(s.uptime_secs))
    );
    println!("sync        {}", s.sync);
    if s.pruned > 0 {
        println!(
            "events      {} ({} held, {} pruned by retention)",
            s.events, s.held, s.pruned
        );
    } else {
        println!("events      {}", s.events);
    }
    println!("topics      {} ({} logs)", s.topics, s.logs);
    println!("forks       {}", s.forks);
    println!(
        "ingest      {}/{} requests queued",
        s.ingest.queued, s.ingest.capacity
    );
    println!("followers   {}", s.followers);
    if let Some(m) = &s.mqtt {
        if let Some(l) = &m.listen {
            println!(
                "mqtt        listening on {l}, {} connections",
                m.connections
            );
        }
        for b in &m.bridges {
            println!(
                "bridge      {} → {} ({}): {}, {} forwarded, {}{} pending",
                b.name,
                b.broker,
                b.pattern,
                if b.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                },
                b.forwarded,
                b.pending,
                if b.pending_exact { "" } else { "+" }
            );
        }
    }
    match &s.peer_id {
        Some(p) => println!(
            "peer id     {p}\npeers       {} connected, {} sync sessions",
            s.peers, s.sync_sessions
        ),
        None => println!("peers       replication off"),
    }
    if let Some(f) = &s.fleet {
        println!("fleet       {f}");
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if s.disk_budget_bytes > 0 {
        println!(
            "disk        {:.1} MiB of a {:.0} MiB budget ({:.0}%)",
            mib(s.disk_bytes),
            mib(s.disk_budget_bytes),
            s.disk_bytes as f64 * 100.0 / s.disk_budget_bytes as f64
        );
    } else {
        println!("disk        {:.1} MiB", mib(s.disk_bytes));
    }
    if s.disk_full {
        println!(
            "            DISK FULL: publishing answers 507 and replication pulls nothing (it still serves peers) until space is freed; nothing acknowledged is lost"
        );
    }
    println!(
        "memory      {:.1} MiB resident",
        s.resident_bytes as f64 / (1 << 20) as f64
    );
    if let Some(d) = &s.docs {
        println!(
            "documents   {} in memory (~{:.1} MiB), {} changes applied, {} snapshots written",
            d.loaded,
            d.memory_bytes as f64 / (1 << 20) as f64,
            d.applied,
            d.snapshots
        );
        if d.snapshots_applied > 0 || d.snapshots_refused > 0 {
            println!(
                "            {} compacted histories filled from peers' snapshots, {} false snapshots set aside",
                d.snapshots_applied, d.snapshots_refused
            );
        }
    }
    if let Some(p) = &s.store_problem {
        println!("store       DAMAGED: {p}");
    }
    if s.publishing_held {
        println!(
            "publishing  HELD: repaired; waiting for a sync round with a peer on every topic to bring this node's own logs back"
        );
    }
    if let Some(c) = &s.clock {
        clock(c);
    }
    if let Some(r) = repl {
        replication(r);
    }
    Ok(())
}

fn clock(c: &murmur_client::api::ClockStatus) {
    let drift = humantime::format_duration(Duration::from_millis(c.max_drift_ms));
    match &c.worst {
        None => println!("clock       no remote clock beyond the {drift} drift limit"),
        Some(w) => {
            let secs = |ms: u64| humantime::format_duration(Duration::from_secs(ms / 1000));
            println!(
                "clock       {} events from clocks more than {drift} ahead (kept, not followed)",
                c.ahead_events
            );
            let ago = c.wall_ms.saturating_sub(w.seen_ms);
            println!(
                "            worst: {} was {} ahead, {} ago",
                w.author,
                secs(w.ahead_ms),
                secs(ago)
            );
        }
    }
}

fn replication(r: &ReplicationJson) {
    if r.held_out_of_order > 0 {
        println!(
            "held        {} gossiped events waiting for a gap to fill",
            r.held_out_of_order
        );
    }
    if r.topics.is_empty() {
        return;
    }
    println!();
    println!(
        "{:30}  {:16}  {:>8}  {:>8}  LAST ROUND",
        "TOPIC", "PEER", "BEHIND", "AHEAD"
    );
    for t in &r.topics {
        for p in &t.peers {
            let peer = p
                .peer
                .get(p.peer.len().saturating_sub(12)..)
                .unwrap_or(&p.peer);
            let gone = if p.connected { "" } else { " (disconnected)" };
            let stalled = p
                .stalled_secs
                .map(|s| format!(", STALLED: no progress for {s}s"))
                .unwrap_or_default();
            println!(
                "{:30}  …{:15}  {:>8}  {:>8}  {}s ago{gone}{stalled}",
                t.topic, peer, p.behind, p.ahead, p.seen_secs_ago
            );
        }
    }
}

pub fn published(ps: &[Published], json: bool) -> anyhow::Result<()> {
    for p in ps {
        if json {
            json_line(p)?;
        } else {
            println!(
                "published {} seq {} offset {} id {}",
                p.topic,
                p.seq,
                p.offset,
                short(&p.id)
            );
        }
    }
    Ok(())
}

pub fn event_line(ev: &EventJson, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(ev);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>8}  {}  {}  {}#{}  {}",
        ev.offset.map(|o| o.to_string()).unwrap_or_default(),
        time(ev.time),
        ev.topic,
        short(&ev.author),
        ev.seq,
        preview(ev)
    )?;
    out.flush()?;
    Ok(())
}

pub fn log(page: &EventsPage, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(page);
    }
    if page.events.is_empty() {
        println!("(no events)");
    }
    for ev in &page.events {
        println!(
            "{:>6}  {}  {}  {}",
            ev.seq,
            time(ev.time),
            short(&ev.id),
            preview(ev)
        );
    }
    Ok(())
}

pub fn retention(r: &murmur_client::api::RetentionJson, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(r);
    }
    let from = if r.source == "runtime" {
        "set at runtime (murmur retention reset goes back to the config's)"
    } else {
        "from the config file"
    };
    if r.rules.is_empty() {
        println!("no retention rules ({from}): every topic is kept whole");
    } else {
        println!("retention rules, {from}; the first that matches a topic decides:");
        for rule in &r.rules {
            let mut what = Vec::new();
            if let Some(a) = &rule.max_age {
                what.push(format!("events younger than {a}"));
            }
            if let Some(n) = rule.max_events_per_log {
                what.push(format!("the newest {n} per log"));
            }
            if let Some(b) = rule.max_bytes {
                what.push(format!("the newest {} per topic", size(b)));
            }
            if rule.keep {
                what.push("everything, never pruned".into());
            }
            println!("  {:24} keep {}", rule.pattern, what.join(" and "));
        }
        println!("  (topics no rule matches are kept whole)");
    }
    if r.max_disk_mb > 0 {
        println!(
            "disk budget {} MiB (store.max_disk_mb): past half of it the oldest events of topics not kept go",
            r.max_disk_mb
        );
    }
    Ok(())
}

pub fn topics(t: &TopicsResponse, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(t);
    }
    if t.topics.is_empty() {
        println!("(no topics)");
        return Ok(());
    }
    let width = t
        .topics
        .iter()
        .map(|t| t.topic.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:width$}  {:>5}  {:>9}  {:>10}  LATEST",
        "TOPIC", "LOGS", "EVENTS", "SIZE"
    );
    for topic in &t.topics {
        let latest = topic
            .logs
            .iter()
            .map(|l| l.head_time)
            .max_by_key(|t| (t.ms, t.logical));
        let forks = topic.logs.iter().filter(|l| l.frozen_at.is_some()).count();
        let pruned = topic.pruned;
        println!(
            "{:width$}  {:>5}  {:>9}  {:>10}  {}{}{}",
            topic.topic,
            topic.logs.len(),
            topic.events,
            size(topic.bytes),
            latest.map(time).unwrap_or_default(),
            if forks > 0 {
                format!("  ({forks} forked)")
            } else {
                String::new()
            },
            match (pruned, topic.oldest_time) {
                (0, _) => String::new(),
                (_, Some(o)) => format!(
                    "  ({pruned} pruned, {}; oldest held {})",
                    size(topic.pruned_bytes),
                    time(o)
                ),
                (_, None) => format!("  ({pruned} pruned, {})", size(topic.pruned_bytes)),
            }
        );
    }
    Ok(())
}

pub fn report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(&serde_json::json!({
            "clean": r.is_clean(), "logs": r.logs, "events": r.events, "arrivals": r.arrivals,
            "forks": r.forks, "problem_count": r.problem_count, "problems": r.problems,
        }));
    }
    println!(
        "checked {} logs, {} events, {} arrivals, {} fork proofs",
        r.logs, r.events, r.arrivals, r.forks
    );
    if r.is_clean() {
        println!("ok: every chain links, every signature verifies, every index is complete");
    } else {
        println!("{} problem(s):", r.problem_count);
        for p in &r.problems {
            println!("  - {p}");
        }
        if r.problem_count as usize > r.problems.len() {
            println!(
                "  … and {} more",
                r.problem_count as usize - r.problems.len()
            );
        }
    }
    Ok(())
}

pub fn peers(p: &PeersResponse, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(p);
    }
    println!("this node {}", p.peer_id);
    for a in &p.listen {
        println!("listening {a}");
    }
    if p.peers.is_empty() {
        println!("(no peers connected)");
        return Ok(());
    }
    println!(
        "{:52}  {:8}  {:8}  {:>8}  {:>6}  ADDRESS",
        "PEER", "FOUND BY", "PATH", "RTT", "SCORE"
    );
    for peer in &p.peers {
        let rtt = peer
            .rtt_ms
            .map(|r| format!("{r:.2} ms"))
            .unwrap_or_default();
        let score = peer.score.map(|s| format!("{s:.1}")).unwrap_or_default();
        println!(
            "{:52}  {:8}  {:8}  {:>8}  {:>6}  {}",
            peer.peer, peer.how, peer.path, rtt, score, peer.addr
        );
    }
    Ok(())
}

pub fn consumers(list: &murmur_client::api::ConsumersJson, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(list);
    }
    if list.consumers.is_empty() {
        println!("(no consumers; `murmur sub --consumer NAME PATTERN` makes one)");
        return Ok(());
    }
    println!(
        "{:24}  {:24}  {:>12}  {:>10}  {:9}  LAST ACK",
        "CONSUMER", "PATTERN", "NEXT OFFSET", "PENDING", "READING"
    );
    for c in &list.consumers {
        let pending = if c.pending_exact {
            c.pending.to_string()
        } else {
            format!("{}+", c.pending)
        };
        println!(
            "{:24}  {:24}  {:>12}  {:>10}  {:9}  {}",
            c.name,
            c.pattern.as_deref().unwrap_or("(every topic)"),
            c.next,
            pending,
            if c.streaming { "yes" } else { "no" },
            ago(c.acked_ms),
        );
    }
    println!("{} of at most {} consumers", list.consumers.len(), list.max);
    Ok(())
}

/// How long ago a time in ms since the epoch was, for people.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// A size for people: 64.0 MiB.
pub(crate) fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}
