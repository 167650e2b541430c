//! HPACK's Huffman code (RFC 7541 Appendix B): the code and its length in bits for each octet.
//! The table is the RFC's, as generated into the h2 crate (`h2` 0.4, MIT). The code is
//! canonical (codes of one length are consecutive, in octet order), which the decoder relies on
//! and a unit test checks.

use bytes::{BufMut, BytesMut};

/// Code of each octet, right-aligned in `CODE_LENGTHS[octet]` bits (the decoder needs only
/// the lengths: the code is canonical).
#[cfg(test)]
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// Length in bits of each octet's code (5 to 30).
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// Codes are 5 to 30 bits long.
const MIN_LEN: u32 = 5;
const MAX_LEN: u32 = 30;

/// The canonical code's shape: for each length, its first code, how many codes it has and
/// where its octets start in `SORTED`.
struct Canon {
    first: [u32; 31],
    count: [u32; 31],
    offset: [u16; 31],
    /// Octets ordered by (code length, octet), that is by code.
    sorted: [u8; 256],
}

const CANON: Canon = build();

const fn build() -> Canon {
    let mut count = [0u32; 31];
    let mut i = 0;
    while i < 256 {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut offset = [0u16; 31];
    let mut first = [0u32; 31];
    let mut code = 0u32;
    let mut at = 0u16;
    let mut len = 1;
    while len <= MAX_LEN as usize {
        offset[len] = at;
        first[len] = code;
        at += count[len] as u16;
        code = (code + count[len]) << 1;
        len += 1;
    }
    let mut sorted = [0u8; 256];
    let mut fill = offset;
    let mut len = 1;
    while len <= MAX_LEN as usize {
        let mut s = 0;
        while s < 256 {
            if CODE_LENGTHS[s] as usize == len {
                sorted[fill[len] as usize] = s as u8;
                fill[len] += 1;
            }
            s += 1;
        }
        len += 1;
    }
    Canon {
        first,
        count,
        offset,
        sorted,
    }
}

/// Bits looked at in one step: every code of at most this many bits is decoded by one table
/// lookup (all letters, digits and the common punctuation — nearly every octet of a header).
const FAST_BITS: u32 = 8;

/// For each `FAST_BITS`-bit prefix: the octet whose code it starts with and that code's length,
/// or length 0 when the code is longer.
const FAST: [(u8, u8); 1 << FAST_BITS] = fast_table();

const fn fast_table() -> [(u8, u8); 1 << FAST_BITS] {
    let mut t = [(0u8, 0u8); 1 << FAST_BITS];
    let mut p = 0;
    while p < 1 << FAST_BITS {
        let mut len = MIN_LEN;
        while len <= FAST_BITS {
            let code = (p as u32) >> (FAST_BITS - len);
            let k = code.wrapping_sub(CANON.first[len as usize]);
            if k < CANON.count[len as usize] {
                t[p] = (
                    CANON.sorted[CANON.offset[len as usize] as usize + k as usize],
                    len as u8,
                );
                break;
            }
            len += 1;
        }
        p += 1;
    }
    t
}

/// The string is not valid Huffman: a code that is no octet's (EOS included), or padding that
/// is longer than 7 bits or not all ones (RFC 7541 §5.2). A COMPRESSION_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// Decode a Huffman-coded string, appending to `out`.
pub fn decode(src: &[u8], out: &mut BytesMut) -> Result<(), Invalid> {
    out.reserve(src.len() * 8 / 5 + 1);
    // `acc` holds `bits` not yet decoded bits, right-aligned (at most 29 + 8 < 64).
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        'symbols: while bits >= MIN_LEN {
            let mut len = MIN_LEN;
            if bits >= FAST_BITS {
                let (octet, l) = FAST[((acc >> (bits - FAST_BITS)) & 0xff) as usize];
                if l != 0 {
                    out.put_u8(octet);
                    bits -= u32::from(l);
                    acc &= (1u64 << bits) - 1;
                    continue 'symbols;
                }
                // No code of up to FAST_BITS bits starts here: search the longer ones.
                len = FAST_BITS + 1;
            }
            while len <= bits.min(MAX_LEN) {
                let code = ((acc >> (bits - len)) & ((1u64 << len) - 1)) as u32;
                let i = len as usize;
                let k = code.wrapping_sub(CANON.first[i]);
                if k < CANON.count[i] {
                    out.put_u8(CANON.sorted[CANON.offset[i] as usize + k as usize]);
                    bits -= len;
                    acc &= (1u64 << bits) - 1;
                    continue 'symbols;
                }
                len += 1;
            }
            if bits >= MAX_LEN {
                // 30 bits that are no code: EOS or garbage.
                return Err(Invalid);
            }
            break;
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    if bits > 7 || acc != (1u64 << bits) - 1 {
        return Err(Invalid);
    }
    Ok(())
}

/// Huffman-encode `src` (for tests: the gateway sends its headers as raw strings).
#[cfg(test)]
pub fn encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let len = u32::from(CODE_LENGTHS[b as usize]);
        acc = (acc << len) | u64::from(CODES[b as usize]);
        bits += len;
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
            acc &= (1u64 << bits) - 1;
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(src: &[u8]) -> Result<Vec<u8>, Invalid> {
        let mut out = BytesMut::new();
        decode(src, &mut out).map(|()| out.to_vec())
    }

    #[test]
    fn the_code_is_canonical() {
        for s in 0..256 {
            let len = CODE_LENGTHS[s] as usize;
            let k = CODES[s] - CANON.first[len];
            assert!(k < CANON.count[len], "octet {s}");
            assert_eq!(
                CANON.sorted[CANON.offset[len] as usize + k as usize] as usize,
                s
            );
        }
    }

    #[test]
    fn rfc_7541_examples_decode() {
        // C.4.1 and C.4.2 (www.example.com, no-cache), C.6.1 (302, private, a date, a URL).
        let cases: [(&str, &str); 4] = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("6402", "302"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
        ];
        for (hex, text) in cases {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            assert_eq!(dec(&bytes).expect(text), text.as_bytes());
            assert_eq!(encode(text.as_bytes()), bytes, "{text}");
        }
    }

    #[test]
    fn every_octet_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(dec(&encode(&all)).expect("all octets"), all);
        for n in 0..40 {
            let zeros = vec![b'0'; n];
            assert_eq!(dec(&encode(&zeros)).expect("zeros"), zeros);
        }
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // '0' is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(dec(&[0b0000_0000]), Err(Invalid));
        // A whole byte of padding (longer than 7 bits).
        let mut s = encode(b"a");
        s.push(0xff);
        assert_eq!(dec(&s), Err(Invalid));
        // EOS itself (30 ones) then padding.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(Invalid));
        assert_eq!(dec(&[]), Ok(Vec::new()));
    }
}
