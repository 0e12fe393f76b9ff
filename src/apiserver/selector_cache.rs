//! Parsed label selectors by their text. Every HPA sends the same selector on each of its
//! syncs, so the metric route parses the few distinct ones once instead of once per request
//! (parsing was the largest single cost of the route's service).
//!
//! Bounded without eviction: once `capacity` selectors are held, new ones are parsed per
//! request and not kept, so no caller can make it grow, and a full cache stays correct.
//! Invalid selectors are never kept: each gets its parse error again.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::{Arc, PoisonError, RwLock};

use crate::apimachinery::selector::{self, Selector, SelectorError};

/// Distinct selectors kept: far more than the HPAs of a large cluster use.
pub(crate) const DEFAULT_CAPACITY: usize = 1024;

#[derive(Debug)]
pub(crate) struct SelectorCache {
    parsed: RwLock<HashMap<Box<str>, Arc<Selector>, RandomState>>,
    everything: Arc<Selector>,
    capacity: usize,
}

impl Default for SelectorCache {
    fn default() -> Self {
        SelectorCache::new(DEFAULT_CAPACITY)
    }
}

impl SelectorCache {
    pub(crate) fn new(capacity: usize) -> Self {
        SelectorCache {
            parsed: RwLock::new(HashMap::default()),
            everything: Arc::new(Selector::everything()),
            capacity,
        }
    }

    /// The selector of a `labelSelector` parameter; absent or empty matches everything.
    pub(crate) fn get(&self, raw: Option<&str>) -> Result<Arc<Selector>, SelectorError> {
        let raw = match raw {
            None | Some("") => return Ok(Arc::clone(&self.everything)),
            Some(raw) => raw,
        };
        // A poisoned lock only means a writer panicked between two whole inserts.
        if let Some(hit) = self
            .parsed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(raw)
        {
            return Ok(Arc::clone(hit));
        }
        let parsed = Arc::new(selector::parse(raw)?);
        let mut map = self.parsed.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() < self.capacity {
            return Ok(Arc::clone(
                map.entry(raw.into()).or_insert_with(|| Arc::clone(&parsed)),
            ));
        }
        Ok(parsed)
    }

    #[cfg(test)]
    /// Selectors held.
    pub(crate) fn len(&self) -> usize {
        self.parsed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_the_parser_answers() {
        let cache = SelectorCache::new(16);
        for raw in [
            "app=web",
            "app=web,env!=prod",
            "tier in (a,b),!canary",
            "x",
            "a==b",
            "app=web",
            "bad=",
            "=nokey",
            "a in (",
            "k notin (v)",
        ] {
            // Twice: the second answer comes from the cache when the first was valid.
            for _ in 0..2 {
                match (cache.get(Some(raw)), selector::parse(raw)) {
                    (Ok(got), Ok(want)) => assert_eq!(*got, want, "{raw}"),
                    (Err(got), Err(want)) => assert_eq!(got, want, "{raw}"),
                    (got, want) => panic!("{raw}: cache {got:?}, parser {want:?}"),
                }
            }
        }
        // "bad=" is valid in Go's grammar (empty value); the three others are not.
        assert_eq!(cache.len(), 7);
    }

    #[test]
    fn absent_and_empty_select_everything_without_being_stored() {
        let cache = SelectorCache::new(16);
        for raw in [None, Some("")] {
            let s = cache.get(raw).unwrap();
            assert!(s.is_empty());
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn a_hit_shares_the_parsed_selector() {
        let cache = SelectorCache::new(16);
        let first = cache.get(Some("app=web")).unwrap();
        let second = cache.get(Some("app=web")).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&first, &cache.get(Some("app=api")).unwrap()));
    }

    #[test]
    fn a_full_cache_still_parses_but_keeps_nothing_more() {
        let cache = SelectorCache::new(2);
        cache.get(Some("a=1")).unwrap();
        cache.get(Some("a=2")).unwrap();
        let third = cache.get(Some("a=3")).unwrap();
        assert_eq!(*third, selector::parse("a=3").unwrap());
        assert_eq!(cache.len(), 2);
        assert!(!Arc::ptr_eq(&third, &cache.get(Some("a=3")).unwrap()));
        // What it holds is still served from it.
        assert!(Arc::ptr_eq(
            &cache.get(Some("a=1")).unwrap(),
            &cache.get(Some("a=1")).unwrap()
        ));
    }
}
