//! `drover coordinators`: the coordinators, which one leads with which
//! epoch since when, and etcd's members. Any coordinator answers, standby
//! or not.

use clap::Args;
use drover_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use drover_proto::v1::{ListCoordinatorsRequest, ListCoordinatorsResponse};
use serde::Serialize;

use crate::commands::Ctx;
use crate::output::{ShowFormat, now_ms, print, relative, rfc3339_ms, table};

pub const COORDINATORS_LONG_ABOUT: &str = "\
List the coordinators and which one leads

With several coordinators on etcd (HA), shows each coordinator and its
address, which one leads, its fencing epoch (grows with every new leader)
and since when, and etcd's members (which one leads etcd's own raft) or why
etcd does not answer. Any coordinator answers, standby or leader: what it
says comes from etcd. With one coordinator on redb it says so.

Example:
  drover coordinators --addr c1.example.net:7443,c2.example.net:7443";

#[derive(Debug, Args)]
pub struct CoordinatorsArgs {
    /// Output format
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
}

#[derive(Debug, Serialize)]
struct CoordinatorsJson {
    ha: bool,
    answered_by: String,
    leader: Option<String>,
    epoch: u64,
    leader_since: Option<String>,
    coordinators: Vec<CoordinatorJson>,
    etcd: Option<EtcdJson>,
}

#[derive(Debug, Serialize)]
struct CoordinatorJson {
    name: String,
    grpc: String,
    leader: bool,
}

#[derive(Debug, Serialize)]
struct EtcdJson {
    version: Option<String>,
    members: Vec<EtcdMemberJson>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct EtcdMemberJson {
    name: String,
    client_urls: Vec<String>,
    leader: bool,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn to_json(r: &ListCoordinatorsResponse) -> CoordinatorsJson {
    CoordinatorsJson {
        ha: r.ha,
        answered_by: r.answered_by.clone(),
        leader: non_empty(&r.leader),
        epoch: r.epoch,
        leader_since: rfc3339_ms(r.leader_since_ms),
        coordinators: (r.coordinators.iter())
            .map(|c| CoordinatorJson {
                name: c.name.clone(),
                grpc: c.grpc.clone(),
                leader: c.leader,
            })
            .collect(),
        etcd: r.etcd.as_ref().map(|e| EtcdJson {
            version: non_empty(&e.version),
            members: (e.members.iter())
                .map(|m| EtcdMemberJson {
                    name: m.name.clone(),
                    client_urls: m.client_urls.clone(),
                    leader: m.leader,
                })
                .collect(),
            error: non_empty(&e.error),
        }),
    }
}

fn render(r: &ListCoordinatorsResponse, now: i64) -> String {
    if !r.ha {
        return format!(
            "one coordinator ({}) on its embedded store (redb): no election\n",
            r.answered_by
        );
    }
    let rows: Vec<Vec<String>> = (r.coordinators.iter())
        .map(|c| {
            let role = if c.leader { "leader" } else { "standby" };
            vec![c.name.clone(), c.grpc.clone(), role.to_string()]
        })
        .collect();
    let mut out = table(&["NAME", "ADDRESS", "ROLE"], &rows);
    out.push('\n');
    match non_empty(&r.leader) {
        Some(l) => {
            let since = match rfc3339_ms(r.leader_since_ms) {
                Some(t) => format!(", since {t} ({})", relative(now, r.leader_since_ms)),
                None => String::new(),
            };
            out.push_str(&format!("leader: {l}, epoch {}{since}\n", r.epoch));
        }
        None => out.push_str("leader: none elected (is etcd up, with a quorum?)\n"),
    }
    if let Some(e) = &r.etcd {
        if e.error.is_empty() {
            let members: Vec<String> = (e.members.iter())
                .map(|m| {
                    let lead = if m.leader { " (leads)" } else { "" };
                    format!("{}{lead} {}", m.name, m.client_urls.join(","))
                })
                .collect();
            out.push_str(&format!(
                "etcd {}: {} member(s): {}\n",
                e.version,
                e.members.len(),
                members.join("; ")
            ));
        } else {
            out.push_str(&format!("etcd: {}\n", e.error));
        }
    }
    out.push_str(&format!("(answered by {})\n", r.answered_by));
    out
}

pub async fn list(ctx: &Ctx, args: CoordinatorsArgs) -> anyhow::Result<()> {
    let session = ctx.session().await?;
    let mut client = CoordinatorServiceClient::new(session.channel());
    let resp = match client.list_coordinators(ListCoordinatorsRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        ShowFormat::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&to_json(&resp))?
        )),
        ShowFormat::Table => print(&render(&resp, now_ms())),
    }
}
