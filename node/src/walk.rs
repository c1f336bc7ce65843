//! Walking the ring from outside: ask one node for its status, then its first reachable
//! successor, and so on until the walk comes back, recording every node that did not answer and
//! every pointer that disagrees with its neighbours. `kvctl ring`, the zero-hop client's view of
//! the ring and the RESP port's ring-wide commands (`DBSIZE`, `FLUSHALL`, `CKV.RING`) all walk
//! with [`walk_ring`], each asking for statuses its own way.

use crate::Result;
use crate::id::Id;
use crate::message::{NodeRef, NodeStatus};
use std::collections::{HashMap, HashSet};
use std::future::Future;

/// At most this many nodes are visited by a ring walk; a longer walk is reported as not
/// closing.
pub const MAX_RING_NODES: usize = 10_000;

/// One stop of a ring walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingMember {
    /// The node answered with its status.
    Up(NodeStatus),
    /// The node, named in its predecessor's successor list, could not be asked.
    Unreachable {
        /// The node as its predecessor named it.
        node: NodeRef,
        /// What went wrong.
        error: String,
    },
}

impl RingMember {
    /// The node this stop is about.
    pub fn node(&self) -> NodeRef {
        match self {
            RingMember::Up(status) => status.node,
            RingMember::Unreachable { node, .. } => *node,
        }
    }

    /// Its status, if it answered.
    pub fn status(&self) -> Option<&NodeStatus> {
        match self {
            RingMember::Up(status) => Some(status),
            RingMember::Unreachable { .. } => None,
        }
    }
}

/// How a ring walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// It came back to the start node: the ring closes.
    Closed,
    /// This node's successor list had no entry left to try: empty, or all unreachable.
    NoSuccessor(NodeRef),
    /// `from` named `to` as its successor, but `to` had been visited already and is not the
    /// start: the walk loops without passing the start.
    Revisited {
        /// The last node visited.
        from: NodeRef,
        /// The node it named, visited before.
        to: NodeRef,
    },
    /// The walk visited [`MAX_RING_NODES`] nodes without coming back.
    TooLong,
}

/// What a ring walk found: the nodes in ring order, starting with the start node, and every
/// inconsistency among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingView {
    /// The nodes in the order visited; each is the first reachable successor of the previous one.
    pub nodes: Vec<RingMember>,
    /// How the walk ended.
    pub end: WalkEnd,
    /// Human-readable inconsistencies, empty for a healthy ring. See [`inconsistencies`].
    pub inconsistencies: Vec<String>,
}

impl RingView {
    /// Whether the ring closed and nothing was found wrong.
    pub fn is_consistent(&self) -> bool {
        self.inconsistencies.is_empty()
    }
}

/// Walks the ring from `start`, asking `status_of` about each successor in turn. This is
/// what `kvctl ring` and the RESP port's ring-wide commands run, with the network taken out, so
/// tests can walk rings they make up.
pub async fn walk_ring<F, Fut>(start: NodeStatus, mut status_of: F) -> RingView
where
    F: FnMut(NodeRef) -> Fut,
    Fut: Future<Output = Result<NodeStatus>>,
{
    let start_id = start.node.id;
    let mut visited: HashSet<Id> = HashSet::from([start_id]);
    let mut nodes = vec![RingMember::Up(start.clone())];
    let mut current = start;
    let end = 'walk: loop {
        if nodes.len() >= MAX_RING_NODES {
            break WalkEnd::TooLong;
        }
        if current.succs.is_empty() && nodes.len() == 1 {
            break WalkEnd::Closed; // a ring of one: a node alone has no successors
        }
        for candidate in current.succs.clone() {
            if candidate.id == start_id {
                break 'walk WalkEnd::Closed;
            }
            if visited.contains(&candidate.id) {
                break 'walk WalkEnd::Revisited {
                    from: current.node,
                    to: candidate,
                };
            }
            visited.insert(candidate.id);
            match status_of(candidate).await {
                Ok(status) => {
                    nodes.push(RingMember::Up(status.clone()));
                    current = status;
                    continue 'walk;
                }
                Err(e) => nodes.push(RingMember::Unreachable {
                    node: candidate,
                    error: e.to_string(),
                }),
            }
        }
        break WalkEnd::NoSuccessor(current.node);
    };
    let inconsistencies = inconsistencies(&nodes, &end);
    RingView {
        nodes,
        end,
        inconsistencies,
    }
}

/// Everything wrong with a walked ring, as one line each:
///
/// - a node that could not be reached;
/// - a node that answered as another node than the one named;
/// - a node that has not finished joining;
/// - node X's successor is Y but Y's predecessor is not X (Chord's `stabilize` would fix it);
/// - ids that do not increase clockwise around the circle: the walk must pass zero exactly
///   once, or the successor pointers skip over nodes;
/// - a walk that did not close.
pub fn inconsistencies(nodes: &[RingMember], end: &WalkEnd) -> Vec<String> {
    let mut found = Vec::new();
    let by_id: HashMap<Id, &NodeStatus> = nodes
        .iter()
        .filter_map(RingMember::status)
        .map(|status| (status.node.id, status))
        .collect();

    for (i, member) in nodes.iter().enumerate() {
        let status = match member {
            RingMember::Unreachable { node, error } => {
                found.push(format!("node {node} is unreachable: {error}"));
                continue;
            }
            RingMember::Up(status) => status,
        };
        // Every node but the start was asked because its predecessor named it: check it
        // answered as that node.
        if i > 0 {
            if let Some(named) = named_as(nodes, i) {
                if named != status.node {
                    found.push(format!(
                        "node {named} answered as {}: two nodes share an address, or it restarted",
                        status.node
                    ));
                }
            }
        }
        if !status.joined {
            found.push(format!("node {} has not finished joining", status.node));
        }
        let Some(succ) = status.succs.first() else {
            continue; // reported below, through WalkEnd::NoSuccessor
        };
        if let Some(succ_status) = by_id.get(&succ.id) {
            if succ_status.pred != Some(status.node) {
                found.push(format!(
                    "node {}'s successor is {} but {}'s predecessor is {}",
                    status.node,
                    succ,
                    succ,
                    succ_status
                        .pred
                        .map_or_else(|| "unknown".to_string(), |p| p.to_string())
                ));
            }
        }
    }

    // Going clockwise from the start and back, the ids rise except for one step that passes
    // zero. More such steps mean the successor pointers skip nodes or the ring is twisted.
    let ring: Vec<NodeRef> = nodes.iter().map(RingMember::node).collect();
    let closing = (*end == WalkEnd::Closed && ring.len() > 1).then(|| ring[0]);
    let steps: Vec<(NodeRef, NodeRef)> = ring
        .windows(2)
        .map(|w| (w[0], w[1]))
        .chain(closing.and_then(|first| ring.last().map(|last| (*last, first))))
        .collect();
    let backwards: Vec<String> = steps
        .iter()
        .filter(|(a, b)| b.id <= a.id)
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    let allowed = usize::from(closing.is_some());
    if backwards.len() > allowed {
        found.push(format!(
            "ring order not increasing by id: the walk passes zero {} times, expected {allowed} ({})",
            backwards.len(),
            backwards.join(", ")
        ));
    }

    match end {
        WalkEnd::Closed => {}
        WalkEnd::NoSuccessor(node) => found.push(format!(
            "walk did not close: node {node} has no reachable successor"
        )),
        WalkEnd::Revisited { from, to } => found.push(format!(
            "walk did not close: node {from}'s successor {to} was already visited, \
             the walk loops without returning to the start"
        )),
        WalkEnd::TooLong => found.push(format!(
            "walk did not close: stopped after {MAX_RING_NODES} nodes"
        )),
    }
    found
}

/// The node that member `i` was asked as: the entry of the previous reachable node's successor
/// list that the walk followed, which is the same node unless it answered under another id.
fn named_as(nodes: &[RingMember], i: usize) -> Option<NodeRef> {
    let prev = nodes[..i].iter().rev().find_map(RingMember::status)?;
    let tried = nodes[..i]
        .iter()
        .rev()
        .take_while(|m| m.status().is_none())
        .count();
    prev.succs.get(tried).copied()
}
