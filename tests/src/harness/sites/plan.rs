//! The example DR plan (`examples/dr/dr.toml`) aimed at a fleet's
//! databases.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The database addresses the example plan names, which [`for_fleet`]
/// replaces with the fleet's.
pub const EXAMPLE_PRIMARY_DB: &str = "10.0.1.10";
pub const EXAMPLE_DR_DB: &str = "10.0.2.10";

/// This repository's `examples/dr`: the example plan and its commands.
pub fn examples_dr() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("dr");
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("find {}: {e}", dir.display()))
}

/// The example plan with `rpo`, its database commands aimed at `primary`
/// (for the example's primary database) and `dr` (its DR database), and
/// `extra` (TOML) merged over it.
#[track_caller]
pub(super) fn for_fleet(
    rpo: &str,
    extra: &str,
    primary: (IpAddr, u16),
    dr: (IpAddr, u16),
) -> String {
    let path = examples_dr().join("dr.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read the example plan {}: {e}", path.display()));
    let mut plan: toml::Table = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("the example plan {} is not TOML: {e}", path.display()));
    plan.insert("rpo".to_string(), toml::Value::String(rpo.to_string()));
    let nodes = [(EXAMPLE_PRIMARY_DB, primary), (EXAMPLE_DR_DB, dr)];
    if let Some(toml::Value::Table(db)) = plan.get_mut("database") {
        for (field, value) in db.iter_mut() {
            match value {
                toml::Value::Array(argv) => aim_at(field, argv, &nodes),
                // [database.failback]: the way back, aimed the same way.
                toml::Value::Table(back) => {
                    for (field, value) in back.iter_mut() {
                        if let toml::Value::Array(argv) = value {
                            aim_at(field, argv, &nodes);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if !extra.trim().is_empty() {
        let extra: toml::Table = toml::from_str(extra)
            .unwrap_or_else(|e| panic!("the extra plan TOML is not TOML: {e}\n{extra}"));
        merge(&mut plan, extra);
    }
    toml::to_string(&plan).unwrap_or_else(|e| panic!("write the plan as TOML: {e}"))
}

/// Aims a plan command at this fleet's databases: its `--host` names one of
/// the example's database addresses, which becomes the node's, and its
/// `--port` that node's port.
fn aim_at(field: &str, argv: &mut [toml::Value], nodes: &[(&str, (IpAddr, u16))]) {
    let arg = |argv: &[toml::Value], flag: &str| {
        (argv.iter())
            .position(|v| v.as_str() == Some(flag))
            .map(|i| i + 1)
            .filter(|i| *i < argv.len())
    };
    let Some(host_at) = arg(argv, "--host") else {
        return;
    };
    let named = argv[host_at].as_str().unwrap_or_default().to_string();
    let (_, (ip, port)) = (nodes.iter().find(|(example, _)| *example == named))
        .unwrap_or_else(|| {
            panic!(
                "database.{field} in the example plan names --host {named}, neither {EXAMPLE_PRIMARY_DB} (primary) nor {EXAMPLE_DR_DB} (dr)"
            )
        });
    argv[host_at] = toml::Value::String(ip.to_string());
    if let Some(port_at) = arg(argv, "--port") {
        argv[port_at] = toml::Value::String(port.to_string());
    }
}

/// Merges `extra` over `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn merges_tables_key_by_key() {
        let mut base: toml::Table = toml::from_str("a = 1\n[t]\nx = 1\ny = 2\n").expect("base");
        let extra: toml::Table = toml::from_str("b = 2\n[t]\ny = 3\n[u]\nz = 4\n").expect("extra");
        merge(&mut base, extra);
        let want: toml::Table =
            toml::from_str("a = 1\nb = 2\n[t]\nx = 1\ny = 3\n[u]\nz = 4\n").expect("want");
        assert_eq!(base, want);
    }

    #[test]
    fn aims_the_example_commands_at_the_fleets_nodes() {
        let a = (IpAddr::V4(Ipv4Addr::new(10, 200, 0, 2)), 20001);
        let b = (IpAddr::V4(Ipv4Addr::new(10, 200, 0, 6)), 20002);
        let nodes = [(EXAMPLE_PRIMARY_DB, a), (EXAMPLE_DR_DB, b)];
        let argv = |v: &[&str]| -> Vec<toml::Value> {
            v.iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect()
        };
        let mut promote = argv(&["pg-promote", "--host", EXAMPLE_DR_DB, "--port", "5432"]);
        aim_at("promote", &mut promote, &nodes);
        assert_eq!(
            promote,
            argv(&["pg-promote", "--host", "10.200.0.6", "--port", "20002"])
        );
        let mut lag = argv(&["pg-lag", "--port", "5432", "--host", EXAMPLE_PRIMARY_DB]);
        aim_at("lag", &mut lag, &nodes);
        assert_eq!(
            lag,
            argv(&["pg-lag", "--port", "20001", "--host", "10.200.0.2"])
        );
        // No --host: left alone.
        let mut bare = argv(&["pg-lag"]);
        aim_at("lag", &mut bare, &nodes);
        assert_eq!(bare, argv(&["pg-lag"]));
    }

    /// The example plan in the repository is a valid plan (the CLI's and
    /// the coordinator's own check) and names only commands installed
    /// beside it.
    #[test]
    fn the_example_plan_is_valid_and_its_commands_are_installed() {
        let path = examples_dr().join("dr.toml");
        let text = std::fs::read_to_string(&path).expect("read examples/dr/dr.toml");
        let plan = drover_model::drill::DrillPlan::from_toml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let commands = plan.commands();
        // To DR: lag, promote, stop writes, replayed; and the same four back.
        assert_eq!(commands.len(), 8, "{commands:?}");
        for (field, argv) in commands {
            let exe = examples_dr().join(&argv[0]);
            assert!(exe.is_file(), "{field}: {} is not in examples/dr", argv[0]);
        }
    }
}
