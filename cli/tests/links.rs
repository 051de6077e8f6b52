//! The CLI links the shared model, the client transport and the wire
//! contract, never the coordinator or the agent (nor their store): an
//! operator's `drover` stays small and a server change cannot break it.
//!
//! Read from the workspace's `Cargo.lock`, which lists every package's
//! dependencies: cheap, no cargo at test time. The lock file also lists a
//! workspace crate's dev-dependencies, so this is stricter than
//! `cargo tree -e normal`: the CLI's tests may not pull the coordinator in
//! either.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Package name -> names of its dependencies, over every locked version.
fn lock_graph() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let lock: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let packages = lock
        .get("package")
        .and_then(toml::Value::as_array)
        .expect("Cargo.lock has [[package]] entries");
    for p in packages {
        let name = p
            .get("name")
            .and_then(toml::Value::as_str)
            .expect("package name");
        let deps = graph.entry(name.to_string()).or_default();
        for d in p
            .get("dependencies")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            // "name" or "name version" when several versions are locked.
            let d = d.as_str().expect("dependency is a string");
            deps.insert(d.split(' ').next().unwrap_or(d).to_string());
        }
    }
    graph
}

/// Every package `root` reaches, itself excluded.
fn reached(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    assert!(graph.contains_key(root), "{root} is not in Cargo.lock");
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(p) = todo.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

fn forbidden<'a>(reach: &BTreeSet<String>, names: &[&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|n| reach.contains(*n))
        .collect()
}

#[test]
fn the_cli_links_neither_the_coordinator_nor_the_agent_nor_redb() {
    let graph = lock_graph();
    // The walk must see a link where there is one, or the checks below
    // would pass on an empty graph.
    let coordinator = reached(&graph, "drover-coordinator");
    assert!(coordinator.contains("redb"), "{coordinator:?}");
    assert!(coordinator.contains("drover-model"), "{coordinator:?}");

    let cli = reached(&graph, "drover-cli");
    assert!(cli.contains("drover-model"), "{cli:?}");
    let bad = forbidden(&cli, &["drover-coordinator", "drover-agent", "redb"]);
    assert!(
        bad.is_empty(),
        "drover-cli depends on {bad:?}; share types through drover-model instead"
    );
}

#[test]
fn the_shared_model_has_no_runtime() {
    let graph = lock_graph();
    let model = reached(&graph, "drover-model");
    let bad = forbidden(
        &model,
        &[
            "tokio",
            "tonic",
            "redb",
            "drover-proto",
            "drover-net",
            "drover-coordinator",
        ],
    );
    assert!(
        bad.is_empty(),
        "drover-model depends on {bad:?}; it is shared by the CLI and the coordinator and must stay free of their runtimes"
    );
}

#[test]
fn the_cli_manifest_names_no_server_crate() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).expect("read cli/Cargo.toml");
    let manifest: toml::Table = text.parse().expect("parse cli/Cargo.toml");
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = manifest.get(section).and_then(toml::Value::as_table) else {
            continue;
        };
        for name in ["drover-coordinator", "drover-agent", "redb"] {
            assert!(
                !deps.contains_key(name),
                "cli/Cargo.toml [{section}] names {name}"
            );
        }
    }
}
