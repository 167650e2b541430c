//! A blocking HTTP/2 client for the latency benchmark (RFC 9113, RFC 7541): one POST at a time on
//! one connection, each request's HEADERS and DATA in one write, read until its END_STREAM.
//!
//! Why not the `h2` crate: it needs a tokio runtime per connection thread, and with sixteen
//! connections per target on the client's core that runtime (its I/O driver, the connection task
//! and the request task woken in turn) made every target's p99 the client's — about 2.9 ms over
//! HTTP/2 for every proxy, where the blocking HTTP/1.1 client read 1.1 ms. This client does what
//! the HTTP/1.1 one does: write, then block in `read`.
//!
//! It checks what a benchmark must: the answer's `:status` is 200 (encoded as an indexed field,
//! or a literal with the indexed name, plain or Huffman — what nginx, haproxy and scoregate
//! send), frames belong to the stream, and SETTINGS and PING are acknowledged. Anything else
//! (GOAWAY, RST_STREAM, another status) is an error the benchmark counts.

use std::io::{self, Read, Write};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

pub struct H2Client<S> {
    s: S,
    /// The request's header block (HPACK, no dynamic table), the same for every request.
    block: Vec<u8>,
    body: Vec<u8>,
    next_stream: u32,
    /// Bytes read and not yet taken as frames.
    buf: Vec<u8>,
}

impl<S: Read + Write> H2Client<S> {
    /// The connection preface and our SETTINGS on `s` (a TLS stream that negotiated h2), and the
    /// connection's receive window opened to its maximum, so the answers' DATA never waits for
    /// a WINDOW_UPDATE. Every request: POST `path` with `body` as JSON and `authorization`.
    pub fn new(mut s: S, path: &str, authorization: &str, body: &[u8]) -> io::Result<Self> {
        let mut out = PREFACE.to_vec();
        frame(&mut out, SETTINGS, 0, 0, &[]);
        frame(
            &mut out,
            WINDOW_UPDATE,
            0,
            0,
            &(0x7fff_ffff_u32 - 65_535).to_be_bytes(),
        );
        s.write_all(&out)?;
        s.flush()?;
        // Static table (RFC 7541 Appendix A): 3 `:method POST`, 7 `:scheme https` indexed;
        // literals without indexing on the names 4 `:path`, 1 `:authority`, 31 `content-type`,
        // 23 `authorization`, 28 `content-length`.
        let mut block = vec![0x83, 0x87];
        literal(&mut block, 4, path.as_bytes());
        literal(&mut block, 1, b"localhost");
        literal(&mut block, 31, b"application/json");
        literal(&mut block, 23, authorization.as_bytes());
        literal(&mut block, 28, body.len().to_string().as_bytes());
        Ok(H2Client {
            s,
            block,
            body: body.to_vec(),
            next_stream: 1,
            buf: Vec::with_capacity(4096),
        })
    }

    /// One POST on a new stream; whether it was answered 200, once the answer has ended.
    pub fn post(&mut self) -> io::Result<bool> {
        let id = self.next_stream;
        self.next_stream += 2;
        let mut out = Vec::with_capacity(self.block.len() + self.body.len() + 18);
        frame(&mut out, HEADERS, END_HEADERS, id, &self.block);
        frame(&mut out, DATA, END_STREAM, id, &self.body);
        self.s.write_all(&out)?;
        self.s.flush()?;
        let mut ok = None;
        loop {
            let (kind, flags, stream, payload) = self.read_frame()?;
            match kind {
                SETTINGS if flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[])?,
                PING if flags & ACK == 0 => self.send(PING, ACK, 0, &payload)?,
                GOAWAY => return Err(io::Error::other("GOAWAY from the server")),
                RST_STREAM if stream == id => return Err(io::Error::other("stream reset")),
                HEADERS if stream == id => {
                    if ok.is_none() {
                        ok = Some(status_is_200(flags, &payload)?);
                    }
                    if flags & END_STREAM != 0 {
                        return Ok(ok == Some(true));
                    }
                }
                DATA if stream == id && flags & END_STREAM != 0 => return Ok(ok == Some(true)),
                _ => {}
            }
        }
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(9 + payload.len());
        frame(&mut out, kind, flags, stream, payload);
        self.s.write_all(&out)?;
        self.s.flush()
    }

    /// The next frame: type, flags, stream, payload.
    fn read_frame(&mut self) -> io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut chunk = [0u8; 4096];
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    let stream = u32::from_be_bytes([
                        self.buf[5] & 0x7f,
                        self.buf[6],
                        self.buf[7],
                        self.buf[8],
                    ]);
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Ok((kind, flags, stream, payload));
                }
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an N-bit prefix, the prefix's other bits `first` (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, first: u8, prefix: u32, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, its name from the static table (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: usize, value: &[u8]) {
    integer(out, 0x00, 4, name);
    integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// Whether a HEADERS frame's block says `:status: 200`: it is the first field (pseudo-headers
/// come first), after any dynamic table size updates.
fn status_is_200(flags: u8, payload: &[u8]) -> io::Result<bool> {
    let bad = || io::Error::other("malformed HEADERS frame");
    let (mut start, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        let pad = *payload.first().ok_or_else(bad)? as usize;
        start = 1;
        end = end.checked_sub(pad).ok_or_else(bad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    if flags & END_HEADERS == 0 {
        return Err(io::Error::other(
            "CONTINUATION frames are not expected here",
        ));
    }
    let mut block = payload.get(start..end).ok_or_else(bad)?;
    // Dynamic table size updates (001xxxxx), each with its integer's continuation bytes.
    while let Some(&b) = block.first() {
        if b & 0xe0 != 0x20 {
            break;
        }
        let mut i = 1;
        if b & 0x1f == 0x1f {
            while block.get(i).is_some_and(|c| c & 0x80 != 0) {
                i += 1;
            }
            i += 1;
        }
        block = block.get(i..).ok_or_else(bad)?;
    }
    Ok(match block {
        // Indexed: static entry 8 is `:status: 200`.
        [0x88, ..] => true,
        // Literal (with, without or never indexing) on the name `:status` (8), then the value
        // "200" plain or Huffman-coded.
        [0x48 | 0x08 | 0x18, 3, b'2', b'0', b'0', ..] => true,
        [0x48 | 0x08 | 0x18, 0x82, 0x10, 0x01, ..] => true,
        _ => false,
    })
}

/// The encodings above against known answers; `cargo test --all-targets` runs the benchmark
/// without arguments, which runs this (its harness is off, so `#[test]`s would never run).
pub fn self_check() {
    let mut out = Vec::new();
    integer(&mut out, 0, 5, 1337);
    assert_eq!(out, [31, 154, 10], "RFC 7541 C.1.2");
    out.clear();
    integer(&mut out, 0, 4, 31);
    assert_eq!(out, [15, 16]);
    let ok = |flags, block: &[u8]| status_is_200(flags, block).ok();
    assert_eq!(ok(END_HEADERS, &[0x88]), Some(true));
    assert_eq!(
        ok(END_HEADERS, &[0x20, 0x88]),
        Some(true),
        "after a table size update"
    );
    assert_eq!(
        ok(END_HEADERS, &[0x3f, 0xe1, 0x1f, 0x88]),
        Some(true),
        "a long one"
    );
    assert_eq!(ok(END_HEADERS, &[0x08, 3, b'2', b'0', b'0']), Some(true));
    assert_eq!(
        ok(END_HEADERS, &[0x48, 0x82, 0x10, 0x01]),
        Some(true),
        "Huffman"
    );
    assert_eq!(ok(END_HEADERS | PADDED, &[2, 0x88, 0, 0]), Some(true));
    assert_eq!(
        ok(END_HEADERS | PRIORITY, &[0, 0, 0, 1, 16, 0x88]),
        Some(true)
    );
    assert_eq!(ok(END_HEADERS, &[0x8d]), Some(false), "404");
    assert_eq!(
        ok(END_HEADERS, &[0x08, 3, b'5', b'0', b'3']),
        Some(false),
        "503"
    );
    assert_eq!(ok(0, &[0x88]), None, "CONTINUATION");
    assert_eq!(
        ok(END_HEADERS | PADDED, &[9, 0x88]),
        None,
        "padding past the end"
    );
}
