//! The OpenAPI documents of one group-version: v2, and v3's index pointing at the
//! group-version document by content hash, so clients can cache it forever.

use serde_json::json;

use crate::apiserver::static_doc::StaticDoc;

/// The three documents, serialised and hashed once.
#[derive(Debug, Clone)]
pub(crate) struct OpenApiDocs {
    pub v2: StaticDoc,
    pub v3_root: StaticDoc,
    pub v3_group_version: StaticDoc,
}

impl OpenApiDocs {
    /// `v3_key` is the group-version's key in the v3 index (`apis/<group>/<version>`) and
    /// `v3_path` the path serving `v3_group_version`.
    pub(crate) fn build(
        v2: Vec<u8>,
        v3_group_version: Vec<u8>,
        v3_key: &str,
        v3_path: &str,
    ) -> Self {
        let v3_group_version = StaticDoc::new(v3_group_version, "application/json");
        let v3_root = StaticDoc::new(
            v3_root_json(v3_key, v3_path, &v3_group_version.hash),
            "application/json",
        );
        OpenApiDocs {
            v2: StaticDoc::new(v2, "application/json"),
            v3_root,
            v3_group_version,
        }
    }
}

/// The `/openapi/v3` index.
pub(crate) fn v3_root_json(key: &str, path: &str, group_version_hash: &str) -> Vec<u8> {
    let doc = json!({
        "paths": {
            key: { "serverRelativeURL": format!("{path}?hash={group_version_hash}") },
        },
    });
    // A Value built from literals always serialises; the fallback is unreachable.
    serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec())
}
