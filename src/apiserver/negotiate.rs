//! `Accept` negotiation. We write JSON only (contract §1.6): the HPA asks for
//! `application/vnd.kubernetes.protobuf, */*` and takes JSON through the `*/*`. On `/apis`
//! a client may also ask for the aggregated discovery document by media-type parameters.

use http::HeaderMap;
use http::header::ACCEPT;

/// A representation a route can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Plain `application/json` of the route's own kind.
    Json,
    /// `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`.
    DiscoveryV2,
    /// The same in `apidiscovery.k8s.io/v2beta1` (Kubernetes 1.26–1.29 aggregators).
    DiscoveryV2Beta1,
}

impl Offer {
    /// The `Content-Type` of a response in this representation.
    pub fn content_type(self) -> &'static str {
        match self {
            Offer::Json => "application/json",
            Offer::DiscoveryV2 => {
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            }
            Offer::DiscoveryV2Beta1 => {
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            }
        }
    }

    fn matches(self, range: &MediaRange<'_>) -> bool {
        let (as_kind, group, version) = (range.param("as"), range.param("g"), range.param("v"));
        match self {
            Offer::Json => {
                // A range naming another kind (`as=Table`, ...) asks for something we do
                // not write, even when its type is JSON.
                let plain = as_kind.is_none() && group.is_none() && version.is_none();
                plain
                    && (range.is("application", "json")
                        || range.is("application", "*")
                        || range.is("*", "*"))
            }
            Offer::DiscoveryV2 | Offer::DiscoveryV2Beta1 => {
                let want = if self == Offer::DiscoveryV2 {
                    "v2"
                } else {
                    "v2beta1"
                };
                range.is("application", "json")
                    && as_kind == Some("APIGroupDiscoveryList")
                    && group == Some("apidiscovery.k8s.io")
                    && version == Some(want)
            }
        }
    }
}

/// One `type/subtype;params` clause of an Accept header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaRange<'a> {
    pub kind: &'a str,
    pub subtype: &'a str,
    /// The raw `;`-separated parameters, `q` included.
    pub params: &'a str,
    /// The quality, 0 to 1; clauses with an unparsable `q` are dropped by the parser.
    pub q: f32,
}

impl<'a> MediaRange<'a> {
    fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// The value of parameter `name` (case-insensitive name, optional quotes removed).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.split(';').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| unquote(v.trim()))
        })
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// The clauses of one Accept header value, in order. Malformed clauses (no `/`, a `q` that
/// is not a number between 0 and 1) are skipped, as Go's parser skips them.
pub fn parse_accept(value: &str) -> impl Iterator<Item = MediaRange<'_>> {
    value.split(',').filter_map(|clause| {
        let clause = clause.trim();
        let (media, params) = clause.split_once(';').unwrap_or((clause, ""));
        let (kind, subtype) = media.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
            return None;
        }
        let mut range = MediaRange {
            kind,
            subtype,
            params,
            q: 1.0,
        };
        if let Some(q) = range.param("q") {
            let q: f32 = q.parse().ok()?;
            if !(0.0..=1.0).contains(&q) {
                return None;
            }
            range.q = q;
        }
        Some(range)
    })
}

/// Picks the representation to answer with: the first of `offers` that the client's most
/// preferred acceptable clause allows. No Accept header (or an empty one) means `offers[0]`.
/// `None` means 406 Not Acceptable.
pub fn negotiate(headers: &HeaderMap, offers: &[Offer]) -> Option<Offer> {
    let mut values = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .peekable();
    let Some(first) = values.next() else {
        // An Accept header that is not visible ASCII is treated as absent rather than
        // refused: a client that sent garbage has no preference we could honour.
        return offers.first().copied();
    };
    if values.peek().is_none() {
        // One header, as every client but the aggregator sends: nothing to collect.
        return negotiate_values(&[first], offers);
    }
    let values: Vec<&str> = std::iter::once(first).chain(values).collect();
    negotiate_values(&values, offers)
}

/// [`negotiate`] over the header values themselves (Kubernetes' aggregator sends one Accept
/// header per alternative).
pub fn negotiate_values(values: &[&str], offers: &[Offer]) -> Option<Offer> {
    let weighted = values.iter().any(|v| v.contains("q="));
    if !weighted {
        // Every clause has q=1, so order decides; no need to collect and sort. This is the
        // path every real client takes.
        return values
            .iter()
            .flat_map(|v| parse_accept(v))
            .find_map(|range| offers.iter().copied().find(|o| o.matches(&range)));
    }
    let mut ranges: Vec<MediaRange<'_>> = values
        .iter()
        .flat_map(|v| parse_accept(v))
        .filter(|r| r.q > 0.0)
        .collect();
    // Stable, so equal weights keep the client's order.
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    ranges
        .iter()
        .find_map(|range| offers.iter().copied().find(|o| o.matches(range)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const JSON: &[Offer] = &[Offer::Json];
    const APIS: &[Offer] = &[Offer::Json, Offer::DiscoveryV2, Offer::DiscoveryV2Beta1];

    fn with(values: &[&str], offers: &[Offer]) -> Option<Offer> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        negotiate(&headers, offers)
    }

    #[test]
    fn json_vectors() {
        let cases: &[(&[&str], Option<Offer>)] = &[
            (&[], Some(Offer::Json)),
            (&[""], Some(Offer::Json)),
            (&["application/json"], Some(Offer::Json)),
            (&["APPLICATION/JSON"], Some(Offer::Json)),
            (&["application/json; charset=utf-8"], Some(Offer::Json)),
            (&["*/*"], Some(Offer::Json)),
            (&["application/*"], Some(Offer::Json)),
            // What the HPA controller sends (kube-controller-manager's protobuf default).
            (
                &["application/vnd.kubernetes.protobuf, */*"],
                Some(Offer::Json),
            ),
            (&["application/vnd.kubernetes.protobuf"], None),
            (&["application/yaml"], None),
            (
                &["application/vnd.kubernetes.protobuf,application/yaml"],
                None,
            ),
            (&["text/html"], None),
            (&["application/json;q=0"], None),
            (&["application/json;q=0.1, text/html"], Some(Offer::Json)),
            (&["application/json;as=Table;v=v1;g=meta.k8s.io"], None),
            // kubectl get: a Table first, then plain JSON.
            (
                &["application/json;as=Table;v=v1;g=meta.k8s.io,application/json"],
                Some(Offer::Json),
            ),
            (&["garbage"], None),
            (&["application/json;q=abc"], None),
            (&["application/json;q=2"], None),
        ];
        for (values, want) in cases {
            assert_eq!(with(values, JSON), *want, "Accept {values:?}");
        }
    }

    #[test]
    fn discovery_vectors() {
        let v2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        let v2b1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";
        let cases: &[(&[&str], Option<Offer>)] = &[
            (&[], Some(Offer::Json)),
            (&["application/json"], Some(Offer::Json)),
            (&[v2], Some(Offer::DiscoveryV2)),
            (&[v2b1], Some(Offer::DiscoveryV2Beta1)),
            // The aggregator sends one header per alternative, v2 first.
            (&[v2, v2b1], Some(Offer::DiscoveryV2)),
            (
                &[&format!("{v2},{v2b1},application/json")],
                Some(Offer::DiscoveryV2),
            ),
            (&[&format!("{v2b1},{v2}")], Some(Offer::DiscoveryV2Beta1)),
            // Parameter order is free.
            (
                &["application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io"],
                Some(Offer::DiscoveryV2),
            ),
            (
                &["application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList"],
                None,
            ),
            (
                &[
                    "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json",
                ],
                Some(Offer::Json),
            ),
            (
                &[&format!("application/json;q=0.5,{v2};q=0.9")],
                Some(Offer::DiscoveryV2),
            ),
            (
                &[
                    "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                ],
                None,
            ),
        ];
        for (values, want) in cases {
            assert_eq!(with(values, APIS), *want, "Accept {values:?}");
        }
    }

    #[test]
    fn non_ascii_accept_is_treated_as_absent() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(negotiate(&headers, JSON), Some(Offer::Json));
    }

    #[test]
    fn params_are_read_case_insensitively_and_unquoted() {
        let range = parse_accept("application/json; AS=\"Table\" ; v=v1")
            .next()
            .unwrap();
        assert_eq!(range.param("as"), Some("Table"));
        assert_eq!(range.param("v"), Some("v1"));
        assert_eq!(range.param("g"), None);
    }

    proptest! {
        #[test]
        fn negotiation_never_panics(values in proptest::collection::vec(".{0,80}", 0..4)) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = negotiate_values(&refs, APIS);
            let _ = negotiate_values(&refs, JSON);
        }

        #[test]
        fn negotiation_never_panics_on_accept_like_input(
            values in proptest::collection::vec("[a-z*/;=,. q0-9\"-]{0,60}", 0..4)
        ) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = negotiate_values(&refs, APIS);
        }
    }
}
