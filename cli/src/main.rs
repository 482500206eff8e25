//! `murmur`: the daemon and its command-line client.
//!
//! `murmur daemon` runs the node; every other subcommand talks to a running daemon over
//! its control socket, except `init`, `id`, `verify` and `repair`, which work offline on the data
//! directory.

mod doc;
mod fleet;
mod output;
mod stream;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand};
use hyper::Method;
use murmur_client::api::{
    BatchRequest, BatchResponse, EventJson, EventsPage, PublishRequest, Published, Status,
    TopicsResponse,
};
use murmur_client::{Client, encode_query};
use murmur_daemon::config::{self, Config, KEY_FILE};
use murmur_daemon::{keyfile, node};
use tokio_util::sync::CancellationToken;

/// murmur: peer-to-peer event replication for edge and IoT fleets.
///
/// Applications publish events to topics through the local daemon; the daemon signs
/// them, chains them per author and topic, and stores them durably in RocksDB.
#[derive(Parser)]
#[command(
    name = "murmur",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Data directory (node key, database, socket) [default: ~/.local/share/murmur]
    #[arg(long, global = true, env = "MURMUR_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Control socket of the daemon to talk to [default: <data dir>/murmur.sock]
    #[arg(long, global = true, env = "MURMUR_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable JSON output instead of tables
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the node key and a commented config file
    Init,
    /// Run the node (until SIGINT or SIGTERM)
    Daemon(DaemonArgs),
    /// Print this node's id (its public key, the author of its events)
    Id,
    /// Show the running daemon's state
    Status,
    /// Publish an event (DATA as an argument, `-` or nothing for stdin, or --file)
    Pub(PubArgs),
    /// Follow events of topics matching PATTERN (MQTT-style: `sensors/+/temp`, `fleet/#`)
    Sub(SubArgs),
    /// Read one log (an author's events in a topic)
    Log(LogArgs),
    /// List topics with their logs and heads; add or remove replicated topic patterns
    Topics {
        #[command(subcommand)]
        action: Option<TopicsAction>,
    },
    /// Show or change retention rules at runtime (kept across restarts; first match wins)
    Retention {
        #[command(subcommand)]
        action: Option<RetentionAction>,
    },
    /// Shared documents (automerge): get, set, delete, counters, lists, text, history
    Doc {
        #[command(subcommand)]
        action: doc::DocAction,
    },
    /// The fleet: every node's health (the default: `murmur fleet nodes`), and
    /// membership and permissions: init, admin, admit, join, grant, revoke, status
    Fleet {
        #[command(subcommand)]
        action: Option<fleet::FleetAction>,
    },
    /// Named consumers (server-side cursors of `murmur sub --consumer`): list them with
    /// their lag, or delete one
    Consumers {
        #[command(subcommand)]
        action: Option<ConsumersAction>,
    },
    /// Print the web dashboard's URL, with its token (needs api.http_listen)
    Dashboard {
        /// Print only the API token (for Prometheus' credentials_file, or curl -H
        /// "Authorization: Bearer …")
        #[arg(long)]
        token: bool,
    },
    /// Connected peers: id, address, how found, latency
    Peers,
    /// Connect to a peer (a multiaddr such as /ip4/192.0.2.7/tcp/7470/p2p/12D3…)
    Dial {
        /// The address
        addr: String,
    },
    /// Run an anti-entropy round now, with every connected peer or one
    Sync {
        /// Peer id (default: every connected peer)
        peer: Option<String>,
    },
    /// Check every chain, signature and index of a stopped node's data directory
    Verify,
    /// Salvage a stopped node's damaged database: keep a copy, rebuild it from every
    /// event that verifies, check it (peers send back what was lost)
    Repair {
        /// Only lift the publishing hold a repair leaves (for a node none of whose peers
        /// will ever come back); rebuilds nothing
        #[arg(long)]
        confirm_own_logs: bool,
    },
    /// Print a new pre-shared fleet key (for p2p.psk_file) to stdout
    Genpsk,
    /// Print shell completions
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConsumersAction {
    /// List every consumer: pattern, next offset, pending events, whether it is read
    List,
    /// Delete a consumer (its stream ends; the events stay)
    Rm {
        /// The consumer's name
        name: String,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Replicate topics matching PATTERN (kept across restarts)
    Add {
        /// MQTT-style pattern, e.g. fleet/#
        pattern: String,
    },
    /// Stop replicating PATTERN (events already stored stay)
    Remove {
        /// A pattern added before
        pattern: String,
    },
}

#[derive(Subcommand)]
enum RetentionAction {
    /// Add a rule for PATTERN, or replace the one it has (a new rule goes first: the
    /// first rule that matches a topic decides)
    Set {
        /// MQTT-style pattern, e.g. sensors/#
        pattern: String,
        /// Keep events younger than this (event time), e.g. 7days, 12h
        #[arg(long, value_name = "AGE")]
        max_age: Option<String>,
        /// Keep this many newest events per log (author and topic); 1 = latest only
        #[arg(long, value_name = "N")]
        max_events: Option<u64>,
        /// Keep the newest SIZE of each topic (its logs together), e.g. 64MiB; the
        /// oldest events go first
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_bytes: Option<u64>,
        /// Never prune these topics
        #[arg(long, conflicts_with_all = ["max_age", "max_events", "max_bytes"])]
        keep: bool,
    },
    /// Remove the rule for PATTERN
    Rm {
        /// A pattern of a rule in force
        pattern: String,
    },
    /// Drop the rules set at runtime: the config file's [[retention]] apply again
    Reset,
}

#[derive(Args)]
struct DaemonArgs {
    /// Config file [default: <data dir>/murmur.toml if it exists]
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Do not discover peers by mDNS (overrides p2p.mdns)
    #[arg(long)]
    no_mdns: bool,
    /// libp2p listen address (repeatable; overrides p2p.listen)
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Peer to dial and bootstrap from (repeatable; added to p2p.bootstrap)
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
}

#[derive(Args)]
struct PubArgs {
    /// Topic, e.g. sensors/kitchen/temp
    topic: String,
    /// The payload; `-` or absent reads stdin
    data: Option<String>,
    /// Read the payload from a file
    #[arg(long, short, conflicts_with = "data", value_name = "FILE")]
    file: Option<PathBuf>,
    /// MIME type of the payload, e.g. application/json
    #[arg(long, short = 't')]
    content_type: Option<String>,
    /// Publish each line of the input as its own event (sent in batches)
    #[arg(long)]
    lines: bool,
    /// Events per request with --lines
    #[arg(long, default_value_t = 1000, requires = "lines")]
    batch: usize,
    /// An idempotency key: run again with the same key (within api.idempotency_window,
    /// 24 h), the command prints what the first run published and stores nothing
    #[arg(long, value_name = "KEY", conflicts_with = "lines")]
    key: Option<String>,
}

#[derive(Args)]
struct SubArgs {
    /// Topic pattern: `+` matches one segment, a final `#` matches the rest
    pattern: String,
    /// Start from the first stored event
    #[arg(long, conflicts_with = "from")]
    from_start: bool,
    /// Start at this local offset (resume: last offset seen + 1) [default: only new events]
    #[arg(long, value_name = "OFFSET")]
    from: Option<u64>,
    /// Exit after this many events
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Read on past events that retention pruned on this node (otherwise resuming
    /// from an offset they were at fails with `pruned`, naming where to resume)
    #[arg(long)]
    skip_pruned: bool,
    /// Read as the named consumer: start after the last event it acknowledged (a new
    /// consumer starts at new events, or --from), and acknowledge each event once it
    /// is printed. Unacknowledged events are sent again on the next run.
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
}

#[derive(Args)]
struct LogArgs {
    /// The topic
    topic: String,
    /// Author id (hex) [default: this node]
    #[arg(long)]
    author: Option<String>,
    /// First seq to show
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Most events to show
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// jemalloc, for the reason in `murmur_daemon::alloc`.
#[global_allocator]
static ALLOC: murmur_daemon::alloc::Jemalloc = murmur_daemon::alloc::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command whose output is cut (`murmur status | head -1`) ends quietly, as Unix
    // tools do. SIGPIPE stays ignored (a write to the daemon's socket that fails is an
    // error to report, not a silent death): a print that panics on a closed stdout
    // exits here instead.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(STDOUT_CLOSED);
        }
        default_hook(info);
    }));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("murmur: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if stdout_closed(&e) => ExitCode::from(STDOUT_CLOSED as u8),
        Err(e) => {
            eprintln!("murmur: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status of a command whose stdout was closed: what a shell reports for a
/// process SIGPIPE ended (128 + 13).
const STDOUT_CLOSED: i32 = 141;

/// Whether `e` is a write to a closed stdout (not a broken connection to the daemon,
/// which is reported).
fn stdout_closed(e: &anyhow::Error) -> bool {
    !e.chain()
        .any(|c| c.downcast_ref::<murmur_client::ClientError>().is_some())
        && e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        })
}

/// A size with an optional unit (64MiB, 1GB, 4096), in bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (e.g. 64MiB, 1GB, 4096)"))
}

/// Where the packaged service keeps its config and data (`packaging/`).
const SYSTEM_CONFIG: &str = "/etc/murmur/murmur.toml";
const SYSTEM_DATA_DIR: &str = "/var/lib/murmur";

/// The data directory: --data-dir (or MURMUR_DATA_DIR), else the user's; on a device
/// where murmur runs as the packaged service and the user has none of their own, the
/// service's.
fn data_dir(g: &Global) -> anyhow::Result<PathBuf> {
    let dir = config::resolve_data_dir(g.data_dir.as_deref(), None)?;
    if g.data_dir.is_none() && !dir.exists() && std::path::Path::new(SYSTEM_CONFIG).exists() {
        return Ok(PathBuf::from(SYSTEM_DATA_DIR));
    }
    Ok(dir)
}

/// The config a client command reads: the data directory's, or for the packaged
/// service's data directory the service's (`/etc/murmur/murmur.toml`, as its unit
/// says), and its path.
fn client_config(dir: &std::path::Path) -> anyhow::Result<(Config, PathBuf)> {
    let system = std::path::Path::new(SYSTEM_CONFIG);
    if dir == std::path::Path::new(SYSTEM_DATA_DIR) && system.exists() {
        return Ok((Config::load(system)?, system.to_path_buf()));
    }
    Ok((Config::discover(None, dir)?, dir.join(config::CONFIG_FILE)))
}

/// Offline commands on the packaged service's data directory, run as root, would
/// leave files the service's own user cannot open: said before they start.
fn warn_if_service_dir_as_root(dir: &std::path::Path, what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && dir == std::path::Path::new(SYSTEM_DATA_DIR) {
        eprintln!(
            "note: {dir} belongs to the murmur service; files written as root may be unreadable to it. \
             Prefer: systemctl stop murmur; runuser -u murmur -- murmur {what}",
            dir = dir.display()
        );
    }
}

/// The socket to talk to: --socket, else the data directory's config, else the default.
fn socket(g: &Global) -> anyhow::Result<PathBuf> {
    if let Some(s) = &g.socket {
        return Ok(s.clone());
    }
    let dir = data_dir(g)?;
    let (cfg, _) = client_config(&dir)?;
    Ok(cfg.socket_path(&dir))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init => init(g),
        Command::Daemon(args) => daemon(g, args).await,
        Command::Id => {
            let dir = data_dir(g)?;
            let path = dir.join(KEY_FILE);
            if !path.exists() {
                bail!(
                    "no node key in {} (run `murmur init` or start the daemon once)",
                    dir.display()
                );
            }
            let key = keyfile::load(&path)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "author": key.author().to_string() })
                );
            } else {
                println!("{}", key.author());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let mut c = Client::new(&socket(g)?);
            let st: Status = c.get("/v1/status").await?;
            let repl: Option<murmur_client::api::ReplicationJson> = if st.peer_id.is_some() {
                c.get("/v1/replication").await.ok()
            } else {
                None
            };
            output::status(&st, repl.as_ref(), g.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pub(args) => publish(g, args).await,
        Command::Doc { action } => doc::run(&socket(g)?, g.json, action).await,
        Command::Sub(args) => subscribe(g, args).await,
        Command::Log(args) => {
            let mut path = format!(
                "/v1/log?topic={}&from={}&limit={}",
                encode_query(&args.topic),
                args.from,
                args.limit
            );
            if let Some(a) = &args.author {
                path.push_str(&format!("&author={}", encode_query(a)));
            }
            let page: EventsPage = Client::new(&socket(g)?).get(&path).await?;
            output::log(&page, g.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { action } => {
            let mut c = Client::new(&socket(g)?);
            let req = match action {
                None => None,
                Some(TopicsAction::Add { pattern }) => Some(murmur_client::api::InterestRequest {
                    add: Some(pattern),
                    remove: None,
                }),
                Some(TopicsAction::Remove { pattern }) => {
                    Some(murmur_client::api::InterestRequest {
                        add: None,
                        remove: Some(pattern),
                    })
                }
            };
            if let Some(req) = req {
                let r: murmur_client::api::InterestResponse = c.post("/v1/interest", &req).await?;
                if g.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("replicating: {}", r.patterns.join(", "));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let t: TopicsResponse = c.get("/v1/topics").await?;
            let interest: Option<murmur_client::api::InterestResponse> =
                c.get("/v1/interest").await.ok();
            output::topics(&t, g.json)?;
            if let (Some(i), false) = (interest, g.json) {
                println!("\nreplicating: {}", i.patterns.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retention { action } => {
            use murmur_client::api::{RetentionJson, RetentionRequest, RetentionRuleJson};
            let mut c = Client::new(&socket(g)?);
            let now: RetentionJson = c.get("/v1/retention").await?;
            let req = match action {
                None => None,
                Some(RetentionAction::Reset) => Some(RetentionRequest {
                    rules: None,
                    reset: true,
                }),
                Some(RetentionAction::Set {
                    pattern,
                    max_age,
                    max_events,
                    max_bytes,
                    keep,
                }) => {
                    let rule = RetentionRuleJson {
                        pattern: pattern.clone(),
                        max_age,
                        max_events_per_log: max_events,
                        max_bytes,
                        keep,
                    };
                    let mut rules = now.rules.clone();
                    match rules.iter_mut().find(|r| r.pattern == pattern) {
                        Some(r) => *r = rule,
                        None => rules.insert(0, rule),
                    }
                    Some(RetentionRequest {
                        rules: Some(rules),
                        reset: false,
                    })
                }
                Some(RetentionAction::Rm { pattern }) => {
                    let mut rules = now.rules.clone();
                    let before = rules.len();
                    rules.retain(|r| r.pattern != pattern);
                    anyhow::ensure!(
                        rules.len() < before,
                        "no retention rule for {pattern:?} (murmur retention lists them)"
                    );
                    Some(RetentionRequest {
                        rules: Some(rules),
                        reset: false,
                    })
                }
            };
            let shown = match req {
                Some(req) => c.post("/v1/retention", &req).await?,
                None => now,
            };
            output::retention(&shown, g.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet { action } => {
            let action = action.unwrap_or(fleet::FleetAction::Nodes { problems: false });
            fleet::run(action, || socket(g), g.json).await
        }
        Command::Consumers { action } => {
            consumers(g, action.unwrap_or(ConsumersAction::List)).await
        }
        Command::Dashboard { token } => dashboard(g, token),
        Command::Peers => {
            let p: murmur_client::api::PeersResponse =
                Client::new(&socket(g)?).get("/v1/peers").await?;
            output::peers(&p, g.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dial { addr } => {
            let mut c = Client::new(&socket(g)?);
            let body = serde_json::to_vec(&murmur_client::api::DialRequest { addr: addr.clone() })?;
            c.call(
                Method::POST,
                "/v1/dial",
                Some("application/json"),
                Bytes::from(body),
            )
            .await?;
            if !g.json {
                println!("dialing {addr}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { peer } => {
            let mut c = Client::new(&socket(g)?);
            let body = serde_json::to_vec(&murmur_client::api::SyncRequest { peer: peer.clone() })?;
            c.call(
                Method::POST,
                "/v1/sync",
                Some("application/json"),
                Bytes::from(body),
            )
            .await?;
            if !g.json {
                println!(
                    "sync round started with {}",
                    peer.as_deref().unwrap_or("every connected peer")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => verify(g).await,
        Command::Repair { confirm_own_logs } => repair(g, confirm_own_logs).await,
        Command::Genpsk => {
            print!("{}", murmur_daemon::psk_file(&keyfile::random_bytes()?));
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "murmur", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `murmur dashboard`: the URL of the dashboard with the token in its fragment (which
/// the browser keeps to itself: it is not sent to the server, nor logged).
fn dashboard(g: &Global, token_only: bool) -> anyhow::Result<ExitCode> {
    let dir = data_dir(g)?;
    let (cfg, cfg_path) = client_config(&dir)?;
    let path = dir.join(murmur_daemon::server::dashboard::TOKEN_FILE);
    let Some(addr) = cfg.api.http_listen else {
        bail!(
            "the dashboard is off: set `http_listen = \"127.0.0.1:7480\"` under [api] in {} and restart the daemon",
            cfg_path.display()
        );
    };
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no token yet in {}: the daemon makes it when it starts with api.http_listen set",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    if token_only {
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "url": format!("http://{host}/"), "token": token })
        );
    } else {
        println!("http://{host}/#token={token}");
    }
    Ok(ExitCode::SUCCESS)
}

fn init(g: &Global) -> anyhow::Result<ExitCode> {
    // The user's own (never the packaged service's, which its package set up).
    let dir = config::resolve_data_dir(g.data_dir.as_deref(), None)?;
    node::ensure_data_dir(&dir)?;
    let key_path = dir.join(KEY_FILE);
    let (key, created) = keyfile::load_or_create(&key_path)?;
    let cfg_path = dir.join(config::CONFIG_FILE);
    let cfg_created = if cfg_path.exists() {
        false
    } else {
        std::fs::write(&cfg_path, config::EXAMPLE)
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
        true
    };
    if g.json {
        println!(
            "{}",
            serde_json::json!({
                "author": key.author().to_string(), "data_dir": dir, "key_created": created,
                "config": cfg_path, "config_created": cfg_created,
            })
        );
    } else {
        let note = |c: bool| if c { "created" } else { "exists, kept" };
        println!("data dir  {}", dir.display());
        println!("node key  {} ({})", key_path.display(), note(created));
        println!("config    {} ({})", cfg_path.display(), note(cfg_created));
        println!("node id   {}", key.author());
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::try_new(s).context("invalid RUST_LOG")?,
        _ => EnvFilter::try_new(&cfg.log.level).context("invalid log.level in the config")?,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn daemon(g: &Global, args: DaemonArgs) -> anyhow::Result<ExitCode> {
    // The config file may name the data dir, and the data dir may hold the config file.
    let explicit = args.config.as_deref().map(Config::load).transpose()?;
    let dir = config::resolve_data_dir(g.data_dir.as_deref(), explicit.as_ref())?;
    let mut cfg = match explicit {
        Some(c) => c,
        None => Config::discover(None, &dir)?,
    };
    if let Some(s) = &g.socket {
        cfg.api.socket = Some(s.clone());
    }
    if args.no_mdns {
        cfg.p2p.mdns = false;
    }
    if !args.listen.is_empty() {
        cfg.p2p.listen = args.listen;
    }
    cfg.p2p.bootstrap.extend(args.bootstrap);
    cfg.validate()?;
    init_tracing(&cfg)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    // The node runs again on the same data directory when its store must be reopened
    // (RocksDB stays stopped after a full disk until then).
    while node::run(dir.clone(), cfg.clone(), shutdown.clone()).await? == node::Exit::Reopen {
        tracing::info!("reopening the store");
    }
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: clean shutdown. Second: exit at once.
async fn signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("signal received; shutting down (send it again to exit at once)");
    token.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("murmur: second signal, exiting without a clean shutdown");
    std::process::exit(130);
}

fn read_input(args: &PubArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(f) = &args.file {
        return std::fs::read(f).with_context(|| format!("cannot read {}", f.display()));
    }
    match args.data.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            Ok(buf)
        }
        Some(d) => Ok(d.as_bytes().to_vec()),
    }
}

fn request_for(topic: &str, data: &[u8], content_type: &Option<String>) -> PublishRequest {
    PublishRequest {
        content_type: content_type.clone(),
        ..murmur_client::payload_request(topic, data)
    }
}

async fn publish(g: &Global, args: PubArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::new(&socket(g)?);
    let input = read_input(&args)?;
    if !args.lines {
        let req = PublishRequest {
            idempotency_key: args.key.clone(),
            ..request_for(&args.topic, &input, &args.content_type)
        };
        let p: Published = client.post("/v1/events", &req).await?;
        output::published(&[p], g.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut total = 0usize;
    for chunk in lines.chunks(args.batch.max(1)) {
        let req = BatchRequest {
            events: chunk
                .iter()
                .map(|l| request_for(&args.topic, l, &args.content_type))
                .collect(),
        };
        let r: BatchResponse = client.post("/v1/events/batch", &req).await?;
        total += r.events.len();
        if g.json {
            output::published(&r.events, true)?;
        }
    }
    if !g.json {
        println!("published {total} events to {}", args.topic);
    }
    Ok(ExitCode::SUCCESS)
}

async fn subscribe(g: &Global, args: SubArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::new(&socket(g)?);
    let mut base = format!("/v1/follow?pattern={}", encode_query(&args.pattern));
    if let Some(c) = &args.consumer {
        base.push_str(&format!("&consumer={}", encode_query(c)));
    }
    // "From the start" is from the oldest event held: what retention pruned is not asked
    // for.
    let skip = args.skip_pruned || args.from_start;
    let with = |from: Option<u64>| {
        let mut p = base.clone();
        if let Some(f) = from {
            p.push_str(&format!("&from={f}"));
        }
        if skip {
            p.push_str("&skip_pruned=true");
        }
        p
    };
    let path = with(if args.from_start { Some(0) } else { args.from });
    let limit = args.count.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    // A consumer acknowledges what it printed, from a task of its own (at most one ack
    // in flight, always the newest offset), and once more at the end.
    let (printed, acker) = match &args.consumer {
        Some(name) => {
            let (tx, rx) = tokio::sync::watch::channel(None::<u64>);
            let task = tokio::spawn(ack_printed(Client::new(&socket(g)?), name.clone(), rx));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let mut seen = 0u64;
    let mut last: Option<u64> = None;
    let code = stream::lines(&mut client, &path, |line| {
        let ev: EventJson =
            serde_json::from_slice(line).context("bad event in the follow stream")?;
        output::event_line(&ev, g.json)?;
        seen += 1;
        last = ev.offset.or(last);
        if let Some(tx) = &printed {
            tx.send_replace(last);
        }
        Ok(if seen >= limit {
            stream::Next::Done
        } else {
            stream::Next::More
        })
    })
    .await;
    if let (Some(tx), Some(task)) = (printed, acker) {
        drop(tx);
        task.await.context("the ack task failed")??;
    }
    let code = code?;
    // The daemon ends a stream whose next events were pruned (the follower fell behind
    // past retention): asking again from where it stopped says so.
    if code != ExitCode::SUCCESS
        && !skip
        && args.consumer.is_none()
        && let Some(l) = last
    {
        let mut again = Client::new(&socket(g)?);
        // Only the refusal matters here: an answered request is a stream to drop.
        drop(again.lines(&with(Some(l + 1))).await?);
    }
    Ok(code)
}

/// Acknowledges, for consumer `name`, the newest offset `printed` says was printed,
/// until the sender is dropped (then once more, if anything is left).
async fn ack_printed(
    mut client: Client,
    name: String,
    mut printed: tokio::sync::watch::Receiver<Option<u64>>,
) -> anyhow::Result<()> {
    let path = format!("/v1/consumers/{}/ack", encode_query(&name));
    let mut acked: Option<u64> = None;
    loop {
        let open = printed.changed().await.is_ok();
        let newest = *printed.borrow_and_update();
        if let Some(o) = newest
            && acked != Some(o)
        {
            let _: murmur_client::api::ConsumerJson = client
                .post(&path, &murmur_client::api::AckRequest { offset: o })
                .await
                .with_context(|| format!("acknowledging offset {o} for consumer {name}"))?;
            acked = Some(o);
        }
        if !open {
            return Ok(());
        }
    }
}

async fn consumers(g: &Global, action: ConsumersAction) -> anyhow::Result<ExitCode> {
    let mut c = Client::new(&socket(g)?);
    match action {
        ConsumersAction::List => {
            let list: murmur_client::api::ConsumersJson = c.get("/v1/consumers").await?;
            output::consumers(&list, g.json)?;
        }
        ConsumersAction::Rm { name } => {
            murmur_daemon::consumers::check_name(&name)?;
            c.call(
                Method::DELETE,
                &format!("/v1/consumers/{}", encode_query(&name)),
                None,
                Bytes::new(),
            )
            .await?;
            if !g.json {
                println!("deleted consumer {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(g: &Global) -> anyhow::Result<ExitCode> {
    let dir = data_dir(g)?;
    if !dir.join(config::DB_DIR).exists() {
        bail!("no murmur database in {}", dir.display());
    }
    warn_if_service_dir_as_root(&dir, "verify");
    let (cfg, _) = client_config(&dir)?;
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = node::open_store(&dir, &cfg)?;
        Ok(murmur_store::check::verify(&store)?)
    })
    .await??;
    output::report(&report, g.json)?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `murmur repair`: offline, like `verify`. Copies the database aside as it is, runs
/// RocksDB's repair, rebuilds the store from every event that verifies and links, and
/// verifies the result. Nothing is deleted: the copy stays until the operator removes it.
async fn repair(g: &Global, confirm_own_logs: bool) -> anyhow::Result<ExitCode> {
    use murmur_store::StoreError;
    use murmur_store::repair::{RepairReport, rebuild, set_aside};

    let dir = data_dir(g)?;
    let db = dir.join(config::DB_DIR);
    // (`db.repair-old` alone: a repair interrupted between its renames; it resumes.)
    if !db.exists() && !dir.join(format!("{}.repair-old", config::DB_DIR)).exists() {
        bail!("no murmur database in {}", dir.display());
    }
    warn_if_service_dir_as_root(&dir, "repair");
    let (cfg, _) = client_config(&dir)?;
    let rc = murmur_store::RocksConfig {
        block_cache_bytes: cfg.store.block_cache_mb << 20,
        write_buffer_bytes: cfg.store.write_buffer_mb << 20,
        max_open_files: cfg.store.max_open_files,
    };
    if confirm_own_logs {
        let db = db.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let store = murmur_store::RocksStore::open(&db, &rc)?;
            store.confirm_own_logs()?;
            Ok(())
        })
        .await??;
        println!("publishing is no longer held: the node signs new events after what it holds now");
        return Ok(ExitCode::SUCCESS);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let json = g.json;
    let (backup, r): (PathBuf, RepairReport) = {
        let (dir, db) = (dir.clone(), db.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let backup = set_aside(&db, &rc, stamp).map_err(|e| match e {
                StoreError::Locked(_) => anyhow::anyhow!(
                    "a murmur daemon is running on {} (the database lock is held); stop it first",
                    dir.display()
                ),
                other => anyhow::Error::new(other)
                    .context(format!("cannot set the database in {} aside", db.display())),
            })?;
            if !json {
                println!("kept the database as it was in {}", backup.display());
            }
            let r = rebuild(&db, &rc, stamp).with_context(|| {
                format!(
                    "the repair did not finish; the database as it was is in {} \
                     (running `murmur repair` again is safe)",
                    backup.display()
                )
            })?;
            Ok((backup, r))
        })
        .await??
    };

    if json {
        println!(
            "{}",
            serde_json::json!({
                "clean": r.verify.is_clean(),
                "damaged_copy": backup,
                "unreadable_tables": r.unreadable_tables,
                "kept": r.kept,
                "unverified": r.unverified,
                "unlinked": r.unlinked,
                "dangling_arrivals": r.dangling,
                "forks": r.forks,
                "bad_forks": r.bad_forks,
                "snapshots_dropped": r.snapshots_dropped,
                "offsets_changed_from": r.offsets_changed_from,
                "notes": r.problems,
                "logs": r.verify.logs,
                "events": r.verify.events,
                "problem_count": r.verify.problem_count,
                "problems": r.verify.problems,
            })
        );
    } else {
        if !r.unreadable_tables.is_empty() {
            println!(
                "RocksDB could not read, and left out: {}",
                r.unreadable_tables.join(", ")
            );
        }
        println!(
            "kept {} events that verify and link to their log, {} fork proof(s)",
            r.kept, r.forks
        );
        println!(
            "dropped {} that do not verify, {} after a missing event of their log, \
             {} index entries naming a lost event, {} fork proof(s) that prove nothing, \
             {} document snapshot(s) (rebuilt from the changes)",
            r.unverified, r.unlinked, r.dangling, r.bad_forks, r.snapshots_dropped
        );
        if let Some(from) = r.offsets_changed_from {
            println!(
                "local offsets from {from} on changed: followers resuming from offset {from} or later should start over"
            );
        }
        for note in &r.problems {
            println!("note: {note}");
        }
        output::report(&r.verify, false)?;
        println!(
            "next: start the daemon. It fetches from its peers what this node lost \
             (logs are signed and hash-linked, so what they send is checked). Until a \
             sync round with a peer has finished on every topic, it holds publishing \
             (503 own_logs_unconfirmed), so it never signs a second event at a seq it \
             already published. When the node has caught up, delete {}.",
            backup.display()
        );
    }
    Ok(if r.verify.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
