//! `drover agents` (list and watch) and `drover agent show|revoke HOST`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use drover_proto::identity::valid_name;
use drover_proto::v1::host_event::Kind;
use drover_proto::v1::{
    GetHostRequest, Host, ListHostsRequest, RevokeHostRequest, WatchHostsRequest,
};
use serde::Serialize;

use crate::commands::Ctx;
use crate::labels::parse_selector;
use crate::output::host::{event_line, host_detail, hosts_table, sorted};
use crate::output::host_json::HostJson;
use crate::output::{ListFormat, ShowFormat, emit, now_ms, print, rfc3339_ms};

/// `drover agents --help`; on the subcommand in `cli.rs`, since a
/// variant's doc comment would override one set here.
pub const AGENTS_LONG_ABOUT: &str = "\
List the hosts the coordinator knows, sorted by host id.

Columns: HOST, STATUS (enrolled, connected, lost, revoked), LAST SEEN, CPU, MEM (used/total), \
DISK (fullest mount), INSTANCES (serving/total), LABELS. `-o wide` adds AGENT VERSION, \
CERT EXPIRES and LOAD, and a line per instance (state, health, restarts, release).

Examples:
  drover agents
  drover agents -l 'env=prod,zone in (a,b),!canary' -o wide
  drover agents --watch
  drover agents -o json | jq '.[] | select(.status != \"connected\") | .host_id'";

#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// Only hosts whose labels match, e.g. `env=prod,zone in (a,b),!canary`
    /// (operators: =, ==, !=, in, notin, KEY (has), !KEY (lacks); all must match)
    #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub selector: Option<String>,
    /// Output format: table, wide (more columns and one line per instance) or json
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ListFormat,
    /// Keep running and show changes as they happen (Ctrl-C to stop). On a
    /// terminal the table is redrawn in place; otherwise one line (or, with
    /// -o json, one JSON object {"event","host"}) is printed per change
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Show one host in detail: status, certificate, metrics, every instance
    ///
    /// Shows labels, status and its reason, last contact, the certificate's
    /// serial and expiry, CPU/memory/swap/uptime and every disk, and for each
    /// instance its state, health (with the last check error) and release.
    ///
    /// Example: drover agent show web-01 -o json
    Show(ShowArgs),
    /// Revoke a host: refuse its certificates and drop its session
    ///
    /// The coordinator refuses every certificate the host has used and ends
    /// its session at once. The host's instances keep running, but it stays
    /// cut off until it re-enrols: create a token with `drover token create`
    /// and run `drover-agent enroll --force` on it again (--force, because the
    /// host still holds its revoked enrolment). Needs an operator certificate.
    ///
    /// Example: drover agent revoke web-01
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Host id, as listed by `drover agents`
    #[arg(value_name = "HOST", value_parser = parse_host)]
    pub host: String,
    /// Output format: table (readable text) or json (the contract's host object)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Host id to revoke
    #[arg(value_name = "HOST", value_parser = parse_host)]
    pub host: String,
}

fn parse_host(s: &str) -> Result<String, String> {
    if valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("not a host id: use 1-63 characters from a-z, A-Z, 0-9, `-`, `_` and `.`, starting with a letter or digit".into())
    }
}

pub async fn run(ctx: &Ctx, cmd: AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Show(args) => show(ctx, args).await,
        AgentCommand::Revoke(args) => revoke(ctx, args).await,
    }
}

pub async fn list(ctx: &Ctx, args: AgentsArgs) -> anyhow::Result<()> {
    let selector = args.selector.clone().unwrap_or_default();
    if args.watch {
        return watch(ctx, selector, args.output).await;
    }
    let mut session = ctx.session().await?;
    let req = ListHostsRequest {
        selector: selector.clone(),
    };
    let hosts = match session.client.list_hosts(req).await {
        Ok(r) => sorted(r.into_inner().hosts),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        ListFormat::Json => {
            let json: Vec<HostJson> = hosts.iter().map(HostJson::from).collect();
            print(&format!("{}\n", serde_json::to_string_pretty(&json)?))
        }
        ListFormat::Table | ListFormat::Wide if hosts.is_empty() => {
            if selector.is_empty() {
                eprintln!(
                    "no hosts yet: enrol one with `drover token create` and `drover-agent enroll`"
                );
            } else {
                eprintln!("no hosts match `{selector}`");
            }
            Ok(())
        }
        format => print(&hosts_table(&hosts, now_ms(), format == ListFormat::Wide)),
    }
}

#[derive(Serialize)]
struct EventJson {
    event: &'static str,
    host: Option<HostJson>,
}

fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Snapshot => "snapshot",
        Kind::Updated => "updated",
        Kind::Removed => "removed",
        Kind::Synced => "synced",
        Kind::Unspecified => "unknown",
    }
}

/// The live host map `--watch` keeps.
#[derive(Default)]
struct Fleet {
    hosts: BTreeMap<String, Host>,
    synced: bool,
}

impl Fleet {
    fn apply(&mut self, kind: Kind, host: Option<&Host>) {
        match (kind, host) {
            (Kind::Snapshot | Kind::Updated, Some(h)) => {
                self.hosts.insert(h.host_id.clone(), h.clone());
            }
            (Kind::Removed, Some(h)) => {
                self.hosts.remove(&h.host_id);
            }
            (Kind::Synced, _) => self.synced = true,
            _ => {}
        }
    }

    fn hosts(&self) -> Vec<Host> {
        self.hosts.values().cloned().collect()
    }
}

/// One line (or JSON object) for a change, when output is not a terminal.
fn event_output(
    kind: Kind,
    host: Option<&Host>,
    fleet: &Fleet,
    json: bool,
) -> anyhow::Result<String> {
    if json {
        let ev = EventJson {
            event: kind_str(kind),
            host: host.map(HostJson::from),
        };
        return Ok(format!("{}\n", serde_json::to_string(&ev)?));
    }
    Ok(match (kind, host) {
        (Kind::Synced, _) => format!("synced {}\n", hosts_count(fleet.hosts.len())),
        (Kind::Removed, Some(h)) => format!("removed {}\n", h.host_id),
        (kind, Some(h)) => format!("{}\n", event_line(kind_str(kind), h, now_ms())),
        (kind, None) => format!("{}\n", kind_str(kind)),
    })
}

fn hosts_count(n: usize) -> String {
    if n == 1 {
        "1 host".into()
    } else {
        format!("{n} hosts")
    }
}

/// Clears the terminal and draws the whole table.
fn screen(fleet: &Fleet, addr: &str, selector: &str, wide: bool) -> String {
    let now = now_ms();
    let mut out = String::from("\x1b[H\x1b[2J");
    let clock = rfc3339_ms(now).unwrap_or_default();
    let filter = if selector.is_empty() {
        String::new()
    } else {
        format!("  selector `{selector}`")
    };
    let state = if fleet.synced { "" } else { "  (loading)" };
    out.push_str(&format!(
        "{} at {addr}{filter}  {clock}{state}  (Ctrl-C to quit)\n\n",
        hosts_count(fleet.hosts.len())
    ));
    if fleet.hosts.is_empty() {
        out.push_str("no hosts\n");
    } else {
        out.push_str(&hosts_table(&fleet.hosts(), now, wide));
    }
    out
}

async fn watch(ctx: &Ctx, selector: String, output: ListFormat) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let json = output == ListFormat::Json;
    let tty = !json && std::io::stdout().is_terminal();
    let wide = output == ListFormat::Wide;
    let req = WatchHostsRequest {
        selector: selector.clone(),
    };
    let mut stream = match session.client.watch_hosts(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut fleet = Fleet::default();
    // Redraw at most every 200 ms, and at least every second so relative
    // times stay true.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    // Counting from the start delays the first frame until the initial
    // listing is in (or a second has passed), so it does not flash empty.
    let mut last_draw = Instant::now();

    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                if tty {
                    let _ = emit("\n");
                }
                return Ok(());
            }
            msg = stream.message() => {
                let event = match msg {
                    Ok(Some(ev)) => ev,
                    Ok(None) => {
                        return Err(anyhow!(
                            "coordinator at {} ended the watch (is it shutting down?)",
                            session.addr()
                        ));
                    }
                    Err(status) => return Err(session.rpc_error(status)),
                };
                let kind = event.kind();
                fleet.apply(kind, event.host.as_ref());
                if tty {
                    dirty = true;
                } else {
                    let text = event_output(kind, event.host.as_ref(), &fleet, json)?;
                    if let Err(e) = emit(&text) {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(());
                        }
                        return Err(anyhow!("write to stdout: {e}"));
                    }
                }
            }
            _ = tick.tick(), if tty => {
                let stale = last_draw.elapsed() >= Duration::from_secs(1);
                if (dirty && fleet.synced) || stale {
                    print(&screen(&fleet, &session.addr(), &selector, wide))?;
                    dirty = false;
                    last_draw = Instant::now();
                }
            }
        }
    }
}

async fn show(ctx: &Ctx, args: ShowArgs) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = GetHostRequest {
        host_id: args.host.clone(),
    };
    let host = match session.client.get_host(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        ShowFormat::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&HostJson::from(&host))?
        )),
        ShowFormat::Table => print(&host_detail(&host, now_ms())),
    }
}

async fn revoke(ctx: &Ctx, args: RevokeArgs) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = RevokeHostRequest {
        host_id: args.host.clone(),
    };
    let resp = match session.client.revoke_host(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    print(&revoke_text(&args.host, &resp.revoked_serials))
}

fn revoke_text(host: &str, serials: &[String]) -> String {
    let serials = if serials.is_empty() {
        "no certificate serials were on record".to_string()
    } else {
        format!("refused certificate serials: {}", serials.join(", "))
    };
    format!(
        "revoked {host}; {serials}\n\
         Its session has been dropped and it cannot reconnect. To bring it back, create a token \
         with `drover token create` and run `drover-agent enroll --force` with it on {host} \
         (--force replaces the revoked enrolment the host still holds).\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::v1::HostStatus;

    fn host(id: &str, status: HostStatus) -> Host {
        Host {
            host_id: id.into(),
            status: status as i32,
            ..Host::default()
        }
    }

    #[test]
    fn fleet_follows_events() {
        let mut fleet = Fleet::default();
        fleet.apply(Kind::Snapshot, Some(&host("h2", HostStatus::Connected)));
        fleet.apply(Kind::Snapshot, Some(&host("h1", HostStatus::Connected)));
        assert!(!fleet.synced);
        fleet.apply(Kind::Synced, None);
        assert!(fleet.synced);
        fleet.apply(Kind::Updated, Some(&host("h1", HostStatus::Lost)));
        let ids: Vec<_> = fleet.hosts().iter().map(|h| h.host_id.clone()).collect();
        assert_eq!(ids, ["h1", "h2"]);
        assert_eq!(fleet.hosts()[0].status(), HostStatus::Lost);
        fleet.apply(Kind::Removed, Some(&host("h2", HostStatus::Unspecified)));
        assert_eq!(fleet.hosts().len(), 1);
    }

    #[test]
    fn watch_prints_one_object_per_event() {
        let fleet = Fleet::default();
        let h = host("h1", HostStatus::Lost);
        let line = event_output(Kind::Updated, Some(&h), &fleet, true).expect("json");
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("parse");
        assert_eq!(v["event"], "updated");
        assert_eq!(v["host"]["host_id"], "h1");
        assert_eq!(v["host"]["status"], "lost");
        let synced = event_output(Kind::Synced, None, &fleet, true).expect("json");
        assert_eq!(synced, "{\"event\":\"synced\",\"host\":null}\n");

        let text = event_output(Kind::Removed, Some(&h), &fleet, false).expect("text");
        assert_eq!(text, "removed h1\n");
        let text = event_output(Kind::Updated, Some(&h), &fleet, false).expect("text");
        assert!(text.starts_with("updated h1 lost "), "{text}");
    }

    #[test]
    fn screen_redraws_from_the_top() {
        let mut fleet = Fleet::default();
        fleet.apply(Kind::Snapshot, Some(&host("h1", HostStatus::Connected)));
        let s = screen(&fleet, "c1:7443", "env=prod", false);
        assert!(
            s.starts_with("\x1b[H\x1b[2J1 host at c1:7443  selector `env=prod`"),
            "{s}"
        );
        assert!(s.contains("(loading)"));
        assert!(s.contains("\nHOST "), "{s}");
    }

    #[test]
    fn revoke_says_what_happens_next() {
        let text = revoke_text("h1", &["4a01".into(), "4a02".into()]);
        assert!(
            text.starts_with("revoked h1; refused certificate serials: 4a01, 4a02\n"),
            "{text}"
        );
        assert!(text.contains("session has been dropped"));
        assert!(text.contains("drover token create"));
        assert!(text.contains("drover-agent enroll --force"), "{text}");
    }
}
