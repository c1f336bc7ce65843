//! Keys per node, against the Chord paper (SIGCOMM 2001 §6.2, Figs. 8 and 9): how evenly
//! consistent hashing spreads keys over 10^4 hosts, with one id per host (what chordkv runs:
//! a node's id is the SHA-1 of its address) and with v = 2 … 20 ids per host ("virtual nodes",
//! which chordkv does not run), to show what virtual ids would buy.
//!
//! Hosts get the addresses the simulator gives (127.x.y.z:7000); a host's ids are the SHA-1
//! of its address (id 0) and of `ADDRESS#j` (ids 1 … v−1). Keys are `balance-K`, hashed with
//! SHA-1 as every key is; each key belongs to the successor of its id, and a host holds the
//! keys of all its ids. Replication is left out: a key's r copies go to the next r hosts, so
//! every copy count scales the same way.
//!
//! `cargo bench --bench balance` (~30 s); `BALANCE_HOSTS`, `BALANCE_KEYS=100000,1000000`,
//! `BALANCE_IDS=1,2,5,10,20`. Writes `balance.svg`.

mod simbench;

use chordkv_node::id::Id;
use chordkv_node::testing::sim::Sim;
use simbench::env;
use simbench::plot::{self, Point, Series, XAxis};
use simbench::{Dist, Table, fmt};

fn main() {
    let hosts = env::env_or("BALANCE_HOSTS", 10_000) as usize;
    let key_counts = env::env_list("BALANCE_KEYS", &[100_000, 1_000_000]);
    let ids_per_host = env::env_list("BALANCE_IDS", &[1, 2, 5, 10, 20]);
    let most = key_counts.iter().copied().max().unwrap_or(0) as usize;
    let keys: Vec<Id> = (0..most)
        .map(|k| Id::hash(format!("balance-{k}").as_bytes()))
        .collect();
    let addrs: Vec<String> = (0..hosts)
        .map(|i| Sim::addr_on(i, 7000).to_string())
        .collect();
    println!("# Keys per host");
    println!();
    println!(
        "{hosts} hosts; keys per host as a multiple of the mean in the last two columns; \
         \"empty\" counts hosts with no key. No randomness: the hosts' addresses and the keys' \
         names are fixed, so every run prints this table."
    );
    println!();
    let table = Table::new(&[
        "keys", "ids/host", "mean", "p1", "median", "p99", "max", "empty", "p99/mean", "max/mean",
    ]);
    let mut plotted: Vec<(u64, Vec<[Point; 3]>)> = Vec::new();
    for &count in &key_counts {
        let mut rows = Vec::new();
        for &v in &ids_per_host {
            let load = Dist::new(
                keys_per_host(&addrs, v as usize, &keys[..count as usize])
                    .into_iter()
                    .map(|k| k as f64)
                    .collect(),
            );
            let mean = load.mean();
            let empty = load.values().iter().filter(|&&k| k == 0.0).count();
            table.row(&[
                count.to_string(),
                v.to_string(),
                fmt(mean, 1),
                fmt(load.pct(0.01), 0),
                fmt(load.pct(0.5), 0),
                fmt(load.pct(0.99), 0),
                fmt(load.max(), 0),
                empty.to_string(),
                fmt(load.pct(0.99) / mean, 2),
                fmt(load.max() / mean, 2),
            ]);
            let x = v as f64;
            rows.push([
                Point::at(x, load.pct(0.01) / mean),
                Point::at(x, load.pct(0.99) / mean),
                Point::at(x, load.max() / mean),
            ]);
        }
        plotted.push((count, rows));
    }
    let mut series = Vec::new();
    for (count, rows) in &plotted {
        for (k, name) in ["p1", "p99", "max"].iter().enumerate() {
            let points = rows.iter().map(|r| r[k]).collect();
            series.push(Series::new(format!("{name}, {count} keys"), points));
        }
    }
    let path = plot::plots_dir().join("balance.svg");
    plot::lines(
        &path,
        &format!("Keys per host against ids per host ({hosts} hosts)"),
        ("ids per host (v)", XAxis::Linear),
        "keys per host ÷ mean",
        &series,
    )
    .expect("write the plot");
    println!();
    println!("plot: {}", path.display());
}

/// How many of `keys` each host holds when each has `v` ids.
fn keys_per_host(addrs: &[String], v: usize, keys: &[Id]) -> Vec<u64> {
    let mut ring: Vec<(Id, usize)> = addrs
        .iter()
        .enumerate()
        .flat_map(|(host, addr)| {
            (0..v).map(move |j| {
                let name = if j == 0 {
                    addr.clone()
                } else {
                    format!("{addr}#{j}")
                };
                (Id::hash(name.as_bytes()), host)
            })
        })
        .collect();
    ring.sort_unstable();
    let mut load = vec![0u64; addrs.len()];
    for key in keys {
        let at = ring.partition_point(|(id, _)| id < key) % ring.len();
        load[ring[at].1] += 1;
    }
    load
}
