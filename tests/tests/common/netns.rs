//! Multi-host test networks in Linux network namespaces.
//!
//! A [`Lab`] is a private "switch" namespace holding a bridge, and one namespace per host,
//! each joined to the bridge by a veth pair and given an address in 10.77.0.0/24. Nothing
//! is created in the machine's own namespace: the bridge has no address, no namespace has
//! a default route, so all traffic (mDNS included) stays inside the lab. Everything is
//! torn down on drop, also when a test fails.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::Node;

static LABS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd ARGS`, panicking with its stderr on failure; returns its stdout, trimmed.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Namespaces need root. Without it the test fails, unless MURMUR_NO_NETNS=1 asks to skip
/// explicitly (and says so).
pub fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("MURMUR_NO_NETNS").is_some() {
        eprintln!("SKIPPED {test}: needs root for network namespaces (MURMUR_NO_NETNS set)");
        return false;
    }
    panic!(
        "{test} needs root (ip netns); run as root, or set MURMUR_NO_NETNS=1 to skip it explicitly"
    );
}

/// One host of a lab.
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub addr: String,
    /// The bridge-side end of its link (cut, heal and netem act here).
    pub port: String,
    /// Its daemon.
    pub node: Option<Node>,
}

impl Host {
    /// Its daemon.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("host has a daemon")
    }

    /// `/ip4/<addr>/tcp/7470/p2p/<peer id>` of its daemon.
    pub fn multiaddr(&self) -> String {
        let id = self.node().get("/v1/peers")["peer_id"]
            .as_str()
            .expect("peer id")
            .to_owned();
        format!("/ip4/{}/tcp/7470/p2p/{id}", self.addr)
    }
}

/// Kills the hosts' daemons, then deletes the namespaces.
fn tear_down<'a>(hosts: &mut [Host], namespaces: impl Iterator<Item = &'a str>) {
    for h in hosts.iter_mut() {
        if let Some(mut n) = h.node.take() {
            n.kill();
        }
    }
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

/// A switch and its hosts.
pub struct Lab {
    switch: String,
    pub hosts: Vec<Host>,
}

impl Lab {
    /// A lab of `n` hosts, each running a daemon with `config(i)`.
    pub fn new(n: usize, config: impl Fn(usize) -> String) -> Lab {
        let mut lab = Lab::empty(n);
        for i in 0..n {
            lab.start(i, &config(i));
        }
        lab
    }

    /// Starts (or restarts with a new config) the daemon of host `i`.
    pub fn start(&mut self, i: usize, config: &str) {
        let node = Node::start_in(&self.hosts[i].ns, config);
        self.hosts[i].node = Some(node);
    }

    /// Starts the daemon of host `i` on the data dir `dir`.
    pub fn start_at(&mut self, i: usize, dir: &std::path::Path, config: &str) {
        let node = Node::start_in_at(&self.hosts[i].ns, dir, config);
        self.hosts[i].node = Some(node);
    }

    /// A lab of `n` hosts with no daemons yet.
    pub fn empty(n: usize) -> Lab {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("mm{id}sw");
        ip(&["netns", "add", &switch]);
        let mut lab = Lab {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("mm{id}h{i}");
            ip(&["netns", "add", &ns]);
            let port = format!("p{i}");
            let addr = format!("10.77.0.{}", i + 1);
            lab.hosts.push(Host {
                ns: ns.clone(),
                addr: addr.clone(),
                port: port.clone(),
                node: None,
            });
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// `/ip4/<addr>/tcp/7470/p2p/<peer id>` of host `i`'s daemon.
    pub fn multiaddr(&self, i: usize) -> String {
        self.hosts[i].multiaddr()
    }

    /// The daemon of host `i`.
    pub fn node(&self, i: usize) -> &Node {
        self.hosts[i].node()
    }

    /// The daemon of host `i`, mutably (to stop, kill, restart).
    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        self.hosts[i].node.as_mut().expect("host has a daemon")
    }

    /// Cuts host `i` off the switch.
    pub fn cut(&self, i: usize) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.hosts[i].port,
            "down",
        ]);
    }

    /// Reconnects host `i`.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &self.hosts[i].port, "up"]);
    }

    /// Makes host `i`'s link lossy and slow: `loss_pct` % of packets dropped at random in
    /// each direction (nftables `numgen random`), and a token bucket of `rate` (e.g.
    /// `1mbit`) each way, whose queue adds delay under load. (`tc netem` would add fixed
    /// delay and reordering, but this machine's kernel has no `sch_netem`.)
    pub fn impair(&self, i: usize, loss_pct: u32, rate: &str) {
        let h = &self.hosts[i];
        let keep = 100 / loss_pct.max(1);
        run(
            "ip",
            &[
                "netns", "exec", &h.ns, "nft", "add", "table", "inet", "impair",
            ],
        );
        for hook in ["input", "output"] {
            let chain = format!("{{ type filter hook {hook} priority 0; }}");
            run(
                "ip",
                &[
                    "netns", "exec", &h.ns, "nft", "add", "chain", "inet", "impair", hook, &chain,
                ],
            );
            let rule = format!("numgen random mod {keep} 0 drop");
            let mut a = vec![
                "netns", "exec", &h.ns, "nft", "add", "rule", "inet", "impair", hook,
            ];
            a.extend(rule.split_whitespace());
            run("ip", &a);
        }
        self.throttle(i, rate);
    }

    /// Limits host `i`'s link to `rate` (e.g. `8mbit`) each way, with a token bucket.
    pub fn throttle(&self, i: usize, rate: &str) {
        let h = &self.hosts[i];
        for (ns, dev) in [
            (h.ns.as_str(), "eth0"),
            (self.switch.as_str(), h.port.as_str()),
        ] {
            let args = [
                "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                rate,
            ];
            let mut a = args.to_vec();
            a.extend(["burst", "16kbit", "latency", "400ms"]);
            run("ip", &a);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut namespaces: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        namespaces.push(self.switch.clone());
        tear_down(&mut self.hosts, namespaces.iter().map(String::as_str));
    }
}

/// Two sites behind NAT and a relay on a "public" segment:
///
/// ```text
///   site A 192.168.10.2 ─ router A (masquerade) 10.78.0.2 ─┐
///                                                          ├─ switch ─ relay 10.78.0.1
///   site B 192.168.20.2 ─ router B (masquerade) 10.78.0.3 ─┘
/// ```
///
/// The site hosts have a route to 10.78.0.0/24 through their router and nothing else
/// (no default route anywhere); nothing routes to the sites, so only what the routers'
/// connection tracking lets back in reaches them. Unsolicited packets from the WAN are
/// dropped, as home routers do (a router that answers them with a reset would kill a
/// hole punch's crossing SYNs). `symmetric` makes the routers map
/// each connection to a random port (`masquerade fully-random`), so the address a peer
/// learns from the relay is useless for hole punching.
pub struct NatLab {
    namespaces: Vec<String>,
    /// The relay (index 0), site A's host (1) and site B's host (2).
    pub hosts: Vec<Host>,
}

impl NatLab {
    pub fn new(symmetric: bool) -> NatLab {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let ns = |name: &str| format!("mm{id}{name}");
        let (sw, relay, ra, rb, a, b) = (ns("sw"), ns("rl"), ns("ra"), ns("rb"), ns("a"), ns("b"));
        let mut lab = NatLab {
            namespaces: Vec::new(),
            hosts: Vec::new(),
        };
        for n in [&sw, &relay, &ra, &rb, &a, &b] {
            ip(&["netns", "add", n]);
            lab.namespaces.push(n.clone());
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        // Public segment: the relay and the routers' WAN sides on the switch.
        for (n, port, addr) in [
            (&relay, "p0", "10.78.0.1"),
            (&ra, "p1", "10.78.0.2"),
            (&rb, "p2", "10.78.0.3"),
        ] {
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "wan", "netns", n,
            ]);
            ip(&["-n", &sw, "link", "set", port, "master", "br0", "up"]);
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "wan"]);
            ip(&["-n", n, "link", "set", "wan", "up"]);
        }
        // Each site: a host on a point-to-point link to its router, which masquerades.
        for (router, host, net) in [(&ra, &a, "192.168.10"), (&rb, &b, "192.168.20")] {
            ip(&[
                "-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", host,
            ]);
            ip(&[
                "-n",
                router,
                "addr",
                "add",
                &format!("{net}.1/24"),
                "dev",
                "lan",
            ]);
            ip(&["-n", router, "link", "set", "lan", "up"]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", host, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                host,
                "route",
                "add",
                "10.78.0.0/24",
                "via",
                &format!("{net}.1"),
            ]);
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    router,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ],
            );
            let nat = if symmetric {
                "masquerade fully-random"
            } else {
                "masquerade"
            };
            let script = format!(
                "table ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat\n  \
                 oifname \"wan\" {nat}\n }}\n}}\n\
                 table ip filter {{\n chain forwarding {{\n  type filter hook forward priority 0; policy drop\n  \
                 iifname \"lan\" accept\n  ct state established,related accept\n }}\n \
                 chain incoming {{\n  type filter hook input priority 0; policy accept\n  \
                 iifname \"wan\" ct state new drop\n }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("{router}.nft"));
            std::fs::write(&path, script).expect("write the nft script");
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    router,
                    "nft",
                    "-f",
                    path.to_str().expect("a utf-8 path"),
                ],
            );
            let _ = std::fs::remove_file(&path);
        }
        for (n, addr) in [
            (&relay, "10.78.0.1"),
            (&a, "192.168.10.2"),
            (&b, "192.168.20.2"),
        ] {
            lab.hosts.push(Host {
                ns: n.clone(),
                addr: addr.into(),
                port: String::new(),
                node: None,
            });
        }
        lab
    }

    /// Starts the daemon of host `i` with `config`.
    pub fn start(&mut self, i: usize, config: &str) {
        self.hosts[i].node = Some(Node::start_in(&self.hosts[i].ns, config));
    }

    /// The daemon of host `i`.
    pub fn node(&self, i: usize) -> &Node {
        self.hosts[i].node()
    }

    /// `/ip4/<addr>/tcp/7470/p2p/<peer id>` of host `i`'s daemon.
    pub fn multiaddr(&self, i: usize) -> String {
        self.hosts[i].multiaddr()
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        tear_down(&mut self.hosts, self.namespaces.iter().map(String::as_str));
    }
}

/// Runs `f` on a thread of its own inside the network namespace `ns` (setns): the
/// sockets it opens, and the threads it starts, live in that namespace. For a peer the
/// test builds itself (from murmur-p2p) where a daemon would be.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the namespace panicked")
}
