//! What decoding a flood frame costs: a default-size (8 MiB) frame holding one
//! `Request::SyncFetch` of about four million one-byte keys, the cheapest items to announce
//! and the dearest to hold (each a heap allocation of its own).
//!
//! ```text
//! /usr/bin/time -v cargo run --release --example decode_flood
//! ```
//!
//! It prints how long [`parse_frame`] took and what it answered; `time -v`'s "Maximum resident
//! set size" is the peak memory. Before item counts were bounded at decode time this took about
//! a second and some hundreds of megabytes; now the frame is refused from the list's length
//! prefix.

use chordkv_node::message::{Envelope, Request};
use chordkv_node::wire::{Limits, PREFIX_LEN, parse_frame};
use std::time::Instant;

fn main() {
    let max_frame = Limits::default().max_frame;
    let frame = flood_frame(max_frame);
    let start = Instant::now();
    let result = parse_frame(&frame, max_frame);
    let took = start.elapsed();
    let outcome = match result {
        Ok(Some((
            Envelope::Request {
                body: Request::SyncFetch { keys, .. },
                ..
            },
            _,
        ))) => format!("decoded, {} keys", keys.len()),
        Ok(Some((other, _))) => format!("decoded something else: {other:?}"),
        Ok(None) => "incomplete".into(),
        Err(e) => format!("refused: {e}"),
    };
    println!("frame of {} bytes: {outcome} in {took:?}", frame.len());
}

/// A frame of `Envelope::Request { id: 1, body: SyncFetch { keys, max_bytes: 0 } }` with as
/// many one-byte keys as fit in `max_frame`, written by hand in bincode's standard encoding
/// (variant indexes and lengths are varints) so that no sender-side bound gets in the way.
fn flood_frame(max_frame: usize) -> Vec<u8> {
    // Envelope::Request (0), id 1, Request::SyncFetch (13), then the keys' count as a varint
    // u64 (tag 253 and 8 bytes), the keys (length 1, one byte each), and max_bytes 0.
    let sync_fetch = 13;
    let header = 1 + 1 + 1 + 9;
    let count = (max_frame - header - 1) / 2;
    let mut body = vec![0u8, 1, sync_fetch, 253];
    body.extend_from_slice(&(count as u64).to_le_bytes());
    for i in 0..count {
        body.extend_from_slice(&[1, i as u8]);
    }
    body.push(0);
    let mut frame = Vec::with_capacity(PREFIX_LEN + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}
