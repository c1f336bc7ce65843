//! RESP request decoding (`resp::frame::Decoder`) over arbitrary bytes in arbitrary reads, under
//! the default limits and tiny ones. It must never panic; after each read it must leave at most
//! `Limits::max_pending` bytes in the buffer and hold at most `max_command` bytes of arguments;
//! it must come to the same items and the same end however the stream is cut (the first byte
//! picks the cuts); and every command it yields, sent again as a multibulk array, must decode to
//! itself.
#![no_main]

use bytes::BytesMut;
use chordkv_node::resp::frame::{Decoder, FrameError, Item, Limits, Protocol, Reply};
use libfuzzer_sys::fuzz_target;

const TINY: Limits = Limits {
    max_args: 3,
    max_bulk: 5,
    max_command: 8,
    max_inline: 16,
};

/// The items a stream decodes to, in order, then how it stopped: `Ok(n)` with `n` bytes of an
/// unfinished item left over, or the error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Item>,
    end: Result<usize, FrameError>,
}

/// Decodes `stream` read in chunks of the sizes `next_read` gives.
fn decode(limits: Limits, stream: &[u8], mut next_read: impl FnMut() -> usize) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    return Outcome { items, end: Err(e) };
                }
            }
        }
        assert!(
            buf.len() <= limits.max_pending(),
            "{} bytes left in the buffer, over {}",
            buf.len(),
            limits.max_pending()
        );
        assert!(
            decoder.held() <= limits.max_command,
            "decoder over max_command"
        );
        if rest.is_empty() {
            return Outcome {
                items,
                end: Ok(buf.len()),
            };
        }
        let (read, after) = rest.split_at(next_read().clamp(1, rest.len()));
        buf.extend_from_slice(read);
        rest = after;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    for limits in [Limits::default(), TINY] {
        let whole = decode(limits, stream, || usize::MAX);
        // Reads of 1 to pick + 1 bytes, varying (pick 0: byte by byte).
        let span = usize::from(pick) + 1;
        let mut lcg = u32::from(pick);
        let cut = decode(limits, stream, || {
            lcg = lcg.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (lcg >> 16) as usize % span + 1
        });
        assert_eq!(whole, cut, "the outcome depends on the reads");
        for item in &whole.items {
            if let Item::Command(args) = item {
                assert!(!args.is_empty(), "an empty command was yielded");
                let again = Reply::Array(args.iter().map(|a| Reply::Bulk(a.clone())).collect())
                    .to_bytes(Protocol::Resp2);
                assert_eq!(
                    decode(limits, &again, || usize::MAX),
                    Outcome {
                        items: vec![item.clone()],
                        end: Ok(0),
                    },
                    "a command sent again as multibulk decodes otherwise"
                );
            }
        }
    }
});
