//! The HTTP/2 server's HPACK decoder on arbitrary header blocks (two in a row, sharing the dynamic
//! table, as a connection does), and the encoder's output read back by the decoder. Checks the
//! invariants, not only the absence of panics: the table never exceeds its limit, and what the
//! encoder writes decodes to the same fields.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use scoregate::server::h2::hpack::{self, Decoder};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new(LIMIT);
    let (a, b) = data.split_at(data.len() / 2);
    for block in [a, b] {
        let block = Bytes::copy_from_slice(block);
        let mut fields = 0usize;
        let r = d.decode(&block, |_| fields += 1);
        assert!(
            d.table_size() <= LIMIT,
            "table {} > {LIMIT}",
            d.table_size()
        );
        if r.is_err() {
            break;
        }
    }
    // Encoder round trip: the input as name/value pairs; names of letters in either case (an
    // HTTP/1.1 replica's), up to 40 long (past the static table's longest), decode lower-cased.
    let mut out = BytesMut::new();
    let mut want = Vec::new();
    for pair in data.chunks(64) {
        let Some((&len, rest)) = pair.split_first() else {
            continue;
        };
        let (n, v) = rest.split_at(rest.len().min(1 + usize::from(len % 40)));
        let name: Vec<u8> = n
            .iter()
            .map(|c| if c & 0x80 != 0 { b'A' } else { b'a' } + c % 26)
            .collect();
        if name.is_empty() {
            continue;
        }
        hpack::put_field(&mut out, &name, v);
        want.push((name.to_ascii_lowercase(), v.to_vec()));
    }
    let mut got = Vec::new();
    Decoder::new(LIMIT)
        .decode(&out.freeze(), |f| {
            got.push((f.name.to_vec(), f.value.to_vec()))
        })
        .expect("the encoder's output decodes");
    assert_eq!(got, want);
});
