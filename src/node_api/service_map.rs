//! The pod → services map the bulk and per-pod routes answer from, laid out for a cluster
//! of 150,000 pods: each namespace and service name is stored once for the whole map
//! (pods share it), pods that back the same services share one service list, a pod's name
//! is the watch store's own copy (shared, not duplicated), and each
//! node's pods sit in one sorted slice, so a node's answer is a walk over it and a pod's a
//! binary search, with nothing copied per request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A pod's services, sorted and without repeats; shared by every pod with the same ones.
pub(crate) type Services = Arc<[Arc<str>]>;

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pod {
    name: Arc<str>,
    services: Services,
}

impl Pod {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn services(&self) -> &[Arc<str>] {
        &self.services
    }
}

/// The pods of one namespace on one node, sorted by name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NamespacePods {
    name: Arc<str>,
    pods: Box<[Pod]>,
}

impl NamespacePods {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn pods(&self) -> &[Pod] {
        &self.pods
    }
}

/// The services of each pod of one node, by namespace (sorted) then pod.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct NodePods {
    namespaces: Box<[NamespacePods]>,
}

impl NodePods {
    pub(crate) fn namespaces(&self) -> &[NamespacePods] {
        &self.namespaces
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// The services of `pod` in `namespace`, if it backs any.
    pub(crate) fn services(&self, namespace: &str, pod: &str) -> Option<&[Arc<str>]> {
        let ns = self
            .namespaces
            .binary_search_by(|n| (*n.name).cmp(namespace))
            .ok()?;
        let pods = &self.namespaces[ns].pods;
        let i = pods.binary_search_by(|p| (*p.name).cmp(pod)).ok()?;
        Some(&pods[i].services)
    }
}

/// Every node's [`NodePods`], built from the ready endpoints of each Service.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceMap {
    nodes: HashMap<Box<str>, NodePods>,
}

impl ServiceMap {
    pub(crate) fn node(&self, name: &str) -> Option<&NodePods> {
        self.nodes.get(name)
    }

    /// Nodes with at least one mapped pod.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn pod_count(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|node| node.namespaces.iter())
            .map(|ns| ns.pods.len())
            .sum()
    }
}

/// Collects (node, namespace, pod, service) facts borrowed from the objects they come
/// from, and lays them out once at the end; repeats are harmless.
#[derive(Debug, Default)]
pub(crate) struct ServiceMapBuilder<'a> {
    facts: Vec<Fact<'a>>,
}

/// Node, namespace, pod, service.
type Fact<'a> = (&'a str, &'a str, &'a Arc<str>, &'a str);

impl<'a> ServiceMapBuilder<'a> {
    pub(crate) fn add(
        &mut self,
        node: &'a str,
        namespace: &'a str,
        pod: &'a Arc<str>,
        service: &'a str,
    ) {
        self.facts.push((node, namespace, pod, service));
    }

    /// One sort puts every node's pods, every pod's services, in the order they are
    /// served; a single pass then groups them.
    pub(crate) fn build(mut self) -> ServiceMap {
        self.facts.sort_unstable();
        self.facts.dedup();
        let mut names = Interner::default();
        let mut nodes = HashMap::new();
        for node in self.facts.chunk_by(|a, b| a.0 == b.0) {
            nodes.insert(Box::from(node[0].0), node_pods(node, &mut names));
        }
        ServiceMap { nodes }
    }
}

/// `facts`: one node's, sorted.
fn node_pods(facts: &[Fact<'_>], names: &mut Interner) -> NodePods {
    let namespaces = facts
        .chunk_by(|a, b| a.1 == b.1)
        .map(|namespace| NamespacePods {
            name: names.name(namespace[0].1),
            pods: namespace
                .chunk_by(|a, b| a.2 == b.2)
                .map(|pod| Pod {
                    name: Arc::clone(pod[0].2),
                    services: names.services(pod.iter().map(|fact| fact.3)),
                })
                .collect(),
        })
        .collect();
    NodePods { namespaces }
}

/// One copy of each name and of each service list for the whole map.
#[derive(Default)]
struct Interner {
    names: HashSet<Arc<str>>,
    lists: HashMap<Box<[Arc<str>]>, Services>,
}

impl Interner {
    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&shared));
        shared
    }

    fn services<'a>(&mut self, services: impl Iterator<Item = &'a str>) -> Services {
        let list: Box<[Arc<str>]> = services.map(|s| self.name(s)).collect();
        if let Some(shared) = self.lists.get(&list) {
            return Arc::clone(shared);
        }
        let shared: Services = Arc::from(&*list);
        self.lists.insert(list, Arc::clone(&shared));
        shared
    }
}

#[cfg(test)]
pub(crate) fn map_of(facts: &[(&str, &str, &str, &str)]) -> ServiceMap {
    let pods: Vec<Arc<str>> = facts.iter().map(|fact| Arc::from(fact.2)).collect();
    let mut builder = ServiceMapBuilder::default();
    for ((node, namespace, _, service), pod) in facts.iter().zip(&pods) {
        builder.add(node, namespace, pod, service);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(services: &[Arc<str>]) -> Vec<&str> {
        services.iter().map(|s| &**s).collect()
    }

    #[test]
    fn lookups_answer_sorted_unique_services() {
        let map = map_of(&[
            ("n1", "shop", "web-1", "web-internal"),
            ("n1", "shop", "web-1", "web"),
            ("n1", "shop", "web-1", "web"),
            ("n1", "shop", "db-0", "db"),
            ("n1", "auth", "login-0", "login"),
            ("n2", "shop", "web-2", "web"),
        ]);
        // (node, namespace, pod) → services
        let cases: &[(&str, &str, &str, Option<&[&str]>)] = &[
            ("n1", "shop", "web-1", Some(&["web", "web-internal"])),
            ("n1", "shop", "db-0", Some(&["db"])),
            ("n1", "auth", "login-0", Some(&["login"])),
            ("n2", "shop", "web-2", Some(&["web"])),
            ("n2", "shop", "web-1", None),
            ("n1", "other", "web-1", None),
            ("n1", "shop", "web-9", None),
        ];
        for (node, namespace, pod, want) in cases {
            let got = map.node(node).and_then(|n| n.services(namespace, pod));
            assert_eq!(got.map(names).as_deref(), *want, "{node}/{namespace}/{pod}");
        }
        assert!(map.node("n3").is_none());
        assert_eq!((map.node_count(), map.pod_count()), (2, 4));
        // Namespaces, then pods, in order: the answers' JSON keys come out sorted.
        let n1 = map.node("n1").expect("n1");
        let layout: Vec<(&str, Vec<&str>)> = n1
            .namespaces()
            .iter()
            .map(|ns| (ns.name(), ns.pods().iter().map(Pod::name).collect()))
            .collect();
        assert_eq!(
            layout,
            [("auth", vec!["login-0"]), ("shop", vec!["db-0", "web-1"])]
        );
    }

    #[test]
    fn names_and_service_lists_are_stored_once() {
        let map = map_of(&[
            ("n1", "shop", "web-1", "web"),
            ("n2", "shop", "web-2", "web"),
            ("n3", "shop", "web-3", "web"),
        ]);
        let lists: Vec<&Services> = ["n1", "n2", "n3"]
            .iter()
            .zip(["web-1", "web-2", "web-3"])
            .map(|(node, pod)| {
                let ns = &map.node(node).expect("node").namespaces()[0];
                assert_eq!(ns.pods()[0].name(), pod);
                &ns.pods()[0].services
            })
            .collect();
        assert!(lists.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])));
        let namespaces: Vec<&Arc<str>> = ["n1", "n2"]
            .iter()
            .map(|n| &map.node(n).expect("node").namespaces()[0].name)
            .collect();
        assert!(Arc::ptr_eq(namespaces[0], namespaces[1]));
    }

    #[test]
    fn the_same_facts_in_any_order_build_the_same_map() {
        let facts = [
            ("n1", "b", "p2", "s2"),
            ("n1", "a", "p1", "s1"),
            ("n1", "b", "p1", "s3"),
            ("n1", "b", "p2", "s1"),
        ];
        let mut reversed = facts;
        reversed.reverse();
        assert_eq!(map_of(&facts), map_of(&reversed));
    }
}
