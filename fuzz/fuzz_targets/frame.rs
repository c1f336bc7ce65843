//! Framing over arbitrary bytes: `check_frame` and `parse_frame` must never panic, must agree
//! with each other, and must consume the bytes the way `FrameReader` does (frame after frame
//! until one is incomplete or bad), under the default limits and under small ones.
#![no_main]

use chordkv_node::Error;
use chordkv_node::wire::{HARD_MAX_FRAME, Limits, PREFIX_LEN, check_frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max_frame in [Limits::default().max_frame, 256, 1, 0, HARD_MAX_FRAME + 1] {
        let mut rest = data;
        loop {
            let checked = check_frame(rest, max_frame);
            let parsed = parse_frame(rest, max_frame);
            match (checked, parsed) {
                (Ok(None), Ok(None)) => break,
                (Ok(Some(n)), Ok(Some((_, used)))) => {
                    assert_eq!(n, used, "check and parse disagree on the frame's length");
                    assert!(used >= PREFIX_LEN);
                    rest = &rest[used..];
                }
                (Ok(Some(_)), Err(Error::InvalidData(_))) => break,
                (Err(e @ Error::TooLarge { .. }), Err(f)) => {
                    assert_eq!(e, f, "check and parse refuse differently");
                    break;
                }
                (c, p) => panic!("check_frame {c:?} but parse_frame {p:?}"),
            }
        }
    }
});
