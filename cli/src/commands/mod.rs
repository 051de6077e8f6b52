//! One module per command group. Each defines its clap arguments and a
//! `run` that returns `anyhow::Result`; [`run`] dispatches.

pub mod agents;
pub mod artifact;
pub mod ca;
pub mod cert;
pub mod coordinators;
pub mod drill;
pub mod drill_run;
pub mod rollout;
pub mod token;
pub mod ui;

use crate::cli::{Cli, Command, ConnFlags};
use crate::config::{self, Env};
use crate::conn::{self, Session};

/// What every command may need besides its own arguments.
pub struct Ctx {
    pub conn: ConnFlags,
    pub env: Env,
}

impl Ctx {
    /// Resolves connection settings and dials the coordinator.
    pub async fn session(&self) -> anyhow::Result<Session> {
        let settings = config::resolve(&self.conn, &self.env)?;
        conn::open(&settings).await
    }
}

pub async fn run(cli: Cli, env: Env) -> anyhow::Result<()> {
    let ctx = Ctx {
        conn: cli.conn,
        env,
    };
    match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Token(cmd) => token::run(&ctx, cmd).await,
        Command::Agents(args) => agents::list(&ctx, args).await,
        Command::Agent(cmd) => agents::run(&ctx, cmd).await,
        Command::Artifact(cmd) => artifact::run(&ctx, cmd).await,
        Command::Rollout(cmd) => rollout::run(&ctx, cmd).await,
        Command::Coordinators(args) => coordinators::list(&ctx, args).await,
        Command::Drill(cmd) => drill::run(&ctx, cmd).await,
        Command::Failover(args) => drill_run::start(&ctx, args, "failover").await,
        Command::Failback(args) => drill_run::start(&ctx, args, "failback").await,
        Command::Ui(args) => ui::run(&ctx, args).await,
    }
}
