//! Diagnostic: grow a ring in simulation and print convergence over time.
use chordkv_node::sim::{Sim, SimOptions};
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let mut sim = Sim::new(SimOptions::default());
    sim.add_node(None);
    for _ in 1..n { sim.add_node(Some(0)); sim.run_for(20); }
    for _ in 0..30 {
        let e = sim.ring_errors(true);
        let s = sim.ring_errors(false);
        println!("t={} errors={} succ/pred errors={} msgs={}", sim.now(), e.len(), s.len(), sim.delivered);
        for x in s.iter().take(3) { println!("  {x}"); }
        if e.is_empty() { break; }
        for x in e.iter().take(3) { println!("  {x}"); }
        sim.run_for(2000);
    }
}
