//! Running cargo from inside a test or a benchmark, to build the binaries it starts.
//!
//! `cargo test` and `cargo bench` set variables for the target they run (`CARGO_MANIFEST_DIR`,
//! `CARGO_PKG_NAME`, …). A cargo started with them builds as if from another place: `ring`'s
//! build script reruns when `CARGO_MANIFEST_DIR` changes, so the inner build recompiled ring,
//! rustls and everything above them (a minute or two), and the next build from a shell did so
//! again. [`command`] leaves them out.

use std::ffi::OsString;
use std::process::Command;

/// The variables cargo sets for a target it runs, by prefix and by name.
const SET_FOR_THE_TARGET: ([&str; 4], [&str; 2]) = (
    [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ],
    ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"],
);

/// A `cargo` command (`$CARGO`, else `fallback`) without the variables cargo set for the
/// test or benchmark that runs it.
pub fn command(fallback: &str) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from(fallback));
    let mut cmd = Command::new(cargo);
    let (prefixes, names) = SET_FOR_THE_TARGET;
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if prefixes.iter().any(|p| text.starts_with(p)) || names.contains(&text.as_ref()) {
            cmd.env_remove(&name);
        }
    }
    cmd
}
