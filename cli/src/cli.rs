//! The command line as clap sees it. Each command group's arguments live
//! next to its code in `commands/<group>.rs`; this file only assembles them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::commands::{
    agents, artifact, ca, cert, coordinators, drill, drill_run, rollout, token, ui,
};

const ABOUT: &str = "drover: rolling deployments for fleets of hosts.\n\n\
This CLI creates the drover CA and certificates, enrols hosts (join tokens), \
shows the fleet as the coordinator sees it, pushes release artifacts, and runs \
rollouts: rolling updates of a service, batch by batch, that never take serving \
capacity below a floor (`drover rollout start`), with pause, abort and rollback.";

const AFTER_HELP: &str = "\
Connection settings for commands that talk to the coordinator come from, in order: \
flags (--addr, --ca, --cert, --key), the environment (DROVER_ADDR, DROVER_CA, DROVER_CERT, \
DROVER_KEY), then the file $DROVER_CONFIG or ~/.config/drover/cli.toml with keys \
addr, ca, cert, key (relative paths are relative to the file).

Example ~/.config/drover/cli.toml:
  addr = \"coord1.example.net:7443\"
  ca   = \"ca.pem\"
  cert = \"alice.pem\"
  key  = \"alice.key\"

Several coordinators (HA): --addr c1:7443,c2:7443 (DROVER_ADDR the same), or in the file \
addr = [\"c1:7443\", \"c2:7443\"]. Each call tries them in order: one that cannot be \
reached passes to the next, and one that does not lead names the leader, which takes the \
call instead. `drover rollout watch` finds the leader again the same way after a failover.

Exit codes: 0 ok, 1 failure (refused, not found, unreachable; a rollout that failed, \
was rolled back or aborted), 2 usage error, 3 lost contact with the coordinator while \
following a rollout for longer than --reconnect-for (the rollout's outcome is unknown).";

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "drover: rolling deployments for fleets of hosts",
    long_about = ABOUT,
    after_long_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the coordinator. Global, so they may follow the subcommand.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Connection (commands that talk to the coordinator)")]
pub struct ConnFlags {
    /// Coordinator gRPC address, HOST:PORT; several (HA), comma-separated, are tried in
    /// order and the leader is found from them [env: DROVER_ADDR] [config: addr]
    #[arg(long, global = true, value_name = "HOST:PORT[,...]")]
    pub addr: Option<String>,
    /// The drover CA certificate (ca.pem from `drover ca init`) [env: DROVER_CA] [config: ca]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Your operator or viewer certificate (from `drover cert issue`) [env: DROVER_CERT] [config: cert]
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert [env: DROVER_KEY] [config: key]
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the drover certificate authority (local, no coordinator needed)
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Issue certificates for coordinators, operators and viewers (local)
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Create join tokens that let new hosts enrol their agent
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List hosts with status, resources and instances; --watch follows changes
    #[command(long_about = agents::AGENTS_LONG_ABOUT)]
    Agents(agents::AgentsArgs),
    /// Show one host in detail, or revoke it
    #[command(subcommand)]
    Agent(agents::AgentCommand),
    /// Push and list release artifacts (content-addressed by sha256)
    #[command(subcommand)]
    Artifact(artifact::ArtifactCommand),
    /// Roll a service out to a new version; follow, pause, abort or roll back rollouts
    #[command(subcommand, long_about = rollout::ROLLOUT_LONG_ABOUT)]
    Rollout(rollout::RolloutCommand),
    /// List the coordinators, which one leads (epoch, since when) and etcd's members
    #[command(long_about = coordinators::COORDINATORS_LONG_ABOUT)]
    Coordinators(coordinators::CoordinatorsArgs),
    /// Disaster-recovery drills: check a DR plan against the fleet
    #[command(subcommand, long_about = drill::DRILL_LONG_ABOUT)]
    Drill(drill::DrillCommand),
    /// The real emergency: move a service to its DR site (recorded as an incident)
    ///
    /// The same engine as `drover drill run`, with the same plan; usually
    /// with --ungraceful when the primary site is gone.
    Failover(drill_run::RunArgs),
    /// Move a service back from its DR site to its primary
    ///
    /// Runs the plan the other way, once the old primary's database runs as
    /// a replica of the DR one: the plan's [database.failback] commands
    /// (stop writes on DR, wait for the old primary to catch up, promote
    /// it), then the traffic returns to the primary and every weight to its
    /// configured value (0 for a DR site on standby).
    Failback(drill_run::RunArgs),
    /// A read-only web view of the fleet, rollouts and drills, on 127.0.0.1
    ///
    /// Serves pages that ask the coordinator with your certificate, as
    /// every command does: the fleet (filter with a selector), the
    /// rollouts, one rollout live (instances by step, batches or traffic
    /// steps, capacity against the floor over time, a canary against its
    /// baseline), and the drills with their reports. Runs until Ctrl-C.
    Ui(ui::UiArgs),
}

/// clap value parser for durations such as `90s`, `1h`, `8760h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration like 90s, 15m, 1h or 30d"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// The long help of `drover PATH...`, for tests of the help text.
#[cfg(test)]
pub(crate) fn help(path: &[&str]) -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let mut sub = &mut cmd;
    for name in path {
        sub = sub
            .find_subcommand_mut(name)
            .unwrap_or_else(|| panic!("no subcommand {name}"));
    }
    sub.render_long_help().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn top_level_help_lists_every_command() {
        let h = help(&[]);
        for (cmd, words) in [
            ("ca", "certificate authority"),
            ("cert", "Issue certificates"),
            ("token", "join tokens"),
            ("agents", "List hosts"),
            ("agent", "Show one host"),
            ("ui", "read-only web view"),
        ] {
            let line = h
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
                .unwrap_or_else(|| panic!("no line for {cmd} in\n{h}"));
            assert!(line.contains(words), "{line}");
        }
        assert!(h.contains("DROVER_CONFIG"), "{h}");
        assert!(h.contains("Exit codes"), "{h}");
        assert!(h.contains("3 lost contact with the coordinator"), "{h}");
        // Several coordinators: how to give them and what drover does.
        assert!(h.contains("--addr c1:7443,c2:7443"), "{h}");
        assert!(h.contains("names the leader"), "{h}");
        assert!(h.contains("HOST:PORT[,...]"), "{h}");
    }

    #[test]
    fn each_command_documents_its_flags() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["ca", "init"],
                &["--dir", "--name", "ca.pem", "fingerprint"],
            ),
            (
                &["cert", "issue"],
                &[
                    "--ca-dir",
                    "--role",
                    "--name",
                    "--san",
                    "--out",
                    "--lifetime",
                    "8760h",
                    "0600",
                    "drover token create",
                ],
            ),
            (
                &["token", "create"],
                &[
                    "--ttl",
                    "--label",
                    "--output",
                    "drover-agent enroll",
                    "1h",
                    "max_token_ttl",
                    "refuses",
                ],
            ),
            (
                &["artifact", "push"],
                &[
                    "--service",
                    "--version",
                    "-o json",
                    "\"size_bytes\"",
                    "\"pushed_by\"",
                ],
            ),
            (
                &["agents"],
                &[
                    "--selector",
                    "-l",
                    "--output",
                    "wide",
                    "json",
                    "--watch",
                    "zone in (a,b)",
                ],
            ),
            (&["agent", "show"], &["HOST", "--output", "json"]),
            (
                &["ui"],
                &[
                    "--listen",
                    "127.0.0.1:8088",
                    "--open",
                    "--allow-remote",
                    "YOUR certificate",
                    "Ctrl-C",
                ],
            ),
            (
                &["agent", "revoke"],
                &[
                    "HOST",
                    "re-enrol",
                    "drover token create",
                    "drover-agent enroll --force",
                ],
            ),
        ];
        for (path, words) in cases {
            let h = help(path);
            assert!(!h.contains("caps it"), "{h}");
            for w in *words {
                assert!(
                    h.contains(w),
                    "`drover {}` --help lacks {w:?}:\n{h}",
                    path.join(" ")
                );
            }
            for flag in ["--addr", "--ca", "--cert", "--key"] {
                assert!(
                    h.contains(flag),
                    "`drover {}` --help lacks {flag}",
                    path.join(" ")
                );
            }
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("soon")
                .expect_err("bad")
                .contains("like 90s")
        );
    }
}
