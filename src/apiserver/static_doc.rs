//! Documents that never change while the process runs (discovery, OpenAPI, version),
//! serialised once at start-up with their ETag, so serving one is a reference-count bump.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::IF_NONE_MATCH};
use ring::digest::{SHA512, digest};

#[derive(Debug, Clone)]
pub(crate) struct StaticDoc {
    pub body: Bytes,
    /// `"<SHA-512 in upper-case hex>"`, the form Go's discovery and OpenAPI handlers use.
    pub etag: HeaderValue,
    pub content_type: HeaderValue,
    /// The bare hash (no quotes), for URLs that pin a version (`?hash=` in OpenAPI v3).
    pub hash: String,
}

impl StaticDoc {
    pub(crate) fn new(body: Vec<u8>, content_type: &'static str) -> Self {
        let hash = sha512_hex(&body);
        // Upper-case hex in quotes is visible ASCII, always a valid header value.
        let etag = HeaderValue::from_str(&format!("\"{hash}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        StaticDoc {
            body: Bytes::from(body),
            etag,
            content_type: HeaderValue::from_static(content_type),
            hash,
        }
    }

    /// Whether the request's `If-None-Match` names this document's ETag (so 304 applies).
    pub(crate) fn not_modified(&self, headers: &HeaderMap) -> bool {
        if_none_match(headers, self.etag.as_bytes())
    }
}

/// RFC 9110 §13.1.2: `*`, or a list of entity tags compared weakly (a `W/` prefix on either
/// side is ignored).
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &[u8]) -> bool {
    let ours = strip_weak(etag);
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .any(|t| t == b"*" || strip_weak(t) == ours)
}

fn strip_weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

fn sha512_hex(data: &[u8]) -> String {
    use std::fmt::Write;
    let d = digest(&SHA512, data);
    let mut out = String::with_capacity(128);
    for b in d.as_ref() {
        let _ = write!(out, "{b:02X}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_quoted_upper_hex_sha512() {
        let doc = StaticDoc::new(b"abc".to_vec(), "application/json");
        // FIPS 180-2 test vector for "abc".
        assert!(doc.hash.starts_with("DDAF35A193617ABACC417349AE204131"));
        assert_eq!(doc.hash.len(), 128);
        assert_eq!(doc.etag.to_str().unwrap(), format!("\"{}\"", doc.hash));
    }

    #[test]
    fn if_none_match_vectors() {
        let doc = StaticDoc::new(b"{}".to_vec(), "application/json");
        let tag = doc.etag.to_str().unwrap().to_owned();
        let check = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            }
            doc.not_modified(&h)
        };
        assert!(!check(&[]));
        assert!(check(&[&tag]));
        assert!(check(&[&format!("W/{tag}")]));
        assert!(check(&["*"]));
        assert!(check(&[&format!("\"other\", {tag}")]));
        assert!(check(&["\"other\"", &tag]));
        assert!(!check(&["\"other\""]));
        assert!(!check(&[&tag[1..tag.len() - 1]]));
    }
}
