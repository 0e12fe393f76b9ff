//! The node agents' bearer token check, as the Go DCA's `util.Validate` answers it, without
//! its double write: a refused request gets one answer and never reaches a handler.

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::apiserver::response::Body;
use crate::node_api::go_error;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Authorization` header, or an empty one.
    NoToken,
    /// The first word is not `Bearer`.
    UnsupportedScheme(String),
    /// A header that is no text (bytes outside visible ASCII).
    Malformed,
    /// `Bearer` with a wrong token, or with other than exactly one word after it.
    InvalidToken,
}

/// Which token a path takes. The Go DCA's `isExternalPath`: what node agents and cluster
/// check runners call takes the node agents' token; every other path (our CLI's) is
/// internal and takes the local one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathClass {
    External,
    Internal,
}

/// Go counts `/`-separated segments (so `/api/v1/tags/pod` is internal, its longer forms
/// external). Unlike Go it looks at the path only: a query string does not change the
/// token a route takes.
pub(crate) fn classify(path: &str) -> PathClass {
    let segments: Vec<&str> = path.split('/').collect();
    let external = match segments.as_slice() {
        ["", "version"] => true,
        ["", "api", "v1", "languagedetection"] | ["", "api", "v2", "series"] => true,
        ["", "api", "v1", "cluster", "id"] => true,
        ["", "api", "v1", "tags", "pod", _] | ["", "api", "v1", "tags", "pod", _, _, _] => true,
        ["", "api", "v1", "tags", "node" | "namespace", _] => true,
        ["", "api", "v1", "annotations", "node", _] => true,
        ["", "api", "v1", "metadata", "namespace", _] => true,
        // The legacy pod metadata path of agents before 6.5 (no route serves it any more).
        ["", "api", "v1", "metadata", _, _, _] => true,
        ["", "api", "v1", "clusterchecks" | "endpointschecks", _, _] => true,
        _ => false,
    };
    if external {
        PathClass::External
    } else {
        PathClass::Internal
    }
}

/// Checks `Authorization: Bearer <token>` against the tokens `accepted`. Go splits the
/// value on single spaces, wants `Bearer` as the first word and exactly two words, and
/// compares the second with the token in constant time (its length aside, as Go's
/// `subtle.ConstantTimeCompare`). Every accepted token is compared, so the time does not
/// tell which one matched.
pub(crate) fn check(headers: &HeaderMap, accepted: &[&[u8]]) -> Result<(), Refusal> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Refusal::NoToken);
    };
    let Ok(value) = value.to_str() else {
        return Err(Refusal::Malformed);
    };
    if value.is_empty() {
        return Err(Refusal::NoToken);
    }
    let mut words = value.split(' ');
    let scheme = words.next().unwrap_or_default();
    if scheme != "Bearer" {
        return Err(Refusal::UnsupportedScheme(scheme.to_owned()));
    }
    match (words.next(), words.next()) {
        (Some(presented), None) => {
            let matched = accepted.iter().fold(subtle::Choice::from(0), |any, token| {
                any | presented.as_bytes().ct_eq(token)
            });
            if bool::from(matched) {
                Ok(())
            } else {
                Err(Refusal::InvalidToken)
            }
        }
        _ => Err(Refusal::InvalidToken),
    }
}

impl Refusal {
    /// A name for logs. The refused value itself is never logged: a client that sends its
    /// token without the `Bearer ` prefix has it read as the scheme.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no token",
            Refusal::UnsupportedScheme(_) => "unsupported scheme",
            Refusal::Malformed => "malformed header",
            Refusal::InvalidToken => "invalid token",
        }
    }

    /// The answer, worded and shaped as Go's `http.Error` writes it.
    pub(crate) fn response(&self, head: bool) -> Response<Body> {
        let (code, message) = match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                "no session token provided".to_owned(),
            ),
            Refusal::UnsupportedScheme(scheme) => (
                StatusCode::UNAUTHORIZED,
                format!("unsupported authorization scheme: {scheme}"),
            ),
            Refusal::Malformed => (
                StatusCode::UNAUTHORIZED,
                "malformed authorization header".to_owned(),
            ),
            Refusal::InvalidToken => (StatusCode::FORBIDDEN, "invalid session token".to_owned()),
        };
        let mut response = go_error(code, &message, head);
        if code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="Datadog Agent""#),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_the_token_go_gives_them() {
        use PathClass::{External, Internal};
        let cases: &[(&str, PathClass)] = &[
            ("/version", External),
            ("/api/v1/cluster/id", External),
            ("/api/v1/tags/pod/node-1", External),
            ("/api/v1/tags/pod/node-1/shop/web-0", External),
            ("/api/v1/tags/node/node-1", External),
            ("/api/v1/tags/namespace/shop", External),
            ("/api/v1/annotations/node/node-1", External),
            ("/api/v1/metadata/namespace/shop", External),
            ("/api/v1/metadata/node-1/shop/web-0", External),
            ("/api/v1/clusterchecks/status/node-1", External),
            ("/api/v1/endpointschecks/configs/node-1", External),
            ("/api/v1/languagedetection", External),
            ("/api/v2/series", External),
            // The CLI's: all pods of all nodes, status, flare, and anything unknown.
            ("/api/v1/tags/pod", Internal),
            ("/api/v1/tags/pod/", External),
            ("/api/v1/tags/pod/node-1/shop", Internal),
            ("/status", Internal),
            ("/flare", Internal),
            ("/api/v1/metadata", Internal),
            ("/", Internal),
            ("/version/extra", Internal),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), *want, "{path}");
        }
    }

    #[test]
    fn either_accepted_token_passes_and_no_other() {
        let local = b"0123456789abcdef0123456789abcdef0123456789abcdef".as_slice();
        let both = [TOKEN, local];
        let bearer = |t: &[u8]| with(&[b"Bearer ".as_slice(), t].concat());
        assert_eq!(check(&bearer(TOKEN), &both), Ok(()));
        assert_eq!(check(&bearer(local), &both), Ok(()));
        assert_eq!(check(&bearer(local), &[TOKEN]), Err(Refusal::InvalidToken));
        assert_eq!(check(&bearer(TOKEN), &[local]), Err(Refusal::InvalidToken));
        assert_eq!(check(&bearer(b"x"), &[]), Err(Refusal::InvalidToken));
    }

    const TOKEN: &[u8] = b"e2eTokenForTheClusterAgent0123456789abcdef";

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[test]
    fn the_go_agent_token_rules() {
        let good = b"Bearer e2eTokenForTheClusterAgent0123456789abcdef".as_slice();
        type Case<'a> = (Option<&'a [u8]>, Result<(), Refusal>);
        let cases: &[Case<'_>] = &[
            (None, Err(Refusal::NoToken)),
            (Some(b""), Err(Refusal::NoToken)),
            (Some(good), Ok(())),
            (
                Some(b"Basic dXNlcjpwYXNz"),
                Err(Refusal::UnsupportedScheme("Basic".into())),
            ),
            // The scheme is case-sensitive in Go.
            (
                Some(b"bearer e2eTokenForTheClusterAgent0123456789abcdef"),
                Err(Refusal::UnsupportedScheme("bearer".into())),
            ),
            (Some(b"Bearer"), Err(Refusal::InvalidToken)),
            (Some(b"Bearer "), Err(Refusal::InvalidToken)),
            // Split on single spaces: two spaces make three words.
            (
                Some(b"Bearer  e2eTokenForTheClusterAgent0123456789abcdef"),
                Err(Refusal::InvalidToken),
            ),
            (
                Some(b"Bearer e2eTokenForTheClusterAgent0123456789abcdef extra"),
                Err(Refusal::InvalidToken),
            ),
            (Some(b"Bearer wrong"), Err(Refusal::InvalidToken)),
            (
                Some(b"Bearer e2eTokenForTheClusterAgent0123456789abcdeF"),
                Err(Refusal::InvalidToken),
            ),
            (
                Some(b"Bearer e2eTokenForTheClusterAgent0123456789abcde"),
                Err(Refusal::InvalidToken),
            ),
            (Some(b"Bearer \xff\xfe"), Err(Refusal::Malformed)),
        ];
        for (value, want) in cases {
            let headers = value.map(with).unwrap_or_default();
            assert_eq!(&check(&headers, &[TOKEN]), want, "{value:?}");
        }
    }

    #[test]
    fn refusals_are_written_as_go_writes_them() {
        let cases = [
            (Refusal::NoToken, 401, "no session token provided\n", true),
            (
                Refusal::UnsupportedScheme("Basic".into()),
                401,
                "unsupported authorization scheme: Basic\n",
                true,
            ),
            (
                Refusal::Malformed,
                401,
                "malformed authorization header\n",
                true,
            ),
            (Refusal::InvalidToken, 403, "invalid session token\n", false),
        ];
        for (refusal, code, body, challenge) in cases {
            let response = refusal.response(false);
            assert_eq!(response.status().as_u16(), code, "{refusal:?}");
            let h = response.headers();
            assert_eq!(h["content-type"], "text/plain; charset=utf-8");
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(
                h.get("www-authenticate").map(|v| v.to_str().unwrap()),
                challenge.then_some(r#"Bearer realm="Datadog Agent""#),
                "{refusal:?}"
            );
            let bytes = http_body_util::BodyExt::collect(response.into_body());
            let bytes = futures::executor::block_on(bytes).unwrap().to_bytes();
            assert_eq!(bytes, body.as_bytes(), "{refusal:?}");
        }
    }
}
