//! The host JSON `drover agents|agent show -o json` prints: the contract's
//! views from [`drover_proto::json`]. The tests pin what the CLI prints with
//! its own fixtures.

pub use drover_proto::json::HostJson;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{GIB, NOW, bare_host, host};

    #[test]
    fn json_has_the_contract_shape() {
        let mut h = host("h1");
        h.instances[0].release = None;
        let v = serde_json::to_value(HostJson::from(&h)).expect("json");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "host_id",
            "status",
            "status_reason",
            "labels",
            "agent_version",
            "last_seen",
            "last_seen_ms",
            "cert_serial",
            "cert_not_after",
            "enrolled_at",
            "peer_addr",
            "metrics",
            "instances",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(v["status"], "connected");
        assert_eq!(v["labels"]["env"], "prod");
        assert_eq!(v["last_seen"], "2026-09-21T14:13:17Z");
        assert_eq!(v["last_seen_ms"], NOW - 3_000);
        assert_eq!(v["cert_not_after"], "2026-09-22T10:13:20Z");
        assert_eq!(v["metrics"]["cpu_count"], 4);
        assert_eq!(v["metrics"]["mem_total_bytes"], 8 * GIB);
        assert_eq!(v["metrics"]["disks"][1]["mount"], "/var");
        let inst = &v["instances"][0];
        let mut inst_keys: Vec<&str> = inst
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        inst_keys.sort_unstable();
        let mut expected = vec![
            "id",
            "name",
            "service",
            "runtime",
            "state",
            "restarts",
            "pid",
            "health",
            "last_check_latency_ms",
            "consecutive_successes",
            "consecutive_failures",
            "last_check_error",
            "release",
            "drained",
            "drain",
            "load_balancers",
            "color",
            "weight_held",
            "weight_reasserted",
            "app_metrics",
        ];
        expected.sort_unstable();
        assert_eq!(inst_keys, expected);
        assert_eq!(inst["state"], "running");
        assert_eq!(inst["health"], "healthy");
        assert_eq!(
            inst["release"],
            serde_json::json!({"version": "", "digest": ""})
        );
        assert_eq!(inst["drain"], "haproxy");
        assert_eq!(inst["load_balancers"], serde_json::json!([]));
        assert_eq!(v["instances"][1]["state"], "crashed");
        assert_eq!(v["instances"][1]["health"], "unhealthy");

        let bare = serde_json::to_value(HostJson::from(&bare_host("h3"))).expect("json");
        assert_eq!(bare["status"], "enrolled");
        assert!(bare["metrics"].is_null());
        assert!(bare["last_seen"].is_null());
        assert_eq!(bare["instances"], serde_json::json!([]));
    }
}
