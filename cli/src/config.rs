//! Where the CLI finds the coordinator and its credentials.
//!
//! Each of `addr`, `ca`, `cert` and `key` comes from, in order: the flag
//! (`--addr`), the environment (`DROVER_ADDR`), the config file
//! (`$DROVER_CONFIG`, else `~/.config/drover/cli.toml`). Paths in the file are
//! relative to the file's directory, so a config directory can be copied
//! around with its certificates. The environment is passed in as a map so
//! tests never touch the process environment.
//!
//! `addr` may name several coordinators (HA): comma-separated in the flag
//! and the environment, a string or an array of strings in the file. They
//! are tried in order (see `conn::open`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::ConnFlags;
use crate::error::usage;

pub type Env = BTreeMap<String, String>;

pub const ENV_CONFIG: &str = "DROVER_CONFIG";
pub const ENV_ADDR: &str = "DROVER_ADDR";
pub const ENV_CA: &str = "DROVER_CA";
pub const ENV_CERT: &str = "DROVER_CERT";
pub const ENV_KEY: &str = "DROVER_KEY";

/// The process environment as an [`Env`]; variables that are not UTF-8 are
/// skipped (none of ours can be).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The CLI config file as written on disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<FileAddr>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// `addr` in the file: one string (which may hold a comma-separated list)
/// or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileAddr {
    One(String),
    Many(Vec<String>),
}

impl FileAddr {
    fn into_list(self) -> Vec<String> {
        match self {
            FileAddr::One(s) => split_addrs(&s),
            FileAddr::Many(v) => v.iter().flat_map(|s| split_addrs(s)).collect(),
        }
    }
}

/// `a:1, b:2` as `["a:1", "b:2"]`; empty entries dropped.
pub fn split_addrs(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect()
}

/// Where a setting came from, shown in error messages so an operator can
/// tell which layer to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "--{name}"),
            Source::Env(name) => write!(f, "${name}"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// Everything needed to open a session with a coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSettings {
    /// One coordinator or several (tried in order); never empty.
    pub addr: Setting<Vec<String>>,
    pub ca: Setting<PathBuf>,
    pub cert: Setting<PathBuf>,
    pub key: Setting<PathBuf>,
}

/// The config file to read, and whether it must exist (it must when named
/// by `$DROVER_CONFIG`).
fn config_path(env: &Env) -> Option<(PathBuf, bool)> {
    if let Some(p) = env.get(ENV_CONFIG).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let home = env.get("HOME").filter(|h| !h.is_empty())?;
    Some((
        Path::new(home)
            .join(".config")
            .join("drover")
            .join("cli.toml"),
        false,
    ))
}

/// Parses a config file's text; `path` is only for messages and for
/// resolving relative paths.
fn parse_file(path: &Path, text: &str) -> anyhow::Result<(FileConfig, Option<Vec<String>>)> {
    let mut cfg: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => usage(format!("{}: line {line}: {}", path.display(), e.message())),
            None => usage(format!("{}: {}", path.display(), e.message())),
        }
    })?;
    let addr = cfg.addr.take().map(FileAddr::into_list);
    if addr.as_ref().is_some_and(Vec::is_empty) {
        return Err(usage(format!(
            "{}: field `addr`: expected HOST:PORT or a list of them, got nothing",
            path.display()
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok((cfg, addr))
}

type Loaded = (Option<PathBuf>, FileConfig, Option<Vec<String>>);

fn load_file(env: &Env) -> anyhow::Result<Loaded> {
    let Some((path, required)) = config_path(env) else {
        return Ok((None, FileConfig::default(), None));
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (cfg, addr) = parse_file(&path, &text)?;
            Ok((Some(path.clone()), cfg, addr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok((Some(path), FileConfig::default(), None))
        }
        Err(e) => Err(usage(format!(
            "{}: {e} (named by ${ENV_CONFIG})",
            path.display()
        ))),
    }
}

/// The first of flag, environment and file that is set.
fn pick<T>(
    flag: (Option<T>, &'static str),
    env: (Option<T>, &'static str),
    file: (Option<T>, Option<&PathBuf>),
) -> Option<Setting<T>> {
    let setting = |value, source| Some(Setting { value, source });
    match (flag, env, file) {
        ((Some(v), name), _, _) => setting(v, Source::Flag(name)),
        (_, (Some(v), name), _) => setting(v, Source::Env(name)),
        (_, _, (Some(v), Some(path))) => setting(v, Source::File(path.clone())),
        _ => None,
    }
}

/// Picks each setting by precedence flag > env > file; reports every
/// missing one at once, with all three ways to set it.
pub fn resolve(flags: &ConnFlags, env: &Env) -> anyhow::Result<ConnSettings> {
    let (file_path, file, file_addr) = load_file(env)?;
    let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let path_var = |name: &str| var(name).map(PathBuf::from);
    let fp = file_path.as_ref();

    let list = |s: Option<String>| s.map(|s| split_addrs(&s));
    let addr = pick(
        (list(flags.addr.clone()), "addr"),
        (list(var(ENV_ADDR)), ENV_ADDR),
        (file_addr, fp),
    );
    if let Some(a) = addr.as_ref().filter(|a| a.value.is_empty()) {
        return Err(usage(format!(
            "coordinator address (set by {}): expected HOST:PORT or several, comma-separated; \
             got no address",
            a.source
        )));
    }
    let ca = pick(
        (flags.ca.clone(), "ca"),
        (path_var(ENV_CA), ENV_CA),
        (file.ca, fp),
    );
    let cert = pick(
        (flags.cert.clone(), "cert"),
        (path_var(ENV_CERT), ENV_CERT),
        (file.cert, fp),
    );
    let key = pick(
        (flags.key.clone(), "key"),
        (path_var(ENV_KEY), ENV_KEY),
        (file.key, fp),
    );
    if let (Some(addr), Some(ca), Some(cert), Some(key)) = (&addr, &ca, &cert, &key) {
        return Ok(ConnSettings {
            addr: addr.clone(),
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        });
    }

    let file_name = fp
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.config/drover/cli.toml".to_string());
    let missing: Vec<String> = [
        (
            addr.is_none(),
            "coordinator address",
            "--addr HOST:PORT",
            ENV_ADDR,
            "addr",
        ),
        (ca.is_none(), "CA certificate", "--ca PATH", ENV_CA, "ca"),
        (
            cert.is_none(),
            "client certificate",
            "--cert PATH",
            ENV_CERT,
            "cert",
        ),
        (key.is_none(), "client key", "--key PATH", ENV_KEY, "key"),
    ]
    .into_iter()
    .filter(|m| m.0)
    .map(|(_, what, flag, var, key_name)| {
        format!("  {what}: pass {flag}, set {var}, or set `{key_name}` in {file_name}")
    })
    .collect();
    Err(usage(format!(
        "missing connection settings:\n{}\n(`drover cert issue` makes a certificate and key; \
         the CA certificate is ca.pem from `drover ca init`)",
        missing.join("\n")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_USAGE, exit_code};

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("cli.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "addr = \"file:1\"\nca = \"ca.pem\"\ncert = \"/abs/op.pem\"\nkey = \"keys/op.key\"\n",
        );
        let env = env(&[
            (ENV_CONFIG, path.to_str().expect("utf8")),
            (ENV_ADDR, "env:1"),
            (ENV_CERT, "env.pem"),
        ]);
        let flags = ConnFlags {
            addr: Some("flag:1".into()),
            ..ConnFlags::default()
        };
        let s = resolve(&flags, &env).expect("resolve");
        assert_eq!(s.addr.value, ["flag:1"]);
        assert_eq!(s.addr.source, Source::Flag("addr"));
        assert_eq!(s.cert.value, PathBuf::from("env.pem"));
        assert_eq!(s.cert.source, Source::Env(ENV_CERT));
        // Relative paths in the file are relative to the file's directory.
        assert_eq!(s.ca.value, dir.path().join("ca.pem"));
        assert_eq!(s.ca.source, Source::File(path.clone()));
        assert_eq!(s.key.value, dir.path().join("keys/op.key"));

        let s = resolve(&ConnFlags::default(), &env).expect("resolve");
        assert_eq!(s.addr.value, ["env:1"]);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "addr = \"file:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        );
        let env = env(&[(ENV_CONFIG, path.to_str().expect("utf8")), (ENV_ADDR, "")]);
        let s = resolve(&ConnFlags::default(), &env).expect("resolve");
        assert_eq!(s.addr.value, ["file:1"]);
    }

    #[test]
    fn default_file_lives_under_home() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join(".config/drover");
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_config(
            &dir,
            "addr = \"h:1\"\nca = \"ca.pem\"\ncert = \"c\"\nkey = \"k\"\n",
        );
        let env = env(&[("HOME", home.path().to_str().expect("utf8"))]);
        let s = resolve(&ConnFlags::default(), &env).expect("resolve");
        assert_eq!(s.addr.value, ["h:1"]);
        assert_eq!(s.ca.value, dir.join("ca.pem"));
    }

    #[test]
    fn missing_settings_are_all_named() {
        let home = tempfile::tempdir().expect("tempdir");
        let env = env(&[
            ("HOME", home.path().to_str().expect("utf8")),
            (ENV_CA, "/ca.pem"),
        ]);
        let err = resolve(&ConnFlags::default(), &env).expect_err("missing");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let msg = err.to_string();
        assert!(msg.contains("coordinator address: pass --addr HOST:PORT, set DROVER_ADDR"));
        assert!(msg.contains("client certificate: pass --cert PATH"));
        assert!(msg.contains("client key: pass --key PATH"));
        assert!(!msg.contains("CA certificate: pass"), "{msg}");
        assert!(msg.contains(".config/drover/cli.toml"), "{msg}");
    }

    #[test]
    fn unknown_keys_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), "addr = \"a:1\"\nadress = \"typo\"\n");
        let env = env(&[(ENV_CONFIG, path.to_str().expect("utf8"))]);
        let err = resolve(&ConnFlags::default(), &env).expect_err("unknown key");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: line 2:", path.display())),
            "{msg}"
        );
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn named_config_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.toml");
        let env = env(&[(ENV_CONFIG, missing.to_str().expect("utf8"))]);
        let err = resolve(&ConnFlags::default(), &env).expect_err("missing file");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert!(err.to_string().contains("nope.toml"));
    }

    #[test]
    fn several_coordinators_from_flag_env_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "addr = [\"c1:7443\", \"c2:7443\"]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        );
        let mut e = env(&[(ENV_CONFIG, path.to_str().expect("utf8"))]);
        let s = resolve(&ConnFlags::default(), &e).expect("resolve");
        assert_eq!(s.addr.value, ["c1:7443", "c2:7443"]);
        e.insert(ENV_ADDR.into(), "e1:1, e2:2,".into());
        let s = resolve(&ConnFlags::default(), &e).expect("resolve");
        assert_eq!(s.addr.value, ["e1:1", "e2:2"]);
        let flags = ConnFlags {
            addr: Some("f1:1,f2:2,f3:3".into()),
            ..ConnFlags::default()
        };
        let s = resolve(&flags, &e).expect("resolve");
        assert_eq!(s.addr.value, ["f1:1", "f2:2", "f3:3"]);
        // A string in the file may hold a list too.
        write_config(
            dir.path(),
            "addr = \"c1:1,c2:2\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        );
        e.remove(ENV_ADDR);
        let s = resolve(&ConnFlags::default(), &e).expect("resolve");
        assert_eq!(s.addr.value, ["c1:1", "c2:2"]);
    }

    #[test]
    fn an_empty_address_list_is_a_usage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "addr = []\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        );
        let e = env(&[(ENV_CONFIG, path.to_str().expect("utf8"))]);
        let err = resolve(&ConnFlags::default(), &e).expect_err("empty list");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert!(err.to_string().contains("field `addr`"), "{err}");
        write_config(
            dir.path(),
            "addr = \"c:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        );
        let flags = ConnFlags {
            addr: Some(" , ".into()),
            ..ConnFlags::default()
        };
        let err = resolve(&flags, &e).expect_err("no address");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert!(err.to_string().contains("set by --addr"), "{err}");
    }
}
