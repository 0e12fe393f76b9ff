//! Chunking of Datadog queries into `/api/v1/query` calls (dca-contract §3.4, Go
//! `makeChunks` / `isURLBeyondLimits` in `pkg/util/kubernetes/autoscalers/processor.go`).
//!
//! Each query costs `len(url.QueryEscape(query)) + 16` characters (the 16 stand for the
//! comma and the `from=`/`to=` overhead). Queries are taken in order; a new chunk starts
//! when adding the next query would bring the running cost of the current chunk to
//! **7000 or more** (`>=`, so a chunk of several queries costs at most 6999), or when the
//! current chunk already holds `chunk_size` queries (`external_metrics_provider.chunk_size`,
//! clamped to 1..=35).
//!
//! Deliberate difference from Go: a query whose own cost is 7000 or more is not dropped;
//! it goes alone in its own chunk ([`Chunk::is_oversize`]). (Go drops it only when it is
//! the first query of the batch, and then also drops every later query because its
//! running length is never reset.) An empty input gives no chunk (Go gives one empty one).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Upper bound of `external_metrics_provider.chunk_size` (and its default).
pub(crate) const MAX_CHUNK_SIZE: usize = 35;
/// A chunk of several queries must cost strictly less than this.
pub(crate) const MAX_CHARACTERS_PER_CHUNK: usize = 7000;
/// Characters added to each query's escaped length (comma, time and space aggregators).
pub(crate) const EXTRA_QUERY_CHARACTERS: usize = 16;

/// Bytes that Go's `url.QueryEscape` leaves as they are: ASCII letters, digits, `-_.~`.
/// (The space becomes `+`, handled separately.)
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Go `url.QueryEscape`: space → `+`; ASCII letters, digits and `-_.~` unchanged;
/// every other byte → `%XX` (upper-case hex).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split(' ').enumerate() {
        if i > 0 {
            out.push('+');
        }
        out.extend(utf8_percent_encode(part, QUERY_COMPONENT));
    }
    out
}

/// Length of [`query_escape`]`(s)` without building it.
pub(crate) fn query_escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if b == b' ' || b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                1
            } else {
                3
            }
        })
        .sum()
}

/// What one query counts against [`MAX_CHARACTERS_PER_CHUNK`]:
/// `len(url.QueryEscape(q)) + 16`.
pub(crate) fn query_cost(query: &str) -> usize {
    query_escaped_len(query) + EXTRA_QUERY_CHARACTERS
}

/// One `/api/v1/query` call's worth of queries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Chunk {
    /// The queries, in input order. Never empty in chunks returned by [`make_chunks`].
    pub queries: Vec<String>,
    /// Sum of [`query_cost`] over `queries`.
    pub cost: usize,
}

impl Chunk {
    /// Number of queries.
    pub(crate) fn len(&self) -> usize {
        self.queries.len()
    }

    /// `true` if the chunk holds no query.
    pub(crate) fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    #[cfg(test)]
    /// `true` for a single query that alone reaches [`MAX_CHARACTERS_PER_CHUNK`]
    /// (the Go DCA would drop it with "Query is too long, could yield a server side
    /// error. Dropping"; here it is sent alone, and may fail server-side with a 414).
    pub(crate) fn is_oversize(&self) -> bool {
        self.queries.len() == 1 && self.cost >= MAX_CHARACTERS_PER_CHUNK
    }

    #[cfg(test)]
    /// The `query` parameter value: the queries joined with `,` (not yet URL-escaped).
    pub(crate) fn joined(&self) -> String {
        self.queries.join(",")
    }

    fn push(&mut self, query: String, cost: usize) {
        self.queries.push(query);
        self.cost += cost;
    }
}

/// Splits `queries` into chunks (see the module docs for the exact rule). Order is kept:
/// concatenating the chunks gives back `queries`. `chunk_size` is clamped to 1..=35.
pub(crate) fn make_chunks<S: AsRef<str>>(queries: &[S], chunk_size: usize) -> Vec<Chunk> {
    let limit = chunk_size.clamp(1, MAX_CHUNK_SIZE);
    let mut chunks = Vec::new();
    let mut current = Chunk::default();
    for q in queries {
        let q = q.as_ref();
        let cost = query_cost(q);
        let full = current.len() >= limit;
        let too_long = current.cost.saturating_add(cost) >= MAX_CHARACTERS_PER_CHUNK;
        if !current.is_empty() && (full || too_long) {
            chunks.push(std::mem::take(&mut current));
        }
        current.push(q.to_owned(), cost);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query made of `cost - 16` unreserved characters, so its cost is exactly `cost`.
    fn q_of_cost(tag: char, cost: usize) -> String {
        assert!(tag.is_ascii_alphabetic());
        let mut s = String::new();
        s.push(tag);
        s.push_str(&"x".repeat(cost - EXTRA_QUERY_CHARACTERS - 1));
        assert_eq!(query_cost(&s), cost);
        s
    }

    fn sizes(chunks: &[Chunk]) -> Vec<usize> {
        chunks.iter().map(Chunk::len).collect()
    }

    /// Go test helper `lambdaMakeChunks(n, {foo, {foo:bar}})`: n+1 queries.
    fn go_lambda_queries(n: usize, metric: &str) -> Vec<String> {
        (0..=n)
            .map(|i| format!("avg:{metric}-{i}{{foo:bar}}.rollup(30)"))
            .collect()
    }

    #[test]
    fn query_escape_matches_go() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("abcXYZ019", "abcXYZ019"),
            ("-_.~", "-_.~"),
            ("a b", "a+b"),
            ("a+b", "a%2Bb"),
            (
                "avg:foo{a:b}.rollup(30)",
                "avg%3Afoo%7Ba%3Ab%7D.rollup%2830%29",
            ),
            ("a,b/c?d=e&f", "a%2Cb%2Fc%3Fd%3De%26f"),
            ("*", "%2A"),
            ("é", "%C3%A9"),
            ("%20", "%2520"),
            ("  ", "++"),
        ];
        for (input, want) in cases {
            assert_eq!(query_escape(input), *want, "{input:?}");
            assert_eq!(query_escaped_len(input), want.len(), "{input:?}");
        }
    }

    #[test]
    fn query_cost_vectors() {
        assert_eq!(query_cost(""), 16);
        assert_eq!(query_cost("abc"), 19);
        // avg%3Afoo-1%7Bfoo%3Abar%7D.rollup%2830%29 = 41 chars
        assert_eq!(query_cost("avg:foo-1{foo:bar}.rollup(30)"), 41 + 16);
    }

    #[test]
    fn count_limit_vectors() {
        let cases: &[(usize, usize, &[usize])] = &[
            (0, 35, &[]),
            (1, 35, &[1]),
            (34, 35, &[34]),
            (35, 35, &[35]),
            (36, 35, &[35, 1]),
            (70, 35, &[35, 35]),
            (71, 35, &[35, 35, 1]),
            (5, 2, &[2, 2, 1]),
            (3, 1, &[1, 1, 1]),
            (3, 0, &[1, 1, 1]),  // clamped to 1
            (40, 100, &[35, 5]), // clamped to 35
        ];
        for (n, chunk_size, want) in cases {
            let qs: Vec<String> = (0..*n)
                .map(|i| format!("avg:m{i}{{*}}.rollup(30)"))
                .collect();
            let chunks = make_chunks(&qs, *chunk_size);
            assert_eq!(sizes(&chunks), *want, "n={n} chunk_size={chunk_size}");
            let flat: Vec<String> = chunks.into_iter().flat_map(|c| c.queries).collect();
            assert_eq!(flat, qs);
        }
    }

    /// Go `TestValidateExternalMetricsBatching` "one batch" / "several batches".
    #[test]
    fn go_batching_vectors() {
        assert_eq!(sizes(&make_chunks(&go_lambda_queries(14, "foo"), 35)), [15]);
        assert_eq!(
            sizes(&make_chunks(&go_lambda_queries(158, "foo"), 35)),
            [35, 35, 35, 35, 19]
        );
        // "Overspilling queries": 21 queries of ~4000 chars each go one per call.
        let long = "q".repeat(4000);
        let chunks = make_chunks(&go_lambda_queries(20, &long), 35);
        assert_eq!(chunks.len(), 21);
        assert!(chunks.iter().all(|c| c.len() == 1 && !c.is_oversize()));
    }

    #[test]
    fn length_boundary_vectors() {
        // (costs of the queries, expected chunk sizes)
        let cases: &[(&[usize], &[usize])] = &[
            (&[3000, 3999], &[2]),                                  // 6999: just under
            (&[3000, 4000], &[1, 1]),                               // 7000: exactly at → split
            (&[3000, 4001], &[1, 1]),                               // 7001: just over → split
            (&[6999], &[1]),                                        // alone, under
            (&[1000, 1000, 1000, 1000, 1000, 1000, 999], &[7]),     // 6999
            (&[1000, 1000, 1000, 1000, 1000, 1000, 1000], &[6, 1]), // 7000
            (&[3500, 3499, 3500, 3499], &[2, 2]),
            (&[3500, 3500, 3500], &[1, 1, 1]),
        ];
        for (costs, want) in cases {
            let qs: Vec<String> = costs
                .iter()
                .enumerate()
                .map(|(i, c)| q_of_cost(char::from(b'a' + i as u8), *c))
                .collect();
            let chunks = make_chunks(&qs, 35);
            assert_eq!(sizes(&chunks), *want, "costs {costs:?}");
            for c in &chunks {
                assert_eq!(
                    c.cost,
                    c.queries.iter().map(|q| query_cost(q)).sum::<usize>()
                );
                if c.len() > 1 {
                    assert!(c.cost < MAX_CHARACTERS_PER_CHUNK);
                }
            }
        }
    }

    #[test]
    fn escaping_counts_towards_the_limit() {
        // 2 queries of 2000 ':' (escaped to 6000 chars each) can't share a chunk,
        // even though their raw length is small.
        let q = ":".repeat(2000);
        assert_eq!(query_cost(&q), 6016);
        let chunks = make_chunks(&[q.clone(), q], 35);
        assert_eq!(sizes(&chunks), [1, 1]);
    }

    #[test]
    fn oversize_query_goes_alone() {
        let at = q_of_cost('a', 7000);
        let over = q_of_cost('b', 7001);
        let huge = q_of_cost('c', 50_000);
        let small = |i: u8| format!("avg:s{i}{{*}}.rollup(30)");

        // Alone.
        for q in [&at, &over, &huge] {
            let chunks = make_chunks(std::slice::from_ref(q), 35);
            assert_eq!(sizes(&chunks), [1]);
            assert!(chunks[0].is_oversize());
        }
        // First (Go drops it and every later query).
        let chunks = make_chunks(&[over.clone(), small(1), small(2)], 35);
        assert_eq!(sizes(&chunks), [1, 2]);
        assert!(chunks[0].is_oversize());
        assert!(!chunks[1].is_oversize());
        // Middle and last.
        let chunks = make_chunks(&[small(1), huge.clone(), small(2), at.clone()], 35);
        assert_eq!(sizes(&chunks), [1, 1, 1, 1]);
        assert_eq!(chunks[1].queries, [huge]);
        assert_eq!(chunks[3].queries, [at]);
        // Several in a row.
        assert_eq!(sizes(&make_chunks(&[over.clone(), over], 35)), [1, 1]);
        // A small chunk is never oversize.
        assert!(!make_chunks(&[small(1)], 35)[0].is_oversize());
    }

    #[test]
    fn joined_is_comma_separated() {
        let chunks = make_chunks(&["a", "b", "c"], 35);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].joined(), "a,b,c");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn query() -> impl Strategy<Value = String> {
            // Long queries are built by repetition: per-character generation is slow.
            let repeated = |p: String, c: char, n: usize| p + &c.to_string().repeat(n);
            prop_oneof![
                8 => "[ -~]{0,60}".boxed(),
                2 => ("[a-z:{}]{0,8}", proptest::sample::select(vec!['a', ':', '{', ' ', 'é']), 100usize..3000)
                    .prop_map(move |(p, c, n)| repeated(p, c, n))
                    .boxed(),
                1 => ("[a-z]{0,8}", 6900usize..7100)
                    .prop_map(move |(p, n)| repeated(p, 'x', n))
                    .boxed(),
                1 => any::<String>().boxed(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn chunking_invariants(
                queries in proptest::collection::vec(query(), 0..120),
                chunk_size in 0usize..60,
            ) {
                let limit = chunk_size.clamp(1, MAX_CHUNK_SIZE);
                let chunks = make_chunks(&queries, chunk_size);
                // Every query exactly once, in order.
                let flat: Vec<&String> = chunks.iter().flat_map(|c| c.queries.iter()).collect();
                prop_assert_eq!(flat.len(), queries.len());
                for (a, b) in flat.iter().zip(queries.iter()) {
                    prop_assert_eq!(*a, b);
                }
                for c in &chunks {
                    prop_assert!(!c.is_empty());
                    prop_assert!(c.len() <= limit);
                    prop_assert_eq!(c.cost, c.queries.iter().map(|q| query_cost(q)).sum::<usize>());
                    if c.len() > 1 {
                        prop_assert!(c.cost < MAX_CHARACTERS_PER_CHUNK);
                    } else {
                        prop_assert_eq!(c.is_oversize(), c.cost >= MAX_CHARACTERS_PER_CHUNK);
                    }
                }
                // Greedy: a chunk was closed only because the next query didn't fit.
                for w in chunks.windows(2) {
                    let next = query_cost(&w[1].queries[0]);
                    prop_assert!(w[0].len() >= limit || w[0].cost + next >= MAX_CHARACTERS_PER_CHUNK);
                }
            }

            #[test]
            fn escaped_len_matches_escape(s in any::<String>()) {
                prop_assert_eq!(query_escaped_len(&s), query_escape(&s).len());
            }
        }
    }
}
