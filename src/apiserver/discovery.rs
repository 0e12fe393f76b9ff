//! The discovery documents of one group-version and `/version`, serialised once.

use serde::Serialize;

use crate::apimachinery::discovery::{
    GroupVersionSpec, aggregated_discovery_json, api_group_json, api_group_list_json,
    api_resource_list_json, to_vec,
};
use crate::apiserver::negotiate::Offer;
use crate::apiserver::static_doc::StaticDoc;

/// Kubernetes' `version.Info`.
#[derive(Serialize)]
struct VersionInfo {
    major: String,
    minor: String,
    #[serde(rename = "gitVersion")]
    git_version: String,
    #[serde(rename = "gitCommit")]
    git_commit: &'static str,
    /// Unknown to the build; Go leaves it empty in the same case.
    #[serde(rename = "gitTreeState")]
    git_tree_state: &'static str,
    #[serde(rename = "buildDate")]
    build_date: &'static str,
    /// The field clients read for the toolchain; ours is rustc.
    #[serde(rename = "goVersion")]
    go_version: &'static str,
    compiler: &'static str,
    platform: String,
}

pub(crate) fn version_json() -> Vec<u8> {
    let (major, minor, patch) = crate::version::parts();
    to_vec(&VersionInfo {
        major: major.to_string(),
        minor: minor.to_string(),
        git_version: format!("v{major}.{minor}.{patch}"),
        git_commit: crate::version::COMMIT,
        git_tree_state: "",
        build_date: crate::version::BUILD_DATE,
        go_version: crate::version::RUSTC,
        compiler: "rustc",
        platform: platform(),
    })
}

/// `GOOS/GOARCH`, with Go's architecture names, which is what clients compare.
fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// Every discovery document, serialised once.
#[derive(Debug, Clone)]
pub(crate) struct DiscoveryDocs {
    pub api_group_list: StaticDoc,
    pub aggregated_v2: StaticDoc,
    pub aggregated_v2beta1: StaticDoc,
    pub api_group: StaticDoc,
    pub api_resource_list: StaticDoc,
    pub version: StaticDoc,
}

impl DiscoveryDocs {
    pub(crate) fn build(spec: &GroupVersionSpec) -> Self {
        DiscoveryDocs {
            api_group_list: StaticDoc::new(api_group_list_json(spec), Offer::Json.content_type()),
            aggregated_v2: StaticDoc::new(
                aggregated_discovery_json(spec, "apidiscovery.k8s.io/v2"),
                Offer::DiscoveryV2.content_type(),
            ),
            aggregated_v2beta1: StaticDoc::new(
                aggregated_discovery_json(spec, "apidiscovery.k8s.io/v2beta1"),
                Offer::DiscoveryV2Beta1.content_type(),
            ),
            api_group: StaticDoc::new(api_group_json(spec), Offer::Json.content_type()),
            api_resource_list: StaticDoc::new(
                api_resource_list_json(spec),
                Offer::Json.content_type(),
            ),
            version: StaticDoc::new(version_json(), Offer::Json.content_type()),
        }
    }

    /// The `/apis` document in the negotiated representation.
    pub(crate) fn apis(&self, offer: Offer) -> &StaticDoc {
        match offer {
            Offer::Json => &self.api_group_list,
            Offer::DiscoveryV2 => &self.aggregated_v2,
            Offer::DiscoveryV2Beta1 => &self.aggregated_v2beta1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apimachinery::discovery::ResourceSpec;

    const SPEC: GroupVersionSpec = GroupVersionSpec {
        group: "example.com",
        version: "v1",
        group_version: "example.com/v1",
        resources: &[ResourceSpec {
            name: "widgets",
            singular_name: "",
            singular_resource: "widget",
            namespaced: true,
            kind: "WidgetList",
            verbs: &["get"],
        }],
    };

    #[test]
    fn version_has_the_kubernetes_version_info_shape() {
        let v: serde_json::Value = serde_json::from_slice(&version_json()).unwrap();
        let (major, minor, patch) = crate::version::parts();
        assert_eq!(v["major"], major.to_string());
        assert_eq!(v["minor"], minor.to_string());
        assert_eq!(v["gitVersion"], format!("v{major}.{minor}.{patch}"));
        assert_eq!(v["gitCommit"], crate::version::COMMIT);
        assert_eq!(v["compiler"], "rustc");
        let platform = v["platform"].as_str().unwrap();
        assert!(platform.starts_with(std::env::consts::OS), "{platform}");
        for key in ["gitTreeState", "buildDate", "goVersion"] {
            assert!(v[key].is_string(), "{key}");
        }
    }

    #[test]
    fn representations_have_distinct_etags() {
        let docs = DiscoveryDocs::build(&SPEC);
        assert_ne!(docs.api_group_list.etag, docs.aggregated_v2.etag);
        assert_ne!(docs.aggregated_v2.etag, docs.aggregated_v2beta1.etag);
        assert_eq!(
            docs.apis(Offer::DiscoveryV2).content_type,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
    }
}
