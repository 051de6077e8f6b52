//! A real etcd cluster on loopback (Debian `etcd-server`) for coordinators configured with
//! `[store] type = "etcd"`. The cluster itself lives in `drover-testkit`, shared with the
//! coordinator's own store tests; this adds what end-to-end tests need around it.

pub use drover_testkit::etcd::{EtcdCluster, EtcdTlsFiles, START_TIMEOUT};

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `[store]` section of coordinator.toml that puts a coordinator's state in `cluster`
/// under `prefix` (for [`crate::CoordinatorSpec::extra_toml`]).
pub fn store_toml(cluster: &EtcdCluster, prefix: &str) -> String {
    store_toml_for(&cluster.endpoints(), prefix)
}

/// [`store_toml`] with the members reached at `endpoints` (`http://IP:PORT`,
/// through proxies say).
pub fn store_toml_for(endpoints: &[String], prefix: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| quoted(e)).collect();
    format!(
        "[store]\ntype = \"etcd\"\nendpoints = [{}]\nprefix = {}\ntimeout = \"3s\"\n",
        endpoints.join(", "),
        quoted(prefix)
    )
}

/// [`store_toml`] for a cluster serving TLS: the CA of its server certificates, and the
/// client certificate the coordinator presents.
pub fn store_toml_tls(
    cluster: &EtcdCluster,
    prefix: &str,
    ca: &std::path::Path,
    client: &crate::CertPair,
) -> String {
    format!(
        "{}ca_cert = {}\ncert = {}\nkey = {}\n",
        store_toml(cluster, prefix),
        quoted(&ca.display().to_string()),
        quoted(&client.cert.display().to_string()),
        quoted(&client.key.display().to_string()),
    )
}
