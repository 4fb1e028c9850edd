//! Where a message goes next. Plain data: the cell feeds it connection and route events and asks for next hops.
//!
//! A cell reaches
//! - itself;
//! - its direct peers (its parent, and children that connected to it);
//! - cells its children advertised as reachable through them (leaves behind a relay), learned routes;
//! - descendants of any of these, by name prefix (`site-1.job-7` goes to `site-1`);
//! - everything else through its parent, if it has one.

use std::collections::{BTreeSet, HashMap};

use super::fqcn;

/// The next hop for a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    Local,
    Peer(String),
    Unreachable(String),
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    me: String,
    parent: Option<String>,
    direct: BTreeSet<String>,
    /// cell → the direct peer (a child) that advertised it.
    learned: HashMap<String, String>,
}

impl RoutingTable {
    pub fn new(me: &str) -> Self {
        RoutingTable {
            me: me.to_string(),
            ..Default::default()
        }
    }

    pub fn next_hop(&self, target: &str) -> Hop {
        if target == self.me {
            return Hop::Local;
        }
        for candidate in fqcn::self_and_ancestors(target) {
            if self.direct.contains(candidate) {
                return Hop::Peer(candidate.to_string());
            }
            if let Some(via) = self.learned.get(candidate) {
                return Hop::Peer(via.clone());
            }
            if candidate == self.me {
                return Hop::Unreachable(format!(
                    "{target:?} would be a child of {:?} but is not connected",
                    self.me
                ));
            }
        }
        match &self.parent {
            Some(parent) => Hop::Peer(parent.clone()),
            None => Hop::Unreachable(format!(
                "{:?} has no connection or route to {target:?} and no parent to ask",
                self.me
            )),
        }
    }

    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    pub fn add_peer(&mut self, name: &str, is_parent: bool) {
        self.direct.insert(name.to_string());
        self.learned.remove(name);
        if is_parent {
            self.parent = Some(name.to_string());
        }
    }

    /// Forgets a peer and every route learned through it; returns the names of those routes.
    pub fn remove_peer(&mut self, name: &str) -> Vec<String> {
        self.direct.remove(name);
        if self.parent.as_deref() == Some(name) {
            self.parent = None;
        }
        let lost: Vec<String> = self
            .learned
            .iter()
            .filter(|(_, via)| *via == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &lost {
            self.learned.remove(k);
        }
        lost
    }

    /// Learns that `name` is reachable through child `via`. Returns false when nothing changed.
    pub fn learn(&mut self, name: &str, via: &str) -> bool {
        if name == self.me || self.direct.contains(name) || !self.direct.contains(via) {
            return false;
        }
        self.learned.insert(name.to_string(), via.to_string()) != Some(via.to_string())
    }

    /// Forgets `name` if it was learned through `via`. Returns true when it was.
    pub fn forget(&mut self, name: &str, via: &str) -> bool {
        if self.learned.get(name).map(String::as_str) == Some(via) {
            self.learned.remove(name);
            return true;
        }
        false
    }

    /// Direct children and learned routes: what this cell can reach below itself, to advertise to its parent.
    pub fn reachable_below(&self) -> Vec<String> {
        let parent = self.parent.as_deref();
        self.direct
            .iter()
            .filter(|p| Some(p.as_str()) != parent)
            .chain(self.learned.keys())
            .cloned()
            .collect()
    }

    pub fn direct_peers(&self) -> Vec<String> {
        self.direct.iter().cloned().collect()
    }

    /// Every cell this one has a connection or a learned route to.
    pub fn reachable(&self) -> Vec<String> {
        let mut all: BTreeSet<String> = self.direct.clone();
        all.extend(self.learned.keys().cloned());
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RoutingTable {
        let mut t = RoutingTable::new("relay-1");
        t.add_peer("server", true);
        t.add_peer("site-1", false);
        t.add_peer("relay-1.site-3", false);
        t
    }

    #[test]
    fn routes_down_by_name_and_up_to_parent() {
        let t = relay();
        assert_eq!(t.next_hop("relay-1"), Hop::Local);
        assert_eq!(t.next_hop("site-1"), Hop::Peer("site-1".into()));
        assert_eq!(t.next_hop("site-1.job-7"), Hop::Peer("site-1".into()));
        assert_eq!(t.next_hop("relay-1.site-3.job"), Hop::Peer("relay-1.site-3".into()));
        assert_eq!(t.next_hop("site-2"), Hop::Peer("server".into()));
        assert_eq!(t.next_hop("server.job-1"), Hop::Peer("server".into()));
        assert!(matches!(t.next_hop("relay-1.site-9"), Hop::Unreachable(_)));
    }

    #[test]
    fn learned_routes_follow_their_child() {
        let mut t = RoutingTable::new("server");
        t.add_peer("relay-1", false);
        assert!(t.learn("site-1", "relay-1"));
        assert!(!t.learn("site-1", "relay-1"));
        assert_eq!(t.next_hop("site-1.job-7"), Hop::Peer("relay-1".into()));
        assert!(matches!(t.next_hop("site-2"), Hop::Unreachable(_)));
        assert_eq!(t.reachable(), ["relay-1", "site-1"]);
        assert_eq!(t.remove_peer("relay-1"), ["site-1"]);
        assert!(matches!(t.next_hop("site-1"), Hop::Unreachable(_)));
    }

    #[test]
    fn a_route_is_only_learned_from_a_connected_child_and_forgotten_by_it() {
        let mut t = RoutingTable::new("server");
        assert!(!t.learn("site-1", "relay-1"));
        t.add_peer("relay-1", false);
        t.add_peer("relay-2", false);
        t.learn("site-1", "relay-1");
        assert!(!t.forget("site-1", "relay-2"));
        assert!(t.forget("site-1", "relay-1"));
    }

    #[test]
    fn parent_is_not_advertised_downwards() {
        let t = relay();
        let mut below = t.reachable_below();
        below.sort();
        assert_eq!(below, ["relay-1.site-3", "site-1"]);
    }
}
