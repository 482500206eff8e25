//! `murmur-sim`: run a scenario file and print its report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use murmur_sim::{Partition, Scenario, Sim};

/// Simulate murmur's replication over a virtual network (deterministic from the seed).
#[derive(Parser)]
#[command(name = "murmur-sim", version, max_term_width = 100)]
struct Args {
    /// Scenario file (TOML; see simulations/scenarios/)
    scenario: PathBuf,
    /// Override the number of nodes
    #[arg(long)]
    nodes: Option<usize>,
    /// Override the seed
    #[arg(long)]
    seed: Option<u64>,
    /// Override: cut this fraction of the fleet away (from 10 s to 40 s)
    #[arg(long)]
    partition: Option<f64>,
    /// Override: fraction of nodes leaving per minute
    #[arg(long)]
    churn: Option<f64>,
    /// Override any scenario field, as TOML: `--set hold_ms=120 --set mesh_n=4`
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    set: Vec<String>,
}

/// Peak resident memory of this process, MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read {}", args.scenario.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("invalid scenario {}", args.scenario.display()))?;
    for kv in &args.set {
        let one: toml::Table =
            toml::from_str(kv).with_context(|| format!("--set {kv}: expected FIELD=VALUE"))?;
        table.extend(one);
    }
    let mut sc: Scenario = table
        .try_into()
        .with_context(|| format!("invalid scenario {}", args.scenario.display()))?;
    if let Some(n) = args.nodes {
        sc.nodes = n;
    }
    if let Some(s) = args.seed {
        sc.seed = s;
    }
    if let Some(f) = args.partition {
        sc.partition = Some(Partition {
            fraction: f,
            at: 10.0,
            heal: 40.0,
        });
    }
    if let Some(c) = args.churn {
        sc.churn_per_min = c;
    }
    println!("scenario {} (seed {}): {sc:?}", sc.name, sc.seed);
    let t = Instant::now();
    let report = Sim::new(sc)?.run()?;
    println!();
    print!("{}", report.table());
    println!();
    println!(
        "wall time {:.1} s, peak memory {:.0} MiB",
        t.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    for v in &report.violation_examples {
        eprintln!("invariant violated: {v}");
    }
    anyhow::ensure!(
        report.violations == 0,
        "{} invariant violations",
        report.violations
    );
    Ok(())
}
