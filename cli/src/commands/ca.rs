//! `drover ca init`: the root of trust, made on the operator's machine.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_model::pki::{CA_CERT_FILE, CA_KEY_FILE, Ca};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA: DIR/ca.pem and DIR/ca.key, and print its fingerprint
    ///
    /// Creates a new drover certificate authority (ECDSA P-256, valid 10 years)
    /// in DIR: ca.pem (the certificate, shared with every coordinator and
    /// operator) and ca.key (mode 0600; needed by coordinators to sign agent
    /// certificates and by `drover cert issue`). Existing files are never
    /// overwritten. Prints the CA fingerprint (sha256:HEX) that join tokens
    /// carry so agents can pin it.
    ///
    /// Example: drover ca init --dir /etc/drover --name prod
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for ca.pem and ca.key; created if missing
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Name put into the CA certificate's subject ("drover CA NAME")
    #[arg(long, value_name = "NAME", default_value = "drover")]
    pub name: String,
}

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let ca = Ca::init(&args.dir, &args.name).context("create CA")?;
    let dir = args.dir.display();
    println!("created CA \"drover CA {}\" in {dir}", args.name);
    println!("  certificate: {}", args.dir.join(CA_CERT_FILE).display());
    println!(
        "  private key: {} (mode 0600, keep it secret)",
        args.dir.join(CA_KEY_FILE).display()
    );
    println!("fingerprint: sha256:{}", ca.fingerprint());
    println!("next: drover cert issue --ca-dir {dir} --role coordinator --name c1 --san HOSTNAME");
    Ok(())
}
