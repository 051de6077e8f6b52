//! Certificates made with the real CLI (`drover ca init`, `drover cert
//! issue`), so the harness exercises the same path an operator takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::bin_path;
use super::process::{CmdOutput, run_cmd};

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    /// Serial (hex) and expiry read from the certificate file.
    pub fn parse(&self) -> Result<drover_net::transport::PeerCert, String> {
        parse_cert_file(&self.cert)
    }
}

/// Reads the drover identity, serial and validity of a PEM certificate file.
pub fn parse_cert_file(path: &Path) -> Result<drover_net::transport::PeerCert, String> {
    let pem = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let certs = drover_net::transport::certs_from_pem(&path.display().to_string(), &pem)
        .map_err(|e| e.to_string())?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?;
    drover_net::transport::parse_cert(first).map_err(|e| e.to_string())
}

/// Whether the certificate in `pair` has expired (with a second of margin for
/// clock granularity).
pub fn expired(pair: &CertPair) -> bool {
    match pair.parse() {
        Ok(cert) => SystemTime::now() > cert.not_after + Duration::from_secs(1),
        Err(_) => false,
    }
}

/// A CA directory plus a directory of issued certificates.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_dir: PathBuf,
    pub certs_dir: PathBuf,
    /// As printed by `drover ca init` (whatever format it chose); prefer the
    /// fingerprint from `drover token create`.
    pub init_output: String,
    /// HOME for the CLI, so no user configuration leaks in.
    home: PathBuf,
}

impl Pki {
    /// `drover ca init --dir DIR/ca`; certificates go to `DIR/certs`.
    pub fn init(dir: &Path, home: &Path) -> Pki {
        let ca_dir = dir.join("ca");
        let certs_dir = dir.join("certs");
        std::fs::create_dir_all(&certs_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", certs_dir.display()));
        let out = run_drover(
            home,
            &[
                "ca",
                "init",
                "--dir",
                &ca_dir.display().to_string(),
                "--name",
                "drover-test-ca",
            ],
        )
        .expect_success();
        for f in ["ca.pem", "ca.key"] {
            assert!(
                ca_dir.join(f).is_file(),
                "`drover ca init` did not write {}:\n{out}",
                ca_dir.join(f).display()
            );
        }
        Pki {
            ca_dir,
            certs_dir,
            init_output: out.stdout,
            home: home.to_path_buf(),
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir.join("ca.pem")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.ca_dir.join("ca.key")
    }

    /// Runs `drover cert issue`; returns the output without checking it.
    pub fn try_issue(
        &self,
        role: &str,
        name: &str,
        sans: &[&str],
        lifetime: Option<&str>,
    ) -> CmdOutput {
        let ca_dir = self.ca_dir.display().to_string();
        let out_dir = self.certs_dir.display().to_string();
        let mut args = vec![
            "cert", "issue", "--ca-dir", &ca_dir, "--role", role, "--name", name, "--out", &out_dir,
        ];
        for san in sans {
            args.push("--san");
            args.push(san);
        }
        if let Some(lifetime) = lifetime {
            args.push("--lifetime");
            args.push(lifetime);
        }
        run_drover(&self.home, &args)
    }

    /// Issues a certificate; panics with the CLI's output on failure.
    pub fn issue(&self, role: &str, name: &str, sans: &[&str], lifetime: Option<&str>) -> CertPair {
        let out = self.try_issue(role, name, sans, lifetime).expect_success();
        let pair = CertPair {
            cert: self.certs_dir.join(format!("{name}.pem")),
            key: self.certs_dir.join(format!("{name}.key")),
        };
        assert!(
            pair.cert.is_file() && pair.key.is_file(),
            "`drover cert issue` did not write {} and {}:\n{out}",
            pair.cert.display(),
            pair.key.display()
        );
        pair
    }
}

/// Runs the `drover` CLI with a clean environment (HOME set to `home`, no
/// DROVER_* variables) and no connection settings.
pub fn run_drover(home: &Path, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(bin_path("drover"));
    cmd.args(args);
    clean_env(&mut cmd, home);
    run_cmd(cmd, CMD_TIMEOUT)
}

/// Removes variables that could point the binaries at a user's setup.
pub fn clean_env(cmd: &mut Command, home: &Path) {
    for var in [
        "DROVER_ADDR",
        "DROVER_CA",
        "DROVER_CERT",
        "DROVER_KEY",
        "DROVER_CONFIG",
        "XDG_CONFIG_HOME",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home).env("NO_COLOR", "1");
}
