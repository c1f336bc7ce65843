//! IDENTIFIERS
//!
//! Every node and every key has a 160-bit identifier on a circle modulo 2^160: the SHA-1 of the
//! node's advertised address, or of the key's bytes (Chord, SIGCOMM 2001 §4.2). Key `k` belongs to
//! `successor(k)`, the first node whose id is equal to or follows `k` clockwise.
//!
//! All ring arithmetic lives here as tiny pure functions: the two interval tests every Chord rule is
//! written in ([`in_open`], [`in_half_open`]), clockwise [`distance`], and finger starts
//! ([`Id::add_pow2`]). An [`Id`] is stored big-endian, so the derived byte order is numeric order.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::fmt;
use std::str::FromStr;

/// Number of bits in an identifier, and so the number of fingers a node keeps.
pub const BITS: usize = 160;

/// A point on the identifier circle: 160 bits, big-endian.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Id(pub [u8; 20]);

impl Id {
    /// The zero identifier.
    pub const ZERO: Id = Id([0; 20]);
    /// The largest identifier, 2^160 - 1.
    pub const MAX: Id = Id([0xff; 20]);

    /// The SHA-1 of `bytes`: how node addresses and keys are placed on the ring.
    pub fn hash(bytes: &[u8]) -> Id {
        Id(Sha1::digest(bytes).into())
    }

    /// `self + 2^i (mod 2^160)`, the start of finger `i` (0-based; the paper's finger `i+1`).
    ///
    /// # Panics
    /// If `i >= 160`.
    pub fn add_pow2(self, i: usize) -> Id {
        assert!(i < BITS, "finger index {i} out of range");
        let mut out = self.0;
        let byte = 19 - i / 8;
        let mut carry = 1u16 << (i % 8);
        for b in (0..=byte).rev() {
            let sum = u16::from(out[b]) + carry;
            out[b] = sum as u8;
            carry = sum >> 8;
            if carry == 0 {
                break;
            }
        }
        Id(out)
    }

    /// `self + 1 (mod 2^160)`.
    pub fn succ(self) -> Id {
        self.add_pow2(0)
    }

    /// The first 8 hex digits: enough to tell nodes apart in logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

/// Clockwise distance from `a` to `b`: `(b - a) mod 2^160`.
pub fn distance(a: Id, b: Id) -> Id {
    let mut out = [0u8; 20];
    let mut borrow = 0i16;
    for i in (0..20).rev() {
        let mut d = i16::from(b.0[i]) - i16::from(a.0[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = d as u8;
    }
    Id(out)
}

/// Whether `x` lies strictly between `a` and `b` going clockwise: `x ∈ (a, b)`.
///
/// When `a == b` the interval is the whole circle except `a`, which is what Chord's rules need for
/// a ring of one node (its successor and predecessor are itself).
pub fn in_open(a: Id, b: Id, x: Id) -> bool {
    if a < b {
        a < x && x < b
    } else {
        // Wraps past zero (or a == b: everything but a).
        x > a || x < b
    }
}

/// Whether `x ∈ (a, b]` going clockwise. When `a == b` this is the whole circle.
pub fn in_half_open(a: Id, b: Id, x: Id) -> bool {
    x == b || in_open(a, b, x)
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Parse error for [`Id`]: not 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an id is 40 hex digits, got {0:?}")]
pub struct ParseIdError(String);

impl FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError(s.to_string()))?;
        Ok(Id(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id whose last byte is `n` and the rest zero: small numbers make readable tables.
    fn n(v: u8) -> Id {
        let mut b = [0u8; 20];
        b[19] = v;
        Id(b)
    }

    #[test]
    fn intervals_table() {
        // (a, b, x, in (a,b), in (a,b])
        let cases = [
            (10, 20, 15, true, true),
            (10, 20, 10, false, false),
            (10, 20, 20, false, true),
            (10, 20, 25, false, false),
            (10, 20, 5, false, false),
            // wrapping past zero
            (200, 10, 250, true, true),
            (200, 10, 0, true, true),
            (200, 10, 5, true, true),
            (200, 10, 10, false, true),
            (200, 10, 200, false, false),
            (200, 10, 100, false, false),
            // a == b: whole circle except a for (a,a); whole circle for (a,a]
            (7, 7, 7, false, true),
            (7, 7, 8, true, true),
            (7, 7, 6, true, true),
        ];
        for (a, b, x, open, half) in cases {
            assert_eq!(in_open(n(a), n(b), n(x)), open, "({a},{b}) ∋ {x}");
            assert_eq!(in_half_open(n(a), n(b), n(x)), half, "({a},{b}] ∋ {x}");
        }
    }

    #[test]
    fn add_pow2_carries_and_wraps() {
        assert_eq!(n(0).add_pow2(0), n(1));
        assert_eq!(n(255).add_pow2(0), {
            let mut b = [0u8; 20];
            b[18] = 1;
            Id(b)
        });
        assert_eq!(Id::MAX.add_pow2(0), Id::ZERO);
        let mut top = [0u8; 20];
        top[0] = 0x80;
        assert_eq!(Id::ZERO.add_pow2(159), Id(top));
        assert_eq!(Id(top).add_pow2(159), Id::ZERO);
    }

    #[test]
    fn distance_is_clockwise() {
        assert_eq!(distance(n(10), n(20)), n(10));
        assert_eq!(distance(n(20), n(10)), {
            // 2^160 - 10
            let mut b = [0xffu8; 20];
            b[19] = 0xf6;
            Id(b)
        });
        assert_eq!(distance(n(5), n(5)), Id::ZERO);
    }

    #[test]
    fn sha1_of_known_input() {
        // SHA-1("abc") from FIPS 180-1, appendix A.
        assert_eq!(
            Id::hash(b"abc").to_string(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let parsed: Id = "a9993e364706816aba3e25717850c26c9cd0d89d"
            .parse()
            .expect("hex");
        assert_eq!(parsed, Id::hash(b"abc"));
        assert!("xyz".parse::<Id>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn distance_inverts_add(a: [u8; 20], i in 0usize..160) {
            let a = Id(a);
            let b = a.add_pow2(i);
            proptest::prop_assert_eq!(distance(a, b), Id::ZERO.add_pow2(i));
        }

        #[test]
        fn exactly_one_side_of_a_split(a: [u8; 20], b: [u8; 20], x: [u8; 20]) {
            let (a, b, x) = (Id(a), Id(b), Id(x));
            proptest::prop_assume!(a != b);
            // (a, b] and (b, a] partition the circle.
            proptest::prop_assert!(in_half_open(a, b, x) != in_half_open(b, a, x));
        }
    }
}
