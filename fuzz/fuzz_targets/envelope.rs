//! An `Envelope` body decoded from arbitrary bytes (as `parse_frame` decodes one) must never
//! panic or over-allocate, and whatever decodes must survive a round trip: encoded again and
//! decoded again it is the same value.
#![no_main]

use chordkv_node::wire::{HARD_MAX_FRAME, PREFIX_LEN, encode_frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(len) = u32::try_from(body.len()) else {
        return;
    };
    let mut frame = Vec::with_capacity(PREFIX_LEN + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    let Ok(Some((envelope, used))) = parse_frame(&frame, HARD_MAX_FRAME) else {
        return;
    };
    assert_eq!(used, frame.len());
    let again = encode_frame(&envelope, HARD_MAX_FRAME).expect("what decoded encodes");
    let (decoded, used) = parse_frame(&again, HARD_MAX_FRAME)
        .expect("what we encode decodes")
        .expect("and is complete");
    assert_eq!(used, again.len());
    assert_eq!(decoded, envelope, "the round trip changed the message");
});
