//! `murmur fleet`: make a fleet, admit devices, grant, revoke, and look at it: its
//! members and policy (`status`) and every node's health (`nodes`, the default).
//!
//! Keys that sign (the fleet's root, admin keys) are files on the admin's machine and
//! never go to a daemon: this command signs certificates and policy entries itself and
//! hands only the signed result to the local daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use clap::Subcommand;
use murmur_client::Client;
use murmur_client::api::{FleetChange, FleetJson, FleetNodesJson, JoinRequest, PolicyRequest};
use murmur_core::fleet::{Cert, CertBody, Entry, Kind, Rule, SignedRule};
use murmur_core::health::Heartbeat;
use murmur_core::{AuthorId, Keypair};
use murmur_daemon::fleet::{cert_from_text, cert_to_text};
use murmur_daemon::keyfile;

/// Where a signing key is looked for when --key is not given.
const DEFAULT_KEY: &str = "fleet-root.key";

#[derive(Subcommand)]
pub enum FleetAction {
    /// Make a new fleet: a root key (keep it off the devices) and the line for
    /// every device's config
    Init {
        /// Where to write the root key (mode 0600; never overwritten)
        #[arg(long, default_value = DEFAULT_KEY, value_name = "FILE")]
        key: PathBuf,
    },
    /// Make an admin key certified by the root: it admits, grants and revokes, so the
    /// root key can stay offline
    Admin {
        /// The root key
        #[arg(long, default_value = DEFAULT_KEY, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the admin key (its certificate goes to FILE.cert)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long the admin certificate is valid, e.g. 1y, 90days
        #[arg(long, default_value = "1y", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Print a membership certificate for a device (its id: `murmur id` on it)
    Admit {
        /// The device's node id (64 hex digits)
        node: String,
        /// A role (repeat for several): the grants of each apply
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A topic pattern the device may write besides its roles' grants (repeat)
        #[arg(long = "topic", value_name = "PATTERN")]
        topics: Vec<String>,
        /// How long it is valid, e.g. 1y, 30days
        #[arg(long, default_value = "1y", value_parser = parse_duration)]
        expires: Duration,
        /// The signing key (root or admin)
        #[arg(long, env = "MURMUR_FLEET_KEY", default_value = DEFAULT_KEY, value_name = "FILE")]
        key: PathBuf,
    },
    /// Install this node's certificate (as `murmur fleet admit` printed it; `-` reads
    /// stdin)
    Join {
        /// The certificate (murmur-cert:…)
        cert: String,
    },
    /// Grant a role the right to publish (and with --docs, to write documents) in
    /// topic patterns; replaces the role's earlier grant. No pattern: the role may
    /// write nothing
    Grant {
        /// The role
        role: String,
        /// Topic patterns, e.g. sensors/#
        patterns: Vec<String>,
        /// Also let the role write documents in these topics
        #[arg(long)]
        docs: bool,
        /// Documents only: no data events
        #[arg(long, requires = "docs")]
        no_publish: bool,
        /// The signing key (root or admin)
        #[arg(long, env = "MURMUR_FLEET_KEY", default_value = DEFAULT_KEY, value_name = "FILE")]
        key: PathBuf,
    },
    /// Shut a node (or an admin key) out: its connections are dropped everywhere, its
    /// events timed from the effective time on are refused, and nodes that stored some
    /// before they knew take them back
    Revoke {
        /// The node id (or admin key) to revoke
        node: String,
        /// Why (shown in status and logs)
        #[arg(long)]
        reason: String,
        /// From when its events are refused: RFC 3339 (e.g. the time the device was
        /// stolen), default now. An earlier time takes back what it wrote since then,
        /// on every node
        #[arg(long, value_name = "TIME", conflicts_with = "everything")]
        at: Option<String>,
        /// Refuse everything it ever wrote, and take it back on every node (each log
        /// keeps its first event; document changes stay). For an admin key this also
        /// voids every certificate and grant it ever signed
        #[arg(long)]
        everything: bool,
        /// The signing key (root or admin)
        #[arg(long, env = "MURMUR_FLEET_KEY", default_value = DEFAULT_KEY, value_name = "FILE")]
        key: PathBuf,
    },
    /// Members, roles, expiry, grants and revocations, as this node knows them
    Status,
    /// Every node of the fleet from its heartbeat (also those this node never
    /// connected to): last seen, state, events, disk, memory, peers, lag, problems.
    /// The default of `murmur fleet`
    Nodes {
        /// Only nodes with a problem (stale, disk over 80%, growing lag, forks, a
        /// certificate expiring within 30 days…); exits 1 if there is any
        #[arg(long)]
        problems: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 1y, 90days, 12h)"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_node(s: &str) -> anyhow::Result<AuthorId> {
    s.trim().parse::<AuthorId>().map_err(|e| {
        anyhow::anyhow!("node id {s:?}: {e} (64 hex digits: `murmur id` on the device)")
    })
}

/// A signing key: the root (no certificate) or an admin (with the root's certificate
/// of it, next to the key as FILE.cert). Returns the key, the fleet's root and the
/// chain to put in what it signs.
fn signer(path: &Path) -> anyhow::Result<(Keypair, AuthorId, Option<Cert>)> {
    let key = keyfile::load(path).with_context(|| {
        format!(
            "cannot load the signing key {} (make one with `murmur fleet init`, or pass --key)",
            path.display()
        )
    })?;
    let cert_path = cert_path(path);
    match std::fs::read_to_string(&cert_path) {
        Ok(text) => {
            let cert = cert_from_text(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
            if cert.body.kind != Kind::Admin || cert.body.subject != key.author() {
                bail!(
                    "{} is not an admin certificate of this key",
                    cert_path.display()
                );
            }
            let root = cert.body.fleet;
            cert.verify(&root)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
            if cert.body.expires_ms < now_ms() {
                bail!("the admin certificate {} has expired", cert_path.display());
            }
            Ok((key, root, Some(cert)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let root = key.author();
            Ok((key, root, None))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", cert_path.display())),
    }
}

fn cert_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".cert");
    PathBuf::from(p)
}

fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| anyhow::anyhow!("time {s:?}: {e} (RFC 3339, e.g. 2026-11-30T18:00:00Z)"))?;
    Ok(ms(t.duration_since(UNIX_EPOCH).unwrap_or_default()))
}

fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

async fn publish(socket: &Path, entry: &Entry) -> anyhow::Result<FleetChange> {
    let req = PolicyRequest {
        entry_b64: base64::engine::general_purpose::STANDARD.encode(entry.encode()),
    };
    Ok(Client::new(socket).post("/v1/fleet/policy", &req).await?)
}

/// Runs a `murmur fleet` action; `socket` is asked for only by those that talk to the
/// daemon.
pub async fn run(
    action: FleetAction,
    socket: impl FnOnce() -> anyhow::Result<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match action {
        FleetAction::Init { key } => {
            let k = keyfile::create(&key)
                .with_context(|| format!("cannot create the root key {}", key.display()))?;
            println!("fleet root key written to {} (mode 0600)", key.display());
            println!();
            println!("Keep this file off the devices (and backed up: it cannot be replaced).");
            println!("Put this in every device's config (murmur.toml), in place of `open = true`:");
            println!();
            println!("[fleet]");
            println!("root = \"{}\"", k.author());
            println!();
            println!(
                "Then admit each device: `murmur fleet admit NODE_ID --role ROLE --key {}`",
                key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Admin { key, out, expires } => {
            let (root_key, root, chain) = signer(&key)?;
            if chain.is_some() {
                bail!(
                    "{} is an admin key: only the root key makes admins",
                    key.display()
                );
            }
            let admin = keyfile::create(&out)
                .with_context(|| format!("cannot create the admin key {}", out.display()))?;
            let now = now_ms();
            let cert = Cert::issue(
                CertBody {
                    fleet: root,
                    kind: Kind::Admin,
                    subject: admin.author(),
                    roles: Vec::new(),
                    topics: Vec::new(),
                    issued_ms: now,
                    expires_ms: now.saturating_add(ms(expires)),
                    issuer: root,
                },
                &root_key,
                None,
            );
            let cp = cert_path(&out);
            std::fs::write(&cp, format!("{}\n", cert_to_text(&cert)))
                .with_context(|| format!("cannot write {}", cp.display()))?;
            println!(
                "admin key written to {} and its certificate to {}",
                out.display(),
                cp.display()
            );
            println!(
                "It admits, grants and revokes until {}: pass --key {}",
                time_text(cert.body.expires_ms),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Admit {
            node,
            roles,
            topics,
            expires,
            key,
        } => {
            let subject = parse_node(&node)?;
            let (k, root, chain) = signer(&key)?;
            let now = now_ms();
            let body = CertBody {
                fleet: root,
                kind: Kind::Member,
                subject,
                roles,
                topics,
                issued_ms: now,
                expires_ms: now.saturating_add(ms(expires)),
                issuer: k.author(),
            };
            let cert = Cert::issue(body, &k, chain);
            cert.verify(&root).map_err(|e| anyhow::anyhow!("{e}"))?;
            if chain_expires_before(&cert) {
                eprintln!(
                    "note: the signing admin's certificate expires before this one; the device stays admitted (what an admin signed while valid stands)"
                );
            }
            println!("{}", cert_to_text(&cert));
            eprintln!(
                "certificate for {} (roles: {}), valid until {}; on the device: murmur fleet join <the line above>",
                subject.short(),
                cert.body.roles.join(", "),
                time_text(cert.body.expires_ms)
            );
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Join { cert } => {
            let text = if cert == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                cert
            };
            // Checked here too, for a clear message before the daemon is asked.
            cert_from_text(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
            let done: FleetChange = Client::new(&socket()?)
                .post(
                    "/v1/fleet/join",
                    &JoinRequest {
                        cert: text.trim().to_owned(),
                    },
                )
                .await?;
            println!("{}", done.message);
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Grant {
            role,
            patterns,
            docs,
            no_publish,
            key,
        } => {
            for p in &patterns {
                murmur_core::Pattern::new(p).map_err(|e| anyhow::anyhow!("pattern {p:?}: {e}"))?;
            }
            let (k, root, chain) = signer(&key)?;
            let entry = Entry::Rule(SignedRule::issue(
                root,
                Rule::Grant {
                    role,
                    topics: patterns,
                    publish: !no_publish,
                    docs,
                },
                now_ms(),
                &k,
                chain,
            ));
            let done = publish(&socket()?, &entry).await?;
            println!("{}", done.message);
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Revoke {
            node,
            reason,
            at,
            everything,
            key,
        } => {
            let subject = parse_node(&node)?;
            let now = now_ms();
            let effective_ms = match at {
                Some(t) => parse_time(&t)?,
                None if everything => 0,
                None => now,
            };
            let (k, root, chain) = signer(&key)?;
            let entry = Entry::Rule(SignedRule::issue(
                root,
                Rule::Revoke {
                    subject,
                    reason,
                    effective_ms,
                },
                now,
                &k,
                chain,
            ));
            let done = publish(&socket()?, &entry).await?;
            println!("{}", done.message);
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Status => {
            let f: FleetJson = Client::new(&socket()?).get("/v1/fleet").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                print_status(&f);
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Nodes { problems } => {
            let mut v: FleetNodesJson = Client::new(&socket()?).get("/v1/fleet/nodes").await?;
            let any = v.nodes.iter().any(|n| !n.flags.is_empty());
            if json {
                if problems {
                    v.nodes.retain(|n| !n.flags.is_empty());
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_nodes(&v, problems);
            }
            Ok(if problems && any {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn print_nodes(v: &FleetNodesJson, problems_only: bool) {
    let stale = v.nodes.iter().filter(|n| n.state == "stale").count();
    let flagged = v.nodes.iter().filter(|n| !n.flags.is_empty()).count();
    let total = usize::try_from(v.total)
        .unwrap_or(usize::MAX)
        .max(v.nodes.len());
    println!(
        "{total} nodes: {} up, {stale} stale, {flagged} with problems (a node is stale after 3 of its heartbeat intervals)",
        total - stale
    );
    if total > v.nodes.len() {
        println!("({} listed, problems first)", v.nodes.len());
    }
    if v.forgotten > 0 {
        println!(
            "({} more not heard from in fleet.forget_after: not listed)",
            v.forgotten
        );
    }
    if v.interval_ms == 0 {
        println!("(this node publishes no heartbeat: fleet.heartbeat_interval = \"0s\")");
    }
    if v.nodes.is_empty() {
        println!(
            "no heartbeats yet: each node publishes one every fleet.heartbeat_interval (30 s by default)"
        );
        return;
    }
    if problems_only && flagged == 0 {
        return;
    }
    println!();
    println!(
        "{:<16} {:<17} {:<6} {:>9} {:>10} {:>19} {:>9} {:>5} {:>8}  FLAGS",
        "HOST", "NODE", "STATE", "SEEN", "EVENTS", "DISK", "MEMORY", "PEERS", "LAG"
    );
    for n in v
        .nodes
        .iter()
        .filter(|n| !problems_only || !n.flags.is_empty())
    {
        let hb: Heartbeat = serde_json::from_value(n.heartbeat.clone()).unwrap_or_default();
        let disk = if hb.disk_budget_bytes > 0 {
            format!(
                "{}/{} {:>3}%",
                crate::output::size(hb.disk_bytes),
                crate::output::size(hb.disk_budget_bytes),
                hb.disk_bytes.saturating_mul(100) / hb.disk_budget_bytes
            )
        } else {
            crate::output::size(hb.disk_bytes)
        };
        let lag = if hb.lag_growing() {
            format!("{}↑", hb.lag)
        } else {
            hb.lag.to_string()
        };
        let relayed = hb.peers.iter().filter(|p| p.path == "relayed").count();
        let peers = if relayed > 0 {
            format!("{}({relayed}r)", hb.peer_count)
        } else {
            hb.peer_count.to_string()
        };
        let mut host: String = n.host.chars().take(15).collect();
        if n.this_node {
            host.push('*');
        }
        println!(
            "{:<16} {:<17} {:<6} {:>9} {:>10} {:>19} {:>9} {:>5} {:>8}  {}",
            host,
            format!("{}…", &n.node[..n.node.len().min(16)]),
            n.state,
            ago(n.seen_secs_ago),
            hb.events,
            disk,
            crate::output::size(hb.memory_bytes),
            peers,
            lag,
            n.flags.join(",")
        );
        if let Some(e) = hb
            .cert_expires_ms
            .filter(|_| n.flags.iter().any(|f| f == "cert_expiring"))
        {
            println!("{:<16} certificate expires {}", "", time_text(e));
        }
    }
    println!();
    println!(
        "* this node. LAG: events behind at its last rounds (↑ growing). PEERS: (Nr) relayed."
    );
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn chain_expires_before(cert: &Cert) -> bool {
    cert.chain
        .as_ref()
        .is_some_and(|c| c.body.expires_ms < cert.body.expires_ms)
}

fn print_status(f: &FleetJson) {
    if f.mode == "open" {
        println!(
            "fleet:   open (fleet.open = true): every peer that connects is a member and may write anything"
        );
        println!("node:    {}", f.node);
        return;
    }
    println!("fleet:   closed, root {}", f.root);
    println!("node:    {}", f.node);
    match &f.own {
        Some(m) => println!(
            "this node: admitted, roles [{}], expires {} ({})",
            m.roles.join(", "),
            time_text(m.expires.ms),
            m.state
        ),
        None => println!(
            "this node: NOT admitted: peers refuse it. An admin runs `murmur fleet admit {}`, then here `murmur fleet join CERT`",
            f.node
        ),
    }
    println!();
    println!(
        "{:<10} {:<24} {:<22} {:<13} CONNECTED",
        "NODE", "ROLES", "EXPIRES", "STATE"
    );
    for m in &f.members {
        println!(
            "{:<10} {:<24} {:<22} {:<13} {}",
            &m.node[..8.min(m.node.len())],
            m.roles.join(","),
            time_text(m.expires.ms),
            m.state,
            if m.connected { "yes" } else { "" }
        );
    }
    let soon = f
        .members
        .iter()
        .filter(|m| m.state == "expires_soon")
        .count();
    if soon > 0 {
        println!("\n{soon} certificate(s) expire within 30 days: admit those nodes again");
    }
    println!();
    if f.grants.is_empty() {
        println!("grants: none (members write only what their certificates name)");
    }
    for g in &f.grants {
        let rights = match (g.publish, g.docs) {
            (true, true) => "publish, documents",
            (true, false) => "publish",
            (false, true) => "documents",
            (false, false) => "nothing",
        };
        println!(
            "grant:  {} may {} on {}",
            g.role,
            rights,
            if g.topics.is_empty() {
                "-".into()
            } else {
                g.topics.join(", ")
            }
        );
    }
    for r in &f.revocations {
        let back = if r.taken_back > 0 {
            format!(" ({} events taken back here)", r.taken_back)
        } else {
            String::new()
        };
        println!(
            "revoked: {} from {}: {}{back}",
            &r.node[..8.min(r.node.len())],
            time_text(r.effective.ms),
            r.reason
        );
    }
}
