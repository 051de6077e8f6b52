//! Artifacts (`drover artifact push|ls`).

use serde::Serialize;

use super::rfc3339_ms;
use crate::v1::Artifact;

/// An artifact the coordinator stores: the digest without a `sha256:`
/// prefix, `pushed_at` in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactJson {
    pub service: String,
    pub version: String,
    pub digest: String,
    pub size_bytes: u64,
    pub pushed_at: Option<String>,
    pub pushed_by: String,
}

impl From<&Artifact> for ArtifactJson {
    fn from(a: &Artifact) -> Self {
        let Artifact {
            service,
            version,
            digest,
            size_bytes,
            pushed_at_ms,
            pushed_by,
        } = a;
        ArtifactJson {
            service: service.clone(),
            version: version.clone(),
            digest: digest.clone(),
            size_bytes: *size_bytes,
            pushed_at: rfc3339_ms(*pushed_at_ms),
            pushed_by: pushed_by.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::testing::{NOW, to_value};
    use serde_json::json;

    #[test]
    fn an_artifact_serialises_whole() {
        let a = Artifact {
            service: "web".into(),
            version: "v2".into(),
            digest: "ab".repeat(32),
            size_bytes: 2048,
            pushed_at_ms: NOW,
            pushed_by: "operator/alice".into(),
        };
        assert_eq!(
            to_value(&ArtifactJson::from(&a)),
            json!({"service": "web", "version": "v2", "digest": "ab".repeat(32),
                   "size_bytes": 2048, "pushed_at": "2026-09-21T14:13:20Z",
                   "pushed_by": "operator/alice"})
        );
        let never = ArtifactJson::from(&Artifact::default());
        assert_eq!(never.pushed_at, None);
    }
}
