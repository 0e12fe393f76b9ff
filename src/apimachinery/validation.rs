//! Kubernetes' name validation (`k8s.io/apimachinery/pkg/util/validation`).

/// A namespace name as Kubernetes validates it (`IsDNS1123Label`): a namespace that cannot
/// exist names nothing, so a path naming one cannot exist.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
