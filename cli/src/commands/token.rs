//! `drover token create`: a one-time secret a new host enrols with.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use drover_proto::v1::{CreateTokenRequest, CreateTokenResponse};
use serde::Serialize;

use crate::cli::parse_duration;
use crate::commands::Ctx;
use crate::error::usage;
use crate::labels::parse_label;
use crate::output::{now_ms, relative, rfc3339_ms};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print the `drover-agent enroll` line for it
    ///
    /// Asks the coordinator for a join token (needs an operator certificate).
    /// Prints the token, the CA fingerprint agents pin (sha256:HEX), when the
    /// token expires, and a ready-to-paste line to run on the new host:
    ///   drover-agent enroll --coordinator ADDR --token TOKEN --ca-fingerprint sha256:HEX
    /// Labels given here are attached to the host when it enrols.
    ///
    /// Example:
    ///   drover token create --ttl 30m --label env=prod --label zone=a
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenFormat {
    /// Readable text with the enroll command line.
    Text,
    /// {"token","ca_fingerprint","expires_at"} for scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How long the token stays valid; above the coordinator's
    /// agents.max_token_ttl (default 24h) the coordinator refuses it (exit 1)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Label for the enrolling host, KEY=VALUE (repeatable), e.g. --label env=prod
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Output format
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "text")]
    pub output: TokenFormat,
}

#[derive(Debug, Serialize)]
struct TokenJson {
    token: String,
    ca_fingerprint: String,
    expires_at: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(ctx, args).await,
    }
}

fn labels_map(labels: Vec<(String, String)>) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (k, v) in labels {
        if let Some(old) = map.insert(k.clone(), v.clone())
            && old != v
        {
            return Err(usage(format!(
                "label `{k}` given twice with different values (`{old}` and `{v}`)"
            )));
        }
    }
    Ok(map)
}

fn with_prefix(fingerprint: &str) -> String {
    if fingerprint.starts_with("sha256:") {
        fingerprint.to_string()
    } else {
        format!("sha256:{fingerprint}")
    }
}

/// The text `token create` prints; `addr` is the address the operator used,
/// which the agent will dial too.
fn render_text(resp: &CreateTokenResponse, addr: &str, now_ms: i64) -> String {
    let fp = with_prefix(&resp.ca_fingerprint);
    let expires = match rfc3339_ms(resp.expires_at_ms) {
        Some(t) => format!("{t} ({})", relative(now_ms, resp.expires_at_ms)),
        None => "unknown".into(),
    };
    format!(
        "token:           {}\n\
         ca fingerprint:  {fp}\n\
         expires:         {expires}\n\
         \n\
         On the new host, run:\n  \
         drover-agent enroll --coordinator {addr} --token {} --ca-fingerprint {fp}\n",
        resp.token, resp.token
    )
}

async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<()> {
    let labels = labels_map(args.labels)?;
    let mut session = ctx.session().await?;
    let req = CreateTokenRequest {
        ttl_secs: args.ttl.as_secs().max(1),
        labels,
    };
    let resp = match session.client.create_token(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        TokenFormat::Json => {
            let json = TokenJson {
                token: resp.token.clone(),
                ca_fingerprint: with_prefix(&resp.ca_fingerprint),
                expires_at: rfc3339_ms(resp.expires_at_ms),
            };
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        TokenFormat::Text => print!("{}", render_text(&resp, &session.addr(), now_ms())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_USAGE, exit_code};

    const NOW: i64 = 1_790_000_000_000;

    fn resp(expires_at_ms: i64) -> CreateTokenResponse {
        CreateTokenResponse {
            token: "drt_abc".into(),
            expires_at_ms,
            ca_fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn prints_a_ready_enroll_line() {
        let text = render_text(&resp(NOW + 3_600_000), "c1:7443", NOW);
        let fp = format!("sha256:{}", "ab".repeat(32));
        assert!(text.contains("token:           drt_abc\n"), "{text}");
        assert!(text.contains(&format!("ca fingerprint:  {fp}\n")), "{text}");
        assert!(
            text.contains("expires:         2026-09-21T15:13:20Z (in 1h)\n"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "\n  drover-agent enroll --coordinator c1:7443 --token drt_abc --ca-fingerprint {fp}\n"
        )));
    }

    #[test]
    fn json_has_three_fields() {
        let v = serde_json::to_value(TokenJson {
            token: "t".into(),
            ca_fingerprint: with_prefix("ab"),
            expires_at: rfc3339_ms(NOW),
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"token": "t", "ca_fingerprint": "sha256:ab", "expires_at": "2026-09-21T14:13:20Z"})
        );
    }

    #[test]
    fn conflicting_labels_are_a_usage_error() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let ok = labels_map(vec![pair("env", "prod"), pair("env", "prod")]).expect("same twice");
        assert_eq!(ok.len(), 1);
        let err = labels_map(vec![pair("env", "prod"), pair("env", "dev")]).expect_err("conflict");
        assert_eq!(exit_code(&err), EXIT_USAGE);
    }
}
