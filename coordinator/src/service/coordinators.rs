//! `drover coordinators`: who is there, who leads, with which epoch since
//! when, and how etcd is doing. Every coordinator answers, leader or
//! standby: what it says comes from etcd, not from its own memory.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::identity::Role;
use drover_proto::v1::coordinator_service_server::CoordinatorService;
use drover_proto::v1::{
    CoordinatorInfo, EtcdHealth, EtcdMemberInfo, ListCoordinatorsRequest, ListCoordinatorsResponse,
};
use tonic::{Request, Response, Status};

use crate::auth::Authorizer;
use crate::ha::Member;
use crate::store::{EtcdStore, Store};

/// How long each question to etcd may take.
const ASK_WITHIN: Duration = Duration::from_secs(2);

pub struct CoordinatorsSvc {
    pub name: String,
    /// `None`: one coordinator on redb.
    pub etcd: Option<Arc<EtcdStore>>,
    pub authz: Authorizer,
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorsSvc {
    async fn list_coordinators(
        &self,
        request: Request<ListCoordinatorsRequest>,
    ) -> Result<Response<ListCoordinatorsResponse>, Status> {
        self.authz
            .require(&request, &[Role::Operator, Role::Viewer])?;
        let Some(etcd) = &self.etcd else {
            return Ok(Response::new(ListCoordinatorsResponse {
                ha: false,
                answered_by: self.name.clone(),
                coordinators: vec![CoordinatorInfo {
                    name: self.name.clone(),
                    grpc: String::new(),
                    leader: true,
                }],
                leader: self.name.clone(),
                ..ListCoordinatorsResponse::default()
            }));
        };
        let mut resp = ListCoordinatorsResponse {
            ha: true,
            answered_by: self.name.clone(),
            ..ListCoordinatorsResponse::default()
        };
        let members = match etcd.scan_prefix(crate::replicate::MEMBERS).await {
            Ok(items) => (items.into_iter())
                .filter_map(|(_, v)| serde_json::from_slice::<Member>(&v).ok())
                .collect::<Vec<_>>(),
            Err(e) => {
                resp.etcd = Some(EtcdHealth {
                    error: e.to_string(),
                    ..EtcdHealth::default()
                });
                return Ok(Response::new(resp));
            }
        };
        let client = etcd.client();
        let name = format!("{}leader", etcd.prefix()).into_bytes();
        let mut election = client.election_client();
        if let Ok(Ok(l)) = tokio::time::timeout(ASK_WITHIN, election.leader(name)).await
            && let Some(kv) = l.kv()
            && let Ok(m) = serde_json::from_slice::<Member>(kv.value())
        {
            resp.leader = m.name;
            resp.epoch = u64::try_from(kv.create_revision()).unwrap_or(0);
        }
        resp.leader_since_ms = (members.iter())
            .find(|m| m.name == resp.leader)
            .map_or(0, |m| m.since_ms);
        resp.coordinators = (members.into_iter())
            .map(|m| CoordinatorInfo {
                leader: m.name == resp.leader,
                name: m.name,
                grpc: m.grpc,
            })
            .collect();
        resp.etcd = Some(etcd_health(&client).await);
        Ok(Response::new(resp))
    }
}

/// etcd's members and which leads its raft, as the member that answers
/// sees them; the error instead when none answers in time.
async fn etcd_health(client: &etcd_client::Client) -> EtcdHealth {
    let mut maintenance = client.maintenance_client();
    let mut cluster = client.cluster_client();
    let asked = tokio::time::timeout(ASK_WITHIN, async {
        let status = maintenance.status().await?;
        let members = cluster.member_list().await?;
        Ok::<_, etcd_client::Error>((status, members))
    })
    .await;
    match asked {
        Ok(Ok((status, members))) => EtcdHealth {
            members: (members.members().iter())
                .map(|m| EtcdMemberInfo {
                    name: m.name().to_string(),
                    client_urls: m.client_urls().to_vec(),
                    leader: m.id() == status.leader(),
                })
                .collect(),
            error: String::new(),
            version: status.version().to_string(),
        },
        Ok(Err(e)) => EtcdHealth {
            error: e.to_string(),
            ..EtcdHealth::default()
        },
        Err(_) => EtcdHealth {
            error: format!(
                "no answer within {}: is a quorum of members up?",
                humantime::format_duration(ASK_WITHIN)
            ),
            ..EtcdHealth::default()
        },
    }
}
