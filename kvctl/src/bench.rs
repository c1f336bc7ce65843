//! `kvctl bench`: a load generator against a live ring.
//!
//! `clients` concurrent tasks each run their own stream of requests over a key space of
//! `keys` keys (`PREFIX00000000` …), for a duration or a number of requests, after an optional
//! load phase that writes the keys (so that gets find them) and an optional warmup. Latencies
//! go into HDR histograms (microseconds, 3 significant digits), one per operation.
//!
//! OPERATIONS
//!
//! A get is one read ([`Client::read`]: siblings are not an error). A put is one write request
//! of a `value_size`-byte value that replaces the key's current version: each client writes
//! only its own share of the keys (key `i` belongs to client `i mod clients`), so it is the
//! key's only writer and knows its context, the context of the key's last write (from the load
//! phase, or from its own last write: that context plus the new dot). A key whose context it
//! does not know yet (not loaded in this run) is read first, once, and that put counts both
//! round trips. So puts never pile up siblings, however long the run. The load phase writes
//! blind (an empty context): run it on keys the ring does not hold yet (a new `key_prefix`, or
//! `load_from` past what an earlier run loaded), or each reloaded key gains a sibling.
//!
//! With `insert`, a put instead writes a fresh key of its own (blind, one request), as a load
//! of new data would: the key space then grows by every put.
//!
//! ROUTING
//!
//! `direct`: one routed client ([`Client::routed`]) shared by every task, so requests go to
//! their owners over one pooled connection per node, and its [`RouteStats`] give the share that
//! went direct. Otherwise the tasks are spread over the ring's nodes, one plain connection per
//! node, and every request is coordinated by the node it reaches.

use crate::{Client, Error, NodeRef, Result, RouteOptions, VersionVector};
use chordkv_node::wire::Dialer;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which requests a bench sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Only gets.
    Get,
    /// Only puts.
    Put,
    /// Gets with probability `mix_ratio`, else puts.
    Mix,
}

/// How long the measured phase runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// For this long.
    Duration(Duration),
    /// For this many requests in all (spread over the clients).
    Requests(u64),
}

/// A bench run's parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node to start from (HOST:PORT).
    pub node: String,
    /// How to connect to the nodes (credentials, TLS).
    pub dialer: Dialer,
    /// Connection and request timeout.
    pub timeout: Duration,
    /// What to send.
    pub op: Op,
    /// The share of gets in a mix, 0 to 1.
    pub mix_ratio: f64,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys in the key space.
    pub keys: u64,
    /// Bytes per value written.
    pub value_size: usize,
    /// How long to measure.
    pub length: Length,
    /// Write the keys `load_from..keys` before measuring.
    pub load: bool,
    /// The first key the load phase writes.
    pub load_from: u64,
    /// Requests run, unmeasured, before measuring.
    pub warmup: Duration,
    /// Keys are this prefix and an 8-digit number.
    pub key_prefix: String,
    /// Send each request straight to its owner.
    pub direct: bool,
    /// Run each client in a session of its own.
    pub sessions: bool,
    /// Puts insert fresh keys (`PREFIXins-RUN-CLIENT-N`, blind, one request each) instead of
    /// replacing keys of the key space; RUN is unique per run.
    pub insert: bool,
    /// Seeds the clients' key choices.
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// One operation's results.
#[derive(Clone, Debug)]
struct OpStats {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// Gets that found no value.
    missing: u64,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            missing: 0,
        }
    }

    fn add(&mut self, other: &OpStats) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.missing += other.missing;
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
    }

    fn count(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    fn json(&self, secs: f64) -> Value {
        let h = &self.latency;
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "count": self.count(),
            "ok": self.ok,
            "missing": self.missing,
            "errors": self.errors,
            "per_s": self.ok as f64 / secs.max(1e-9),
            "latency_ms": {
                "mean": h.mean() / 1000.0,
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "p99_9": ms(h.value_at_quantile(0.999)),
                "max": ms(h.max()),
            },
        })
    }
}

/// One client's state: its connection, its keys' contexts, its results.
struct Worker {
    index: u64,
    client: Client,
    rng: StdRng,
    contexts: HashMap<u64, VersionVector>,
    /// Keys this client inserted (with [`Config::insert`]).
    inserted: u64,
    /// Tells this run's inserted keys from every other run's.
    run: u128,
    get: OpStats,
    put: OpStats,
}

impl Worker {
    fn key(prefix: &str, i: u64) -> Vec<u8> {
        format!("{prefix}{i:08}").into_bytes()
    }

    /// One request of the mix; `record` false during warmup.
    async fn step(&mut self, cfg: &Config, value: &[u8], record: bool) {
        let get = match cfg.op {
            Op::Get => true,
            Op::Put => false,
            Op::Mix => self.rng.random_bool(cfg.mix_ratio.clamp(0.0, 1.0)),
        };
        let clients = cfg.clients as u64;
        let start = Instant::now();
        let (stats, result) = if get {
            let i = self.rng.random_range(0..cfg.keys);
            let r = self.client.read(&Worker::key(&cfg.key_prefix, i)).await;
            let missing = matches!(&r, Ok(reply) if reply.values.is_empty());
            if record && missing {
                self.get.missing += 1;
            }
            (&mut self.get, r.map(|_| ()))
        } else if cfg.insert {
            let key = format!(
                "{}ins-{:x}-{}-{}",
                cfg.key_prefix, self.run, self.index, self.inserted
            );
            self.inserted += 1;
            let r = self
                .client
                .write(key.as_bytes(), value, &VersionVector::new())
                .await;
            (&mut self.put, r.map(|_| ()))
        } else {
            // One of this client's own keys: i ≡ index (mod clients).
            let share = cfg.keys.saturating_sub(self.index).div_ceil(clients).max(1);
            let i = self.index + clients * self.rng.random_range(0..share);
            let key = Worker::key(&cfg.key_prefix, i);
            let result = async {
                let context = match self.contexts.get(&i) {
                    Some(c) => c.clone(),
                    None => self.client.read(&key).await?.context,
                };
                let written = self.client.write(&key, value, &context).await?;
                let mut next = context;
                next.add(&written.dot);
                self.contexts.insert(i, next);
                Ok::<(), Error>(())
            }
            .await;
            if result.is_err() {
                // Its outcome may be unknown: read the key again before the next put of it.
                self.contexts.remove(&i);
            }
            (&mut self.put, result)
        };
        if record {
            let us = start.elapsed().as_micros().max(1) as u64;
            let _ = stats.latency.record(us.min(120_000_000));
            match result {
                Ok(()) => stats.ok += 1,
                Err(e) => *stats.errors.entry(e.kind().to_string()).or_default() += 1,
            }
        }
    }
}

/// What [`run`] measured, as the JSON object `kvctl bench --json` prints.
pub type Report = Value;

fn progress_bar(cfg: &Config, len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    if !cfg.progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    let style = ProgressStyle::with_template(
        "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// The clients: one routed client shared by all (direct), or plain clients spread over the
/// ring's nodes, one connection per node.
async fn clients(cfg: &Config) -> Result<(Vec<Client>, Option<Client>)> {
    let home = Client::connect_with(&cfg.node, cfg.dialer.clone(), cfg.timeout).await?;
    if cfg.direct {
        let routed = home.routed(RouteOptions::default()).await;
        return Ok((vec![routed.clone()], Some(routed)));
    }
    let view = home.ring_view().await?;
    let nodes: Vec<NodeRef> = view
        .nodes
        .iter()
        .filter_map(|m| m.status())
        .filter(|s| s.joined)
        .map(|s| s.node)
        .collect();
    let mut out = vec![home];
    for node in nodes {
        if node.addr != out[0].addr() {
            if let Ok(c) = out[0].connect_to(&node.addr.to_string()).await {
                out.push(c);
            }
        }
    }
    Ok((out, None))
}

/// Runs a bench and reports it.
///
/// # Errors
/// If the start node cannot be connected to or its ring walked; failed requests are counted,
/// not returned.
pub async fn run(cfg: Config) -> Result<Report> {
    if cfg.keys == 0 || cfg.clients == 0 {
        return Err(Error::InvalidInput(
            "--keys and --clients must be at least 1".into(),
        ));
    }
    let (conns, routed) = clients(&cfg).await?;
    let value: Arc<Vec<u8>> =
        Arc::new((0..cfg.value_size).map(|i| b'a' + (i % 26) as u8).collect());
    let mut workers: Vec<Worker> = (0..cfg.clients)
        .map(|c| {
            let mut client = conns[c % conns.len()].clone();
            if cfg.sessions {
                client = client.with_session(crate::Session::new());
            }
            Worker {
                index: c as u64,
                client,
                rng: StdRng::seed_from_u64(cfg.seed.wrapping_add(c as u64)),
                contexts: HashMap::new(),
                inserted: 0,
                run: 0,
                get: OpStats::new(),
                put: OpStats::new(),
            }
        })
        .collect();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        ^ u128::from(std::process::id()) << 64;
    for w in &mut workers {
        w.run = run;
    }
    let cfg = Arc::new(cfg);

    // Load: each client writes its own share of load_from..keys, blind.
    let mut load = Value::Null;
    if cfg.load && cfg.load_from < cfg.keys {
        let total = cfg.keys - cfg.load_from;
        let bar = progress_bar(&cfg, Some(total), "load");
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for mut w in workers.drain(..) {
            let (cfg, value, done, errors, bar) = (
                Arc::clone(&cfg),
                Arc::clone(&value),
                Arc::clone(&done),
                Arc::clone(&errors),
                bar.clone(),
            );
            tasks.spawn(async move {
                let clients = cfg.clients as u64;
                let first = cfg.load_from + (w.index + clients - cfg.load_from % clients) % clients;
                let mut i = first;
                while i < cfg.keys {
                    let key = Worker::key(&cfg.key_prefix, i);
                    match w.client.write(&key, &value, &VersionVector::new()).await {
                        Ok(written) => {
                            let mut c = VersionVector::new();
                            c.add(&written.dot);
                            w.contexts.insert(i, c);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    bar.inc(1);
                    i += clients;
                }
                w
            });
        }
        while let Some(w) = tasks.join_next().await {
            workers.push(w.map_err(|e| Error::Io(format!("a load task failed: {e}")))?);
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        load = json!({
            "keys": total,
            "secs": secs,
            "per_s": total as f64 / secs.max(1e-9),
            "errors": errors.load(Ordering::Relaxed),
        });
        workers.sort_by_key(|w| w.index);
    }

    // Warmup, unmeasured.
    if !cfg.warmup.is_zero() {
        workers = drive(&cfg, &value, workers, Length::Duration(cfg.warmup), false).await?;
    }
    let before = routed.as_ref().and_then(Client::route_stats);
    let start = Instant::now();
    workers = drive(&cfg, &value, workers, cfg.length, true).await?;
    let secs = start.elapsed().as_secs_f64();
    let route = match (routed.as_ref().and_then(Client::route_stats), before) {
        (Some(after), Some(before)) => Some(after.since(&before)),
        _ => None,
    };

    let mut get = OpStats::new();
    let mut put = OpStats::new();
    for w in &workers {
        get.add(&w.get);
        put.add(&w.put);
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (k, n) in get.errors.iter().chain(&put.errors) {
        *errors.entry(k.clone()).or_default() += n;
    }
    let requests = get.count() + put.count();
    let ok = get.ok + put.ok;
    Ok(json!({
        "op": match cfg.op { Op::Get => "get", Op::Put => "put", Op::Mix => "mix" },
        "mix_ratio": cfg.mix_ratio,
        "clients": cfg.clients,
        "keys": cfg.keys,
        "value_size": cfg.value_size,
        "routing": if cfg.direct { "direct" } else { "via-node" },
        "sessions": cfg.sessions,
        "put_mode": if cfg.insert { "insert" } else { "replace" },
        "secs": secs,
        "requests": requests,
        "ok": ok,
        "errors": errors,
        "throughput": ok as f64 / secs.max(1e-9),
        "get": get.json(secs),
        "put": put.json(secs),
        "direct_share": route.map(|r| r.direct_share()),
        "route": route,
        "load": load,
    }))
}

/// Runs every worker for `length`, as concurrent tasks, and hands them back.
async fn drive(
    cfg: &Arc<Config>,
    value: &Arc<Vec<u8>>,
    workers: Vec<Worker>,
    length: Length,
    record: bool,
) -> Result<Vec<Worker>> {
    let n = workers.len() as u64;
    let (bar_len, deadline, budget) = match length {
        Length::Duration(d) => (Some(d.as_secs().max(1)), Some(Instant::now() + d), None),
        Length::Requests(r) => (Some(r), None, Some(r)),
    };
    let what = if record { "bench" } else { "warmup" };
    let bar = progress_bar(cfg, bar_len, what);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut w in workers {
        let (cfg, value, done, stop) = (
            Arc::clone(cfg),
            Arc::clone(value),
            Arc::clone(&done),
            Arc::clone(&stop),
        );
        // Each client's share of a request budget: the first `r mod n` take one more.
        let mine = budget.map(|r| r / n + u64::from(w.index < r % n));
        tasks.spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && mine.is_none_or(|m| sent < m) {
                w.step(&cfg, &value, record).await;
                sent += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            w
        });
    }
    // The progress bar and the deadline.
    let ticker = {
        let (bar, stop, done) = (bar.clone(), Arc::clone(&stop), Arc::clone(&done));
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = done.load(Ordering::Relaxed);
                match deadline {
                    Some(d) => {
                        bar.set_position(start.elapsed().as_secs());
                        bar.set_message(format!("{n} requests"));
                        if Instant::now() >= d {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                    None => bar.set_position(n),
                }
            }
        })
    };
    let mut out = Vec::with_capacity(n as usize);
    while let Some(w) = tasks.join_next().await {
        out.push(w.map_err(|e| Error::Io(format!("a bench task failed: {e}")))?);
    }
    ticker.abort();
    bar.finish_and_clear();
    out.sort_by_key(|w| w.index);
    Ok(out)
}
