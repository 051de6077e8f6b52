//! `drover-bench`: the benchmarks of issue 5 that run real drover binaries
//! (agent footprint, a rollout against Ansible, artifact fan-out), each
//! printing one JSON object per measured subject on stdout (progress goes
//! to stderr), and `table`, which turns such lines (and those of
//! `drover-fleetsim`) into the Markdown table `scripts/bench` prints.
//!
//! Run it from `target/release/` (`scripts/bench` does): it starts the
//! binaries found beside itself.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use drover_tests::bench::{ansible, fanout, footprint, outage, table};

#[derive(Debug, Parser)]
#[command(name = "drover-bench", about = "drover benchmarks: figures, not tests")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Agent footprint: one idle agent with 2 instances (HTTP checks every
    /// 2 s, reports every 5 s); peak RSS and average CPU over the window.
    Footprint {
        /// The measured window.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Idle time before the window opens.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// A virtualenv with the `salt` package: an idle salt-minion (with a
        /// local salt-master) is measured in the same window.
        #[arg(long)]
        salt_venv: Option<PathBuf>,
        /// Another drover-agent build measured in the same window, as
        /// LABEL=PATH (e.g. dist=target/dist/drover-agent); repeatable.
        #[arg(long = "agent", value_parser = parse_agent)]
        agents: Vec<(String, PathBuf)>,
    },
    /// The same rolling update with drover and with ansible-playbook.
    Ansible {
        #[arg(long, default_value_t = 30)]
        hosts: usize,
        /// Batch sizes (Ansible's `serial`), comma-separated.
        #[arg(long, default_value = "1,5", value_delimiter = ',')]
        batches: Vec<usize>,
        /// How often both sides poll the instances' health endpoint.
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        health_interval: Duration,
        /// A virtualenv with ansible-core; without it only drover's side runs.
        #[arg(long)]
        ansible_venv: Option<PathBuf>,
    },
    /// N agents fetch one large artifact at once, against a plain loopback
    /// copy measured in the same run.
    Fanout {
        #[arg(long, default_value_t = 50)]
        agents: usize,
        /// Artifact payload size in MiB.
        #[arg(long, default_value_t = 100)]
        size_mib: u64,
    },
    /// Out-of-service time per instance (drain sent to undrain answered)
    /// in a one-at-a-time rollout of a large release.
    Outage {
        #[arg(long, default_value_t = 3)]
        instances: usize,
        /// Artifact payload size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Names the run in the output, e.g. the commit measured.
        #[arg(long, default_value = "current")]
        label: String,
    },
    /// Reads JSON lines (files, or stdin without any) and prints the table.
    Table { files: Vec<PathBuf> },
}

/// `LABEL=PATH`, the label usable in a host id, the path absolute.
fn parse_agent(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected LABEL=PATH, got `{s}`"))?;
    if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("label `{label}`: expected letters, digits and `-`"));
    }
    let path = std::path::absolute(path).map_err(|e| format!("{path}: {e}"))?;
    if !path.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    Ok((label.to_string(), path))
}

/// `<venv>/bin`, absolute (Ansible runs its interpreter from other dirs).
fn venv_bin(venv: Option<PathBuf>) -> Result<Option<PathBuf>> {
    venv.map(|v| {
        std::path::absolute(&v)
            .map(|v| v.join("bin"))
            .with_context(|| format!("resolve {}", v.display()))
    })
    .transpose()
}

fn print(records: &[serde_json::Value]) -> Result<()> {
    for r in records {
        println!("{}", serde_json::to_string(r).context("encode JSON")?);
    }
    Ok(())
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Footprint {
            duration,
            warmup,
            salt_venv,
            agents,
        } => print(&footprint::run(&footprint::FootprintOpts {
            duration,
            warmup,
            salt_bin: venv_bin(salt_venv)?,
            other_agents: agents,
        })),
        Cmd::Ansible {
            hosts,
            batches,
            health_interval,
            ansible_venv,
        } => {
            if hosts < 2 || batches.iter().any(|b| *b == 0 || *b >= hosts) {
                bail!("--hosts must be at least 2 and every batch between 1 and hosts - 1");
            }
            print(&ansible::run(&ansible::AnsibleOpts {
                hosts,
                batches,
                health_interval,
                ansible_bin: venv_bin(ansible_venv)?,
            }))
        }
        Cmd::Fanout { agents, size_mib } => {
            if agents == 0 || size_mib == 0 {
                bail!("--agents and --size-mib must be at least 1");
            }
            print(&fanout::run(&fanout::FanoutOpts { agents, size_mib }))
        }
        Cmd::Outage {
            instances,
            size_mib,
            label,
        } => {
            if instances < 2 || size_mib == 0 {
                bail!("--instances must be at least 2 and --size-mib at least 1");
            }
            print(&outage::run(&outage::OutageOpts {
                instances,
                size_mib,
                label,
            }))
        }
        Cmd::Table { files } => {
            let mut input = String::new();
            if files.is_empty() {
                std::io::stdin()
                    .read_to_string(&mut input)
                    .context("read stdin")?;
            }
            for f in &files {
                input.push_str(
                    &std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?,
                );
                input.push('\n');
            }
            print!("{}", table::render(&table::parse(&input)));
            Ok(())
        }
    }
}
