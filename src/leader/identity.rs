//! Who we are in the election: the pod name, as the Go DCA's `GetSelfPodName`.

use super::LeaderError;

/// Inode of the initial (host) UTS namespace, fixed by the kernel (`PROC_UTS_INIT_INO`).
const HOST_UTS_NAMESPACE_INODE: u64 = 0xEFFF_FFFE;

/// `DD_POD_NAME`, else the hostname, which in a pod is the pod name.
///
/// Refused (like the Go DCA) when the hostname is the node's, i.e. we share the host's
/// UTS namespace (`hostNetwork: true`): two replicas on one node would then share an
/// identity and both believe they lead.
pub fn identity() -> Result<String, LeaderError> {
    identity_from(
        std::env::var("DD_POD_NAME").ok(),
        || std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        || {
            std::fs::read_link("/proc/self/ns/uts")
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        },
    )
}

/// The rules of [`identity`] with the sources passed in, for tests.
pub(crate) fn identity_from(
    pod_name: Option<String>,
    hostname: impl FnOnce() -> Option<String>,
    uts_namespace: impl FnOnce() -> Option<String>,
) -> Result<String, LeaderError> {
    // An empty DD_POD_NAME (a Downward API typo) would make every replica "" and nobody
    // could ever be told apart, so it counts as unset.
    if let Some(name) = pod_name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
    {
        return Ok(name);
    }
    // Unknown namespace: in doubt the hostname is allowed, as in the Go DCA.
    if uts_namespace().and_then(|link| namespace_inode(&link)) == Some(HOST_UTS_NAMESPACE_INODE) {
        return Err(LeaderError::Identity(
            "DD_POD_NAME is not set and we run in the host's UTS namespace, so the hostname is \
             the node's; set DD_POD_NAME from the Downward API (fieldRef metadata.name)"
                .to_owned(),
        ));
    }
    match hostname().map(|h| h.trim().to_owned()) {
        Some(h) if !h.is_empty() => Ok(h),
        _ => Err(LeaderError::Identity(
            "DD_POD_NAME is not set and the hostname cannot be read".to_owned(),
        )),
    }
}

/// `uts:[4026531838]` → 4026531838.
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("uts:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn identity_vectors() {
        let pod_ns = || some("uts:[4026532555]");
        let host_ns = || some("uts:[4026531838]");
        let host = || some("dca-7d9f8b6c5-abcde\n");
        // (DD_POD_NAME, hostname, UTS namespace link, expected identity or refusal)
        type Case = (
            Option<String>,
            Option<String>,
            Option<String>,
            Result<&'static str, ()>,
        );
        let cases: Vec<Case> = vec![
            // DD_POD_NAME wins, even on the host namespace.
            (some("dca-0"), host(), host_ns(), Ok("dca-0")),
            (some(" dca-0\n"), None, None, Ok("dca-0")),
            // Empty DD_POD_NAME is unset.
            (some(""), host(), pod_ns(), Ok("dca-7d9f8b6c5-abcde")),
            (None, host(), pod_ns(), Ok("dca-7d9f8b6c5-abcde")),
            // Namespace unknown or unreadable: hostname allowed.
            (None, host(), None, Ok("dca-7d9f8b6c5-abcde")),
            (None, host(), some("garbage"), Ok("dca-7d9f8b6c5-abcde")),
            // Host namespace: refused.
            (None, host(), host_ns(), Err(())),
            (some("  "), host(), host_ns(), Err(())),
            // No hostname.
            (None, None, pod_ns(), Err(())),
            (None, some("\n"), pod_ns(), Err(())),
        ];
        for (i, (pod, hostname, ns, want)) in cases.into_iter().enumerate() {
            let got = identity_from(pod, || hostname, || ns);
            match want {
                Ok(name) => assert_eq!(got.unwrap(), name, "case {i}"),
                Err(()) => assert!(
                    matches!(got, Err(LeaderError::Identity(_))),
                    "case {i}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn host_namespace_message_says_what_to_set() {
        let err = identity_from(None, || some("node-1"), || some("uts:[4026531838]")).unwrap_err();
        assert!(err.to_string().contains("DD_POD_NAME"), "{err}");
    }
}
