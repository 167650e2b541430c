//! HTTP/2 framing (RFC 9113 §4, §6): frame heads, the frames the server writes, error codes.

use bytes::{BufMut, Bytes, BytesMut};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEAD_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The smallest maximum frame size, which every peer accepts (and the one we keep).
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
pub const DEFAULT_WINDOW: u32 = 65_535;
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame's 9-byte head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8]) -> Option<Head> {
        let b: &[u8; HEAD_LEN] = b.get(..HEAD_LEN)?.try_into().ok()?;
        Some(Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }
}

pub fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.put_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.put_u32(stream);
}

pub fn put_settings(out: &mut BytesMut, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for &(id, v) in settings {
        out.put_u16(id);
        out.put_u32(v);
    }
}

pub fn put_settings_ack(out: &mut BytesMut) {
    put_head(out, 0, SETTINGS, ACK, 0);
}

pub fn put_ping_ack(out: &mut BytesMut, payload: &[u8]) {
    put_head(out, 8, PING, ACK, 0);
    out.put_slice(payload);
}

pub fn put_ping(out: &mut BytesMut, payload: &[u8; 8]) {
    put_head(out, 8, PING, 0, 0);
    out.put_slice(payload);
}

pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

pub fn put_rst(out: &mut BytesMut, stream: u32, reason: Reason) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.put_u32(reason as u32);
}

pub fn put_goaway(out: &mut BytesMut, last: u32, reason: Reason) {
    put_head(out, 8, GOAWAY, 0, 0);
    out.put_u32(last);
    out.put_u32(reason as u32);
}

/// A header block as HEADERS plus CONTINUATION frames of at most `max_frame` bytes each.
pub fn put_header_block(
    out: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if block.is_empty() {
        put_head(out, 0, HEADERS, flags | END_HEADERS, stream);
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        put_head(out, chunk.len(), kind, flags, stream);
        out.put_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
}

/// Strip a frame's padding (RFC 9113 §6.1): the payload without its pad length byte and pad
/// (a slice of the same buffer).
pub fn unpad(payload: &Bytes, flags: u8) -> Option<Bytes> {
    if flags & PADDED == 0 {
        return Some(payload.clone());
    }
    let (&pad, rest) = payload.split_first()?;
    let end = rest.len().checked_sub(usize::from(pad))?;
    Some(payload.slice(1..1 + end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_the_reserved_bit_is_ignored() {
        let mut b = BytesMut::new();
        put_head(&mut b, 0x12_3456, HEADERS, END_HEADERS, 0x7fff_ffff);
        let mut raw = b.to_vec();
        raw[5] |= 0x80;
        let h = Head::parse(&raw).expect("nine bytes");
        assert_eq!(
            (h.len, h.kind, h.flags, h.stream),
            (0x12_3456, HEADERS, END_HEADERS, 0x7fff_ffff)
        );
        assert!(Head::parse(&raw[..8]).is_none());
    }

    #[test]
    fn header_blocks_split_into_continuations() {
        let mut b = BytesMut::new();
        put_header_block(&mut b, 3, &[7u8; 25], true, 10);
        let h1 = Head::parse(&b).expect("h");
        assert_eq!((h1.len, h1.kind, h1.flags), (10, HEADERS, END_STREAM));
        let h2 = Head::parse(&b[19..]).expect("c1");
        assert_eq!((h2.len, h2.kind, h2.flags), (10, CONTINUATION, 0));
        let h3 = Head::parse(&b[38..]).expect("c2");
        assert_eq!(
            (h3.len, h3.kind, h3.flags, h3.stream),
            (5, CONTINUATION, END_HEADERS, 3)
        );
        assert_eq!(b.len(), 3 * 9 + 25);
    }

    #[test]
    fn padding_is_removed_or_refused() {
        let b = |s: &'static [u8]| Bytes::from_static(s);
        assert_eq!(unpad(&b(b"abc"), 0), Some(b(b"abc")));
        assert_eq!(unpad(&b(b"\x02abcXY"), PADDED), Some(b(b"abc")));
        assert_eq!(unpad(&b(b"\x05ab"), PADDED), None);
        assert_eq!(unpad(&b(b""), PADDED), None);
    }
}
