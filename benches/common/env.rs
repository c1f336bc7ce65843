//! Benchmark knobs from the environment. Shared by `common` and `benches/simbench` (which
//! includes this file by path, without the rest of `common`).

/// Whether the long run was asked for: `cargo bench --bench NAME -- --full`, or
/// `CHORDKV_BENCH_FULL=1`.
pub fn full() -> bool {
    std::env::args().any(|a| a == "--full")
        || std::env::var("CHORDKV_BENCH_FULL").is_ok_and(|v| v == "1")
}

/// A comma-separated list of numbers from env var `name` (`_` allowed as a digit separator),
/// else `default`.
pub fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().replace('_', "").parse().ok())
                .collect()
        })
        .unwrap_or_else(|| default.to_vec())
}

/// The number in env var `name` (`_` allowed as a digit separator), else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    env_list(name, &[default])
        .first()
        .copied()
        .unwrap_or(default)
}
