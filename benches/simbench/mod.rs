//! What the simulation benchmarks share (hops, failure, churn, balance, maintenance): their
//! knobs, the ring options they run, lookups judged against the true ring, distributions and
//! markdown tables. Every run is seeded; the same seeds print the same tables.

// Each benchmark uses its part of what is here.
#![allow(dead_code)]

#[path = "../common/env.rs"]
pub mod env;
#[path = "../common/plot.rs"]
pub mod plot;

use chordkv_node::id::Id;
use chordkv_node::message::{NodeRef, Request, RequestId, Response};
use chordkv_node::node::Options;
use chordkv_node::ring;
use chordkv_node::rpc::ConnId;
use chordkv_node::testing::sim::{Sim, successor_in};

/// The ring timers a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timers {
    /// The node's defaults: stabilize every 500 ms, a finger every 100 ms, heartbeats every
    /// 500 ms.
    Default,
    /// The Chord paper's simulations: stabilize and fix a finger every 30 s (heartbeats stay
    /// at their default; Chord has none, failures surface through stabilization and lookups).
    Chord,
}

impl Timers {
    /// As a table's words.
    pub fn describe(self) -> &'static str {
        match self {
            Timers::Default => "default timers (stabilize 0.5 s, finger 0.1 s, heartbeat 0.5 s)",
            Timers::Chord => "Chord's timers (stabilize 30 s, finger 30 s; heartbeat 0.5 s)",
        }
    }
}

/// Node options with successor lists of `r` and `timers`.
pub fn options(r: usize, timers: Timers) -> Options {
    let mut ring = ring::Options {
        successors: r,
        ..ring::Options::default()
    };
    if timers == Timers::Chord {
        ring.stabilize_interval = 30_000;
        ring.fix_fingers_interval = 30_000;
    }
    Options {
        ring,
        ..Options::default()
    }
}

/// How one lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It named the key's true owner, after `hops` remote asks and `timeouts` failed ones.
    Correct { hops: u32, timeouts: u32 },
    /// It named another node.
    Wrong { hops: u32, timeouts: u32 },
    /// It gave up (an error, or no answer in time).
    Failed,
}

/// Lookups in flight in a simulation, judged when they are answered.
#[derive(Default)]
pub struct Lookups {
    pending: Vec<((ConnId, RequestId), Id, u64)>,
    /// The outcomes so far, in the order they were answered.
    pub done: Vec<Outcome>,
}

impl Lookups {
    /// Look `key` up from node `from`.
    pub fn submit(&mut self, sim: &mut Sim, from: usize, key: Vec<u8>) {
        let id = Id::hash(&key);
        let token = sim.submit(from, Request::Lookup { key });
        self.pending.push((token, id, sim.now()));
    }

    /// Judge every lookup answered so far against `truth`, the key's owner as the ring truly
    /// is now; a lookup unanswered `give_up_ms` after it began has failed.
    pub fn collect(&mut self, sim: &mut Sim, give_up_ms: u64, truth: impl Fn(Id) -> Vec<NodeRef>) {
        let now = sim.now();
        let done = &mut self.done;
        self.pending.retain(|&(token, id, at)| {
            let outcome = match sim.response(token) {
                Some(Ok(Response::Lookup(info))) => {
                    let (hops, timeouts) = (info.hops, info.timeouts);
                    let want = truth(id);
                    if want.contains(&info.owner) {
                        Outcome::Correct { hops, timeouts }
                    } else {
                        Outcome::Wrong { hops, timeouts }
                    }
                }
                Some(_) => Outcome::Failed,
                None if now >= at + give_up_ms => Outcome::Failed,
                None => return true,
            };
            done.push(outcome);
            false
        });
    }

    /// How many are still unanswered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The owner of `id` in a sorted ring, as the one acceptable answer.
pub fn owner_in(ring: &[NodeRef], id: Id) -> Vec<NodeRef> {
    successor_in(ring, id).into_iter().collect()
}

/// Summary of a batch of outcomes.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Hops of the correct lookups, sorted.
    pub hops: Dist,
    /// Timeouts of the correct and wrong lookups, sorted.
    pub timeouts: Dist,
    /// Lookups that named the true owner.
    pub correct: usize,
    /// Lookups that named another node.
    pub wrong: usize,
    /// Lookups that gave up.
    pub failed: usize,
}

impl Tally {
    /// Count `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Tally {
        let mut t = Tally::default();
        let (mut hops, mut timeouts) = (Vec::new(), Vec::new());
        for o in outcomes {
            match *o {
                Outcome::Correct {
                    hops: h,
                    timeouts: to,
                } => {
                    t.correct += 1;
                    hops.push(f64::from(h));
                    timeouts.push(f64::from(to));
                }
                Outcome::Wrong { timeouts: to, .. } => {
                    t.wrong += 1;
                    timeouts.push(f64::from(to));
                }
                Outcome::Failed => t.failed += 1,
            }
        }
        t.hops = Dist::new(hops);
        t.timeouts = Dist::new(timeouts);
        t
    }

    /// All lookups counted.
    pub fn total(&self) -> usize {
        self.correct + self.wrong + self.failed
    }
}

/// A sorted sample.
#[derive(Clone, Debug, Default)]
pub struct Dist(Vec<f64>);

impl Dist {
    /// The sample `values`, sorted.
    pub fn new(mut values: Vec<f64>) -> Dist {
        values.sort_by(f64::total_cmp);
        Dist(values)
    }

    /// The mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// The `p`-quantile, nearest rank (NaN when empty).
    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = (p * self.0.len() as f64).ceil().max(1.0) as usize;
        self.0[rank.min(self.0.len()) - 1]
    }

    /// The largest value (NaN when empty).
    pub fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The values, sorted.
    pub fn values(&self) -> &[f64] {
        &self.0
    }
}

/// A markdown table, printed as it is built.
pub struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// Print the header row of a table with these columns.
    pub fn new(columns: &[&str]) -> Table {
        let widths: Vec<usize> = columns.iter().map(|c| c.chars().count().max(6)).collect();
        let t = Table { widths };
        t.row(&columns.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        let rule: Vec<String> = t
            .widths
            .iter()
            .map(|&w| format!("{:->w$}:", "", w = w - 1))
            .collect();
        println!("| {} |", rule.join(" | "));
        t
    }

    /// Print one row.
    pub fn row(&self, cells: &[String]) {
        let cells: Vec<String> = cells
            .iter()
            .zip(&self.widths)
            .map(|(c, &w)| format!("{c:>w$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
    }
}

/// `x` with `digits` decimals, or "–" for NaN.
pub fn fmt(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "–".to_string()
    } else {
        format!("{x:.digits$}")
    }
}
