//! Decoding lists whose length is bounded, checked before anything is allocated.
//!
//! bincode announces a sequence's length up front (serde's `size_hint`), and serde's own `Vec`
//! and `BTreeMap` visitors trust it up to a megabyte of preallocation and then push element
//! after element: an 8 MiB frame of four million one-byte keys costs some 220 MB and a second
//! before any check of the message runs. These visitors refuse a sequence whose announced length
//! exceeds the bound at once, as an invalid length (which a frame reports as
//! [`crate::Error::InvalidData`]); they also count the elements, for formats that announce no
//! length, and never preallocate more than [`PREALLOC_BYTES`] whatever the announcement.
//!
//! Use them through `#[serde(deserialize_with = "...")]` on the field; the bounds themselves are
//! named constants beside the types that carry the lists ([`crate::message::MAX_ITEMS`] and
//! its neighbours, [`crate::version::MAX_VECTOR_ENTRIES`], ...).

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// The most memory a visitor reserves up front for a list, whatever length it announces: the
/// rest grows as elements actually arrive, so a lying length prefix costs at most this.
const PREALLOC_BYTES: usize = 64 << 10;

/// How many elements of `T` to reserve for a list announcing `hint` (already within its bound).
fn cautious<T>(hint: usize) -> usize {
    hint.min(PREALLOC_BYTES / std::mem::size_of::<T>().max(1))
}

/// Deserializes a `Vec` of at most `N` elements.
///
/// # Errors
/// An invalid-length error, before any element is decoded, if the sequence announces more than
/// `N` elements; the same once an `N + 1`-th arrives, if it announces none; the elements' errors.
pub(crate) fn vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(VecVisitor::<T, N>(PhantomData))
}

/// Deserializes a `BTreeMap` of at most `N` entries.
///
/// # Errors
/// As [`vec`], for entries.
pub(crate) fn btree_map<'de, D, K, V, const N: usize>(
    deserializer: D,
) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(MapVisitor::<K, V, N>(PhantomData))
}

/// Deserializes optional bytes (as `serde_bytes` encodes them) from the input itself: with a
/// borrowing decoder (bincode's `decode_from_slice`) the announced length is checked against the
/// bytes left before anything is allocated, where `serde_bytes::ByteBuf`'s own impl makes bincode
/// allocate the announced length first (a state whose dependencies announced a terabyte aborted
/// the process: found by the `version_state` fuzz target).
///
/// # Errors
/// The decoder's, for a length beyond the input or malformed data.
pub(crate) fn opt_bytes<'de, D>(deserializer: D) -> Result<Option<serde_bytes::ByteBuf>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<Bytes>::deserialize(deserializer).map(|bytes| bytes.map(|b| b.0))
}

/// Bytes asked of the decoder as a borrowed slice, see [`opt_bytes`].
struct Bytes(serde_bytes::ByteBuf);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(BytesVisitor).map(Bytes)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = serde_bytes::ByteBuf;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(serde_bytes::ByteBuf::from(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        Ok(serde_bytes::ByteBuf::from(v))
    }
}

struct VecVisitor<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for VecVisitor<T, N> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {N} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let announced = seq.size_hint().unwrap_or(0);
        if announced > N {
            return Err(A::Error::invalid_length(announced, &self));
        }
        let mut out = Vec::with_capacity(cautious::<T>(announced));
        while let Some(element) = seq.next_element()? {
            if out.len() == N {
                return Err(A::Error::invalid_length(N + 1, &self));
            }
            out.push(element);
        }
        Ok(out)
    }
}

struct MapVisitor<K, V, const N: usize>(PhantomData<(K, V)>);

impl<'de, K, V, const N: usize> Visitor<'de> for MapVisitor<K, V, N>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map of at most {N} entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BTreeMap<K, V>, A::Error> {
        let announced = map.size_hint().unwrap_or(0);
        if announced > N {
            return Err(A::Error::invalid_length(announced, &self));
        }
        let mut out = BTreeMap::new();
        let mut seen = 0usize;
        while let Some((k, v)) = map.next_entry()? {
            // Entries with equal keys collapse in the map, but each was decoded: count them all.
            seen += 1;
            if seen > N {
                return Err(A::Error::invalid_length(seen, &self));
            }
            out.insert(k, v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Capped {
        #[serde(deserialize_with = "vec::<_, _, 3>")]
        list: Vec<u8>,
        #[serde(deserialize_with = "btree_map::<_, _, _, 2>")]
        map: BTreeMap<u8, u8>,
    }

    fn decode(bytes: &[u8]) -> Result<Capped, String> {
        crate::version::decode_exact(bytes)
    }

    #[test]
    fn lists_at_their_bound_decode() {
        // list [1, 2, 3], map {1: 2, 3: 4}
        let capped = decode(&[3, 1, 2, 3, 2, 1, 2, 3, 4]).expect("decodes");
        assert_eq!(capped.list, vec![1, 2, 3]);
        assert_eq!(capped.map, BTreeMap::from([(1, 2), (3, 4)]));
    }

    #[test]
    fn a_list_announcing_more_than_its_bound_is_refused_from_its_length() {
        // Four elements announced and none present: refused for the length, not for the end.
        let e = decode(&[4]).expect_err("over the bound");
        assert!(e.contains("at most 3"), "{e}");
        let e = decode(&[0, 3, 1, 1, 2, 2, 3, 3]).expect_err("over the bound");
        assert!(e.contains("at most 2"), "{e}");
    }
}
