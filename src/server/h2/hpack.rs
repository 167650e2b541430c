//! HPACK (RFC 7541) for the HTTP/2 server: a decoder with the dynamic table, and an encoder that
//! never indexes (literal fields without Huffman, names from the static table where it has
//! them). Answers carry a handful of short headers, so raw literals cost a few bytes more on
//! the wire and nothing to compute; the client's decoder is never asked to keep state for us.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::huffman;

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead counted against the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A header block that cannot be decoded: a COMPRESSION_ERROR for the whole connection, since
/// the decoder's state can no longer be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("invalid Huffman string")]
    Huffman,
    #[error("dynamic table size update above the advertised limit")]
    TableSize,
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
}

/// A decoded field: name and value share the header block's buffer when they were sent raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub value: Bytes,
}

impl Field {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// The decoding side of one connection (the client's requests).
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<Field>,
    size: usize,
    /// Current maximum, changed by the client's size updates.
    max: usize,
    /// What we advertised (SETTINGS_HEADER_TABLE_SIZE); updates may not exceed it.
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
        }
    }

    /// Decode one whole header block, handing each field to `f` in order. The fields are
    /// decoded (and the table updated) even after `f` reports a problem with one, so that the
    /// connection's table stays in step with the client's.
    pub fn decode(&mut self, block: &Bytes, mut f: impl FnMut(Field)) -> Result<(), HpackError> {
        let mut at = 0usize;
        let mut fields = false;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let (i, n) = int(&block[at..], 7)?;
                at += n;
                f(self.get(i)?);
                fields = true;
            } else if b & 0x40 != 0 {
                let (field, n) = self.literal(block, at, 6)?;
                at += n;
                self.insert(field.clone());
                f(field);
                fields = true;
            } else if b & 0x20 != 0 {
                if fields {
                    return Err(HpackError::LateSizeUpdate);
                }
                let (size, n) = int(&block[at..], 5)?;
                at += n;
                if size > self.limit {
                    return Err(HpackError::TableSize);
                }
                self.max = size;
                self.evict(0);
            } else {
                // Without indexing (0000) or never indexed (0001): both 4-bit prefixes.
                let (field, n) = self.literal(block, at, 4)?;
                at += n;
                f(field);
                fields = true;
            }
        }
        Ok(())
    }

    /// The dynamic table's size as RFC 7541 §4.1 counts it (never above the current maximum).
    #[cfg(feature = "fuzzing")]
    pub fn table_size(&self) -> usize {
        self.size
    }

    fn get(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok(Field {
                    name: Bytes::from_static(n.as_bytes()),
                    value: Bytes::from_static(v.as_bytes()),
                })
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// A literal field starting at `at` whose name index has a `prefix`-bit integer.
    fn literal(&self, block: &Bytes, at: usize, prefix: u8) -> Result<(Field, usize), HpackError> {
        let (index, mut n) = int(&block[at..], prefix)?;
        let name = if index == 0 {
            let (s, m) = string(block, at + n)?;
            n += m;
            s
        } else {
            self.get(index)?.name
        };
        let (value, m) = string(block, at + n)?;
        Ok((Field { name, value }, n + m))
    }

    fn insert(&mut self, field: Field) {
        let size = field.size();
        if size > self.max {
            // Larger than the whole table: it empties the table and is not kept (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(field);
    }

    /// Drop the oldest entries until `room` more bytes fit under the maximum.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some(f) => self.size -= f.size(),
                None => break,
            }
        }
    }
}

/// An integer with an N-bit prefix (RFC 7541 §5.1): its value and the bytes it took.
fn int(src: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = *src.first().ok_or(HpackError::Truncated)? as usize & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = mask;
    let mut shift = 0u32;
    for (i, &b) in src.iter().enumerate().skip(1) {
        // Four continuation bytes reach 2^28: more than any size or index we accept.
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(HpackError::Truncated)
}

/// A string literal at `at`: raw strings are slices of the block, Huffman ones are decoded.
fn string(block: &Bytes, at: usize) -> Result<(Bytes, usize), HpackError> {
    let src = block.get(at..).ok_or(HpackError::Truncated)?;
    let huff = src.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, n) = int(src, 7)?;
    let end = at
        .checked_add(n)
        .and_then(|s| s.checked_add(len))
        .filter(|&e| e <= block.len())
        .ok_or(HpackError::Truncated)?;
    let raw = &block[at + n..end];
    let s = if huff {
        let mut out = BytesMut::new();
        huffman::decode(raw, &mut out).map_err(|_| HpackError::Huffman)?;
        out.freeze()
    } else {
        block.slice(at + n..end)
    };
    Ok((s, n + len))
}

/// Append an integer with an N-bit prefix; `flags` fills the bits above the prefix.
fn put_int(out: &mut BytesMut, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.put_u8((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A dynamic table size update to 0: sent first in our first header block and after the client
/// changes SETTINGS_HEADER_TABLE_SIZE, so the client's decoder never holds state for us.
pub fn put_table_size_zero(out: &mut BytesMut) {
    out.put_u8(0x20);
}

/// `:status`: the static table's entry when it has one, else a literal with the name indexed.
pub fn put_status(out: &mut BytesMut, status: http::StatusCode) {
    let index = match status.as_u16() {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.put_u8(0x80 | index);
    } else {
        out.put_u8(0x08); // literal without indexing, name = static 8 (:status)
        put_str(out, status.as_str().as_bytes());
    }
}

/// A header field as a literal without indexing; the name is written in lower case (HTTP/2
/// requires it; an HTTP/1.1 replica's may be in any case).
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    if name.iter().any(u8::is_ascii_uppercase) {
        let mut buf = [0u8; 32];
        if let Some(b) = buf.get_mut(..name.len()) {
            b.copy_from_slice(name);
            b.make_ascii_lowercase();
            put_name(out, b);
        } else {
            // Longer than any name in the static table.
            out.put_u8(0);
            put_int(out, 0, 7, name.len());
            out.extend(name.iter().map(u8::to_ascii_lowercase));
        }
    } else {
        put_name(out, name);
    }
    put_str(out, value);
}

/// A lower-case name: the static table's index when it has one, else literally.
fn put_name(out: &mut BytesMut, name: &[u8]) {
    match static_name(name) {
        Some(i) => put_int(out, 0, 4, i),
        None => {
            out.put_u8(0);
            put_str(out, name);
        }
    }
}

/// `date: <now>` (IMF-fixdate, always 29 bytes), formatted once per second.
pub fn put_date(out: &mut BytesMut) {
    put_int(out, 0, 4, 33);
    put_int(out, 0, 7, 29);
    crate::http1::put_date(out);
}

/// `content-length: n`.
pub fn put_content_length(out: &mut BytesMut, n: u64) {
    put_int(out, 0, 4, 28);
    put_str(out, crate::http1::decimal(n, &mut [0; 20]));
}

/// The static table's index of a (lowercase) header name, for the names answers carry.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"content-type" => 31,
        b"content-length" => 28,
        b"date" => 33,
        b"server" => 54,
        b"cache-control" => 24,
        b"content-encoding" => 26,
        b"retry-after" => 53,
        b"location" => 46,
        b"allow" => 22,
        b"vary" => 59,
        b"etag" => 34,
        b"www-authenticate" => 61,
        b"set-cookie" => 55,
        b"last-modified" => 44,
        b"expires" => 36,
        b"age" => 21,
        b"accept-ranges" => 18,
        b"strict-transport-security" => 56,
        b"access-control-allow-origin" => 20,
        b"link" => 45,
        b"via" => 60,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect::<Vec<u8>>()
            .into()
    }

    fn decode(d: &mut Decoder, block: &str) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(&hex(block), |f| {
            out.push((
                String::from_utf8(f.name.to_vec()).expect("utf8"),
                String::from_utf8(f.value.to_vec()).expect("utf8"),
            ))
        })?;
        Ok(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn static_table_matches_the_names_the_encoder_uses() {
        for (i, (n, _)) in STATIC.iter().enumerate() {
            if let Some(j) = static_name(n.as_bytes()) {
                assert_eq!(j, i + 1, "{n}");
            }
        }
        assert_eq!(STATIC[60].0, "www-authenticate");
    }

    /// RFC 7541 C.3: three requests without Huffman, sharing the dynamic table.
    #[test]
    fn rfc_7541_c3_requests() {
        let mut d = Decoder::new(4096);
        let r1 = decode(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d").expect("c3.1");
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(r1, pairs(&base));
        assert_eq!(d.size, 57);
        let r2 = decode(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865").expect("c3.2");
        let mut want = base.to_vec();
        want.push(("cache-control", "no-cache"));
        assert_eq!(r2, pairs(&want));
        assert_eq!(d.size, 110);
        let r3 = decode(
            &mut d,
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        )
        .expect("c3.3");
        assert_eq!(
            r3,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
    }

    /// RFC 7541 C.6: responses with Huffman and a 256-byte table, so entries are evicted.
    #[test]
    fn rfc_7541_c6_responses_with_eviction() {
        let mut d = Decoder::new(256);
        let r1 = decode(
            &mut d,
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        )
        .expect("c6.1");
        assert_eq!(
            r1,
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        let r2 = decode(&mut d, "4883 640e ffc1 c0bf").expect("c6.2");
        assert_eq!(r2[0], pairs(&[(":status", "307")])[0]);
        assert_eq!(r2[3].1, "https://www.example.com");
        assert_eq!(d.size, 222);
        assert_eq!(d.table.len(), 4);
    }

    #[test]
    fn malformed_blocks_are_compression_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, "80"), Err(HpackError::BadIndex(0)));
        assert_eq!(decode(&mut d, "be"), Err(HpackError::BadIndex(62)));
        // A size update above what we advertised, and one after a field.
        assert_eq!(decode(&mut d, "3fe2 1f"), Err(HpackError::TableSize));
        assert_eq!(decode(&mut d, "82 20"), Err(HpackError::LateSizeUpdate));
        // A literal whose value runs past the block.
        assert_eq!(decode(&mut d, "0085 6162"), Err(HpackError::Truncated));
        // An integer that does not end, or is too large.
        assert_eq!(decode(&mut d, "ff ff ff"), Err(HpackError::Truncated));
        assert_eq!(
            decode(&mut d, "ff ff ff ff ff ff 01"),
            Err(HpackError::Overflow)
        );
        // A Huffman value padded with zeros.
        assert_eq!(decode(&mut d, "00 0161 8100"), Err(HpackError::Huffman));
        // A size update to 0 empties the table.
        assert_eq!(decode(&mut d, "4001 6101 62").expect("insert").len(), 1);
        assert_eq!(d.table.len(), 1);
        assert_eq!(decode(&mut d, "20").expect("update"), vec![]);
        assert_eq!(d.table.len(), 0);
    }

    #[test]
    fn what_the_encoder_writes_decodes() {
        let mut out = BytesMut::new();
        put_table_size_zero(&mut out);
        put_status(&mut out, http::StatusCode::OK);
        put_status(&mut out, http::StatusCode::TOO_MANY_REQUESTS);
        put_field(&mut out, b"content-type", b"application/json");
        put_field(&mut out, b"x-request-id", &[b'a'; 200]);
        put_date(&mut out);
        put_content_length(&mut out, 1_234_567);
        put_content_length(&mut out, 0);
        let mut d = Decoder::new(4096);
        let mut got = Vec::new();
        d.decode(&out.freeze(), |f| got.push(f)).expect("decodes");
        assert_eq!(got.len(), 7);
        assert_eq!(&got[4].name[..], b"date");
        assert!(
            httpdate::parse_http_date(std::str::from_utf8(&got[4].value).expect("ascii")).is_ok()
        );
        assert_eq!(&got[5].value[..], b"1234567");
        assert_eq!(&got[6].value[..], b"0");
        assert_eq!(&got[0].value[..], b"200");
        assert_eq!(&got[1].value[..], b"429");
        assert_eq!(&got[2].name[..], b"content-type");
        assert_eq!(&got[3].name[..], b"x-request-id");
        assert_eq!(got[3].value.len(), 200);
        assert!(d.table.is_empty(), "nothing was indexed");

        // An HTTP/1.1 replica's names go out in lower case: by the static table or literally,
        // short or longer than any table name.
        let long = format!("X-{}", "Long".repeat(10));
        let mut out = BytesMut::new();
        put_field(&mut out, b"Content-Type", b"a/b");
        put_field(&mut out, b"X-Reply", b"1");
        put_field(&mut out, long.as_bytes(), b"2");
        let mut got = Vec::new();
        d.decode(&out.freeze(), |f| got.push(f)).expect("decodes");
        let names: Vec<_> = got.iter().map(|f| f.name.to_vec()).collect();
        assert_eq!(
            names,
            [
                b"content-type".to_vec(),
                b"x-reply".to_vec(),
                long.to_ascii_lowercase().into_bytes()
            ]
        );
        assert_eq!(out_len_of_indexed_name(), 2 + 1 + 3);
    }

    /// `content-type: a/b` by the static table's name (index 31: two bytes with a 4-bit
    /// prefix), then the value's length and bytes.
    fn out_len_of_indexed_name() -> usize {
        let mut out = BytesMut::new();
        put_field(&mut out, b"CONTENT-TYPE", b"a/b");
        out.len()
    }
}
