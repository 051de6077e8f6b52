//! `drover cert issue`: certificates for coordinators and people. Agents
//! never get one this way; they enrol with a join token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_model::pki::{self, Ca};
use drover_proto::identity::{Identity, Role, valid_name};

use crate::cli::parse_duration;
use crate::error::usage;
use crate::output::{rfc3339_ms, system_time_ms};

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a certificate and key for a coordinator, operator or viewer
    ///
    /// Signs a new certificate with the CA in --ca-dir and writes OUT/NAME.pem
    /// and OUT/NAME.key (mode 0600). Existing files are never overwritten.
    /// The certificate carries the identity drover://ROLE/NAME:
    ///   coordinator  a coordinator's server certificate (add --san for its host names)
    ///   operator     a person or pipeline that may read and change the fleet
    ///   viewer       a person or dashboard that may only read
    /// Agents do not get certificates this way: create a join token with
    /// `drover token create` and run `drover-agent enroll` on the host.
    ///
    /// Example:
    ///   drover cert issue --ca-dir /etc/drover --role operator --name alice --out ~/.config/drover
    #[command(verbatim_doc_comment)]
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca.key (from `drover ca init`)
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// Role of the holder: coordinator, operator or viewer
    #[arg(long, value_name = "ROLE", value_parser = parse_role)]
    pub role: Role,
    /// Name of the holder (1-63 of a-z A-Z 0-9 - _ .); also the output file name
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: String,
    /// Extra DNS name or IP address to include (repeatable), e.g. --san coord1.example.net --san 10.0.0.5
    #[arg(long = "san", value_name = "DNS|IP")]
    pub sans: Vec<String>,
    /// Directory to write NAME.pem and NAME.key into; created if missing
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// How long the certificate is valid, e.g. 720h or 30d
    #[arg(long, value_name = "DURATION", default_value = "8760h", value_parser = parse_duration)]
    pub lifetime: Duration,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s.parse::<Role>() {
        Ok(Role::Agent) => Err("agents do not get certificates from `drover cert issue`: \
             create a join token with `drover token create` and run `drover-agent enroll` on the host"
            .into()),
        Ok(role) => Ok(role),
        Err(_) => Err(format!(
            "unknown role `{s}`; expected coordinator, operator or viewer"
        )),
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    if valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("use 1-63 characters from a-z, A-Z, 0-9, `-`, `_` and `.`, starting with a letter or digit".into())
    }
}

pub fn run(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Issue(args) => issue(args),
    }
}

fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let identity = Identity::new(args.role, &args.name).map_err(|e| usage(e.to_string()))?;
    let cert_path = args.out.join(format!("{}.pem", args.name));
    let key_path = args.out.join(format!("{}.key", args.name));
    // Check both before writing either, so a refusal leaves nothing behind.
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(anyhow::anyhow!(
                "{} already exists; refusing to overwrite a key or certificate \
                 (choose another --name or --out, or move the old files away)",
                p.display()
            ));
        }
    }
    let ca = Ca::load(&args.ca_dir)
        .with_context(|| format!("load CA from {}", args.ca_dir.display()))?;
    let issued = ca
        .issue(&identity, &args.sans, args.lifetime)
        .with_context(|| format!("issue certificate for {identity}"))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("create output directory {}", args.out.display()))?;
    pki::write_new(&key_path, issued.key_pem.as_bytes(), true).context("write key")?;
    if let Err(e) = pki::write_new(&cert_path, issued.cert_pem.as_bytes(), false) {
        // Do not leave a key without its certificate.
        let _ = std::fs::remove_file(&key_path);
        return Err(e).context("write certificate");
    }

    let until = rfc3339_ms(system_time_ms(issued.not_after)).unwrap_or_default();
    println!(
        "issued {identity}, serial {}, valid until {until}",
        issued.serial
    );
    println!("  certificate: {}", cert_path.display());
    println!("  private key: {} (mode 0600)", key_path.display());
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    match args.role {
        Role::Coordinator => println!(
            "use it in the coordinator config: [tls] cert = \"{}\", key = \"{}\"",
            abs(&cert_path).display(),
            abs(&key_path).display()
        ),
        _ => println!(
            "use it: export DROVER_CA={} DROVER_CERT={} DROVER_KEY={}",
            abs(&args.ca_dir.join(pki::CA_CERT_FILE)).display(),
            abs(&cert_path).display(),
            abs(&key_path).display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_agent_role_with_a_pointer_to_tokens() {
        let err = parse_role("agent").expect_err("agent refused");
        assert!(err.contains("drover token create"), "{err}");
        assert!(
            parse_role("root")
                .expect_err("unknown")
                .contains("coordinator, operator or viewer")
        );
        assert_eq!(parse_role("viewer"), Ok(Role::Viewer));
    }
}
