//! HTTP/1.1 on the wire, for both sides: the server fast path takes simple requests
//! ([`request`]) and writes response heads ([`response`]); the replica client encodes requests
//! and decodes responses ([`client`]). Heads stay as the bytes that arrived ([`raw`]). Nothing
//! here knows about routes, replicas or the gateway's policy: this is the bottom layer.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

pub mod client;
pub mod raw;
pub mod request;
pub mod response;

/// hyper's default limit on header fields in a head; the replica client uses the same.
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited on the wire (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (1xx, 204, 304, an answer to HEAD).
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (a response with neither length nor chunking).
    Close,
}

/// Write one chunk of a chunked body (`data` must not be empty: an empty chunk ends the body).
pub fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    debug_assert!(!data.is_empty());
    let mut hex = [0u8; 16];
    let mut at = hex.len();
    let mut n = data.len();
    loop {
        at -= 1;
        hex[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.reserve(hex.len() - at + data.len() + 4);
    out.put_slice(&hex[at..]);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk and the end of an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A `Content-Length` value as RFC 9110 allows it: digits only (no sign, no spaces), fitting in
/// a u64.
pub fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Write a `content-length` header line.
pub fn put_content_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(decimal(n, &mut [0; 20]));
    out.put_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `digits` (no formatting machinery on the hot path).
pub fn decimal(n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    let mut v = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &digits[at..]
}

/// The address as text, in `buf`: IPv4 by hand (every request formats its client's), IPv6
/// through `Display`.
pub fn put_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut digits = [0; 20];
                let d = decimal(u64::from(octet), &mut digits);
                buf[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            len = 64 - w.len();
        }
    }
    &buf[..len]
}

/// A socket address as `Display` writes it (`[v6]:port`), in `buf`.
pub fn put_addr(addr: std::net::SocketAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = write!(w, "{addr}");
    let len = 64 - w.len();
    &buf[..len]
}

thread_local! {
    /// The IMF-fixdate of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The current `Date` value (IMF-fixdate), formatted once a second per thread.
pub fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.put_slice(d.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_plain_digits_that_fit() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1,1",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn addresses_and_lengths_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(put_ip(ip, &mut [0; 64]), ip.to_string().as_bytes());
            let addr = std::net::SocketAddr::new(ip, 65535);
            assert_eq!(put_addr(addr, &mut [0; 64]), addr.to_string().as_bytes());
        }
        for n in [0, 9, 10, 1_234_567, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
            let mut out = bytes::BytesMut::new();
            put_content_length(&mut out, n);
            assert_eq!(&out[..], format!("content-length: {n}\r\n").as_bytes());
        }
    }

    #[test]
    fn chunks_are_framed_by_their_hex_length() {
        let mut out = BytesMut::new();
        put_chunk(&mut out, b"hello");
        put_chunk(&mut out, &[b'x'; 300]);
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
        assert!(out.ends_with(b"x\r\n"));
        assert_eq!(out.len(), 3 + 5 + 2 + 5 + 300 + 2);
    }
}
