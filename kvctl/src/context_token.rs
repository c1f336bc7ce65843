//! The `--context` token a user passes back to `kvctl put` and `kvctl delete`: parsed here, in
//! the library, so the fuzz target (`fuzz/fuzz_targets/context.rs`) runs the very parser the
//! command line does.

use crate::{Context, Error, VersionVector};
use anyhow::anyhow;

/// Parses a `--context` TOKEN as `kvctl get` printed it ([`Context::to_token`]).
///
/// # Errors
/// One line saying what is wrong with the token and what to pass instead.
pub fn parse_context(token: &str) -> anyhow::Result<VersionVector> {
    Context::from_token(token)
        .map(VersionVector::from)
        .map_err(|e| {
            let why = match e {
                Error::InvalidInput(m) => m,
                e => e.to_string(),
            };
            anyhow!("{why} (pass --context the TOKEN that `kvctl get` printed, unchanged)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_tokens_parse_or_fail_in_one_line() {
        let token = Context::empty().to_token();
        assert_eq!(parse_context(&token).ok(), Some(VersionVector::new()));
        for bad in ["", "zz", "abc", "00ff"] {
            let err = parse_context(bad).expect_err(bad).to_string();
            assert!(err.starts_with("bad context token: "), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        }
    }
}
