//! kvctl's `--context` token parser over arbitrary strings: never panics, fails in one line,
//! and a token it accepts is the token of what it parsed.
#![no_main]

use kvctl::Context;
use kvctl::context_token::parse_context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    match parse_context(token) {
        Ok(vv) => {
            let again = Context::from(vv.clone()).to_token();
            assert_eq!(
                parse_context(&again).ok(),
                Some(vv),
                "the round trip changed it"
            );
        }
        Err(e) => assert_eq!(e.to_string().lines().count(), 1, "{e}"),
    }
});
