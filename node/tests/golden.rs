//! Golden-script tests of the Chord protocol in the deterministic simulator.
//!
//! Each file in `tests/scripts/` opens with a `#` line stating the property it checks, then lists
//! commands, one a line. Under each command the runner writes what it printed, as `> ` lines. The
//! test re-runs every script and compares; `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the
//! files, to be reviewed as a diff.
//!
//! Commands (nodes are named `n0`, `n1`, … in the order they were added):
//! - `options successors=R seed=S drop=P w=W r=R` — before the first node: simulator settings
//!   and quorums (a script that writes to a node alone sets `w=1 r=1`: the default quorum of two
//!   is a floor, so a lone node refuses writes).
//! - `node` — a node that starts a ring of its own.
//! - `join [via]` — a node joining through `via` (default `n0`), without running time.
//! - `ring N` — N more nodes joining through `n0` one after another, then `settle`.
//! - `run MS` — let MS milliseconds of logical time pass.
//! - `settle` — run until every successor list, predecessor and finger is exact (at most 120 s).
//! - `check` — print `ring ok`, or every pointer that is wrong.
//! - `status` — every running node in ring order: predecessor, successors, fingers and keys.
//! - `lookup KEY [via]`, `put KEY VALUE [via]`, `get KEY [via]`, `delete KEY [via]` — a client
//!   request through `via` (default `n0`); `put` and `delete` first read the key and pass its
//!   context, as `kvctl` does, so they replace what they read.
//! - `putblind KEY VALUE [via]` — a write with an empty context: it replaces nothing, so an
//!   existing value stays beside it as a sibling.
//! - `holders KEY` — which nodes store KEY, and which should.
//! - `crash N`, `restart N [via]`, `leave N`, `partition N,N | N,N`, `heal`.

use chordkv_node::message::{NodeRef, Request, Response};
use chordkv_node::node::Options;
use chordkv_node::ring;
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::VersionVector;
use std::fmt::Write as _;
use std::path::Path;

struct Runner {
    opts: SimOptions,
    sim: Option<Sim>,
}

impl Runner {
    fn sim(&mut self) -> &mut Sim {
        let opts = self.opts.clone();
        self.sim.get_or_insert_with(|| Sim::new(opts))
    }

    fn name(&self, n: Option<NodeRef>) -> String {
        let sim = self.sim.as_ref().expect("sim");
        match n.and_then(|n| sim.index_of(n.addr)) {
            Some(i) => format!("n{i}"),
            None => "-".into(),
        }
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = |w: Option<&&str>, default: usize| -> usize {
            w.map(|w| {
                w.trim_start_matches('n')
                    .parse()
                    .expect("node name like n3")
            })
            .unwrap_or(default)
        };
        let mut out = String::new();
        match words.as_slice() {
            ["options", kvs @ ..] => {
                for kv in kvs {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    match k {
                        "successors" => self.opts.node.ring.successors = v.parse().expect("number"),
                        "seed" => self.opts.seed = v.parse().expect("number"),
                        "drop" => self.opts.drop_rate = v.parse().expect("probability"),
                        "w" => self.opts.node.kv.write_quorum = v.parse().expect("number"),
                        "r" => self.opts.node.kv.read_quorum = v.parse().expect("number"),
                        other => panic!("unknown option {other}"),
                    }
                }
            }
            ["node"] => {
                let i = self.sim().add_node(None);
                writeln!(out, "n{i} starts a ring").ok();
            }
            ["join", via @ ..] => {
                let via = node(via.first(), 0);
                let i = self.sim().add_node(Some(via));
                writeln!(out, "n{i} joins via n{via}").ok();
            }
            ["ring", n] => {
                let n: usize = n.parse().expect("count");
                if self.sim().is_empty() {
                    self.sim().add_node(None);
                }
                for _ in 0..n {
                    self.sim().add_node(Some(0));
                    self.sim().run_for(50);
                }
                out += &self.settle();
            }
            ["run", ms] => self.sim().run_for(ms.parse().expect("ms")),
            ["settle"] => out += &self.settle(),
            ["check"] => {
                let errs = self.sim().ring_errors(true);
                if errs.is_empty() {
                    out += "ring ok\n";
                }
                for e in errs {
                    writeln!(out, "{e}").ok();
                }
            }
            ["status"] => out += &self.status(),
            ["lookup", key, via @ ..] => {
                let via = node(via.first(), 0);
                let key = key.as_bytes().to_vec();
                let want = self.sim().owner_of(&key);
                match self.sim().request(via, Request::Lookup { key }, 30_000) {
                    Ok(Response::Lookup(info)) => {
                        let got = self.sim().index_of(info.owner.addr);
                        let verdict = if got == want { "correct" } else { "WRONG" };
                        writeln!(
                            out,
                            "owner {} ({verdict}), hops {}, timeouts {}",
                            self.name(Some(info.owner)),
                            info.hops,
                            info.timeouts
                        )
                        .ok();
                    }
                    other => writeln!(out, "{other:?}").unwrap_or(()),
                }
            }
            ["put", key, value, via @ ..] => {
                // Like `kvctl put`: read the key's context, then write over what was read.
                let via = node(via.first(), 0);
                let context = self.context(key, via);
                let req = Request::Put {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    context,
                    w: None,
                    session: None,
                    mode: Default::default(),
                };
                out += &answer(self.sim().request(via, req, 30_000));
            }
            ["putblind", key, value, via @ ..] => {
                let via = node(via.first(), 0);
                let req = Request::Put {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    context: VersionVector::new(),
                    w: None,
                    session: None,
                    mode: Default::default(),
                };
                out += &answer(self.sim().request(via, req, 30_000));
            }
            ["get", key, via @ ..] => {
                let via = node(via.first(), 0);
                let req = Request::Get {
                    key: key.as_bytes().to_vec(),
                    r: None,
                    session: None,
                };
                out += &answer(self.sim().request(via, req, 30_000));
            }
            ["delete", key, via @ ..] => {
                let via = node(via.first(), 0);
                let context = self.context(key, via);
                let req = Request::Delete {
                    key: key.as_bytes().to_vec(),
                    context,
                    w: None,
                    session: None,
                    mode: Default::default(),
                };
                out += &answer(self.sim().request(via, req, 30_000));
            }
            ["holders", key] => {
                let sim = self.sim();
                let holders: Vec<String> = sim
                    .holders(key.as_bytes())
                    .iter()
                    .map(|i| format!("n{i}"))
                    .collect();
                let owner = sim.owner_of(key.as_bytes()).map(|i| format!("n{i}"));
                writeln!(
                    out,
                    "stored on [{}], owner {}",
                    holders.join(" "),
                    owner.unwrap_or("-".into())
                )
                .ok();
            }
            ["crash", n] => self.sim().crash(node(Some(n), 0)),
            ["restart", n, via @ ..] => {
                let via = via.first().map(|v| node(Some(v), 0));
                self.sim().restart(node(Some(n), 0), via);
            }
            ["leave", n] => {
                let n = node(Some(n), 0);
                self.sim().leave(n);
                let left = self.sim().run_until(30_000, |s| !s.is_up(n));
                writeln!(out, "{}", if left { "left" } else { "still up after 30 s" }).ok();
            }
            ["partition", rest @ ..] => {
                let text = rest.join(" ");
                let (a, b) = text.split_once('|').expect("A | B");
                let parse = |s: &str| -> Vec<usize> {
                    s.split(',').map(|w| node(Some(&w.trim()), 0)).collect()
                };
                let (a, b) = (parse(a), parse(b));
                self.sim().partition(&a, &b);
            }
            ["heal"] => self.sim().heal(),
            _ => panic!("unknown command: {line}"),
        }
        out
    }

    /// The causal context a read of `key` through `via` returns (empty if the read fails).
    fn context(&mut self, key: &str, via: usize) -> VersionVector {
        let req = Request::Get {
            key: key.as_bytes().to_vec(),
            r: None,
            session: None,
        };
        match self.sim().request(via, req, 30_000) {
            Ok(Response::Read(r)) => r.context,
            _ => VersionVector::new(),
        }
    }

    fn settle(&mut self) -> String {
        let sim = self.sim();
        if sim.run_until(120_000, |s| {
            s.now() % 100 == 0 && s.ring_errors(true).is_empty()
        }) {
            "settled\n".into()
        } else {
            let errs = sim.ring_errors(true);
            format!("NOT settled: {} errors, first: {}\n", errs.len(), errs[0])
        }
    }

    fn status(&mut self) -> String {
        let sim = self.sim.as_ref().expect("sim");
        let mut out = String::new();
        let mut nodes: Vec<usize> = (0..sim.len()).filter(|&i| sim.is_up(i)).collect();
        nodes.sort_by_key(|&i| sim.node_ref(i).id);
        for i in nodes {
            let c = sim.node(i).expect("up");
            let st = c.status();
            let succs: Vec<String> = st.succs.iter().map(|s| self.name(Some(*s))).collect();
            let fingers: Vec<String> = st.fingers.iter().map(|s| self.name(Some(*s))).collect();
            writeln!(
                out,
                "n{i} {} pred {} succs [{}] fingers [{}] keys {}{}",
                st.node.id.short(),
                self.name(st.pred),
                succs.join(" "),
                fingers.join(" "),
                st.keys,
                if st.joined { "" } else { " (joining)" }
            )
            .ok();
        }
        out
    }
}

fn answer(r: chordkv_node::Result<Response>) -> String {
    match r {
        Ok(Response::Written { dot, existed, .. }) => {
            format!(
                "ok, version {}:{}, replaced a value: {existed}\n",
                dot.actor.short(),
                dot.counter
            )
        }
        Ok(Response::Read(r)) if r.values.is_empty() => "not found\n".into(),
        Ok(Response::Read(r)) => {
            let values: Vec<String> = r
                .values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            format!("{}\n", values.join(" | "))
        }
        other => format!("{other:?}\n"),
    }
}

/// Run one script; returns the text it should contain.
fn run_script(text: &str) -> String {
    let mut runner = Runner {
        opts: SimOptions {
            node: Options {
                ring: ring::Options {
                    successors: 3,
                    ..ring::Options::default()
                },
                ..Options::default()
            },
            ..SimOptions::default()
        },
        sim: None,
    };
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("> ") || line == ">" {
            continue;
        }
        out += line;
        out += "\n";
        let command = line.trim();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        for l in runner.run(command).lines() {
            out += "> ";
            out += l;
            out += "\n";
        }
    }
    out
}

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("scripts dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", dir.display());
    let mut failed = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read script");
        assert!(
            text.starts_with('#'),
            "{} must open with a # line stating its property",
            path.display()
        );
        let got = run_script(&text);
        if update {
            std::fs::write(&path, &got).expect("write script");
        } else if got != text {
            eprintln!("--- {} differs; got:\n{got}", path.display());
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "golden scripts differ (rerun with UPDATE_GOLDEN=1 and review the diff): {failed:?}"
    );
}
