//! The replica side of HTTP/1.1: request heads encoded for the wire, response heads parsed in
//! place (headers kept raw, hop-by-hop ones left out), response bodies decoded by their framing
//! (length, chunked with extensions and trailers, or until close). I/O stays with the caller
//! (`upstream::h1`): these work on the bytes it buffered.

use std::mem::MaybeUninit;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, header};

use super::raw::{self, RawHeaders, Role};
use super::{Framing, MAX_HEADERS, content_length, put_content_length};

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
const _: () = assert!(MAX_HEADERS <= 128, "Scan::hop has a bit per header");
/// Longest chunk-size line and total trailer section accepted in a chunked response.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// A response that breaks HTTP/1.1.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("cannot parse the response head: {0}")]
    Parse(#[source] httparse::Error),
    #[error("invalid header field in the response")]
    Header,
    #[error("invalid Content-Length in the response")]
    Length,
    #[error("invalid chunked encoding in the response body")]
    Chunk,
    #[error("101 Switching Protocols, which the gateway never asks for")]
    Upgrade,
    #[error("bytes after the end of the response")]
    Trailing,
}

/// Write a request head: the request line (`target` origin-form), `headers` except any
/// `Content-Length`/`Transfer-Encoding` (those come from `framing`: `Length(n)` or `Chunked`;
/// `None` writes neither), and the blank line.
pub fn put_request_head(
    out: &mut BytesMut,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: Framing,
) {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => put_content_length(out, n),
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    out.put_slice(b"\r\n");
}

/// A response head as parsed: hop-by-hop fields (and any the `Connection` header names) left
/// out of `headers`.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: RawHeaders,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Parse a complete response head at the front of `buf` (consuming it), skipping interim 1xx
/// responses. `None` until the head is complete. `method` is the request's (a HEAD's answer
/// has no body).
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ProtoError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ProtoError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ProtoError::Parse(e)),
        };
        let (code, minor) = (resp.code.unwrap_or(0), resp.version.unwrap_or(1));
        if (100..200).contains(&code) {
            buf.advance(len);
            if code == 101 {
                return Err(ProtoError::Upgrade);
            }
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| ProtoError::Header)?;
        let scan = Scan::of(resp.headers);
        let framing = scan.framing(status, method)?;
        let keep_alive = if minor >= 1 {
            !scan.close
        } else {
            scan.keep_alive && !scan.close
        };
        let base = buf.as_ptr() as usize;
        let spans = resp
            .headers
            .iter()
            .enumerate()
            .filter(|&(i, h)| scan.hop & (1 << i) == 0 && !scan.names(h.name))
            .map(|(_, h)| raw::span(base, h))
            .collect();
        let head = buf.split_to(len).freeze();
        return Ok(Some(ResponseHead {
            status,
            headers: RawHeaders::new(head, spans),
            framing,
            keep_alive,
        }));
    }
}

/// What a response head says about framing and the connection, from one pass over it.
struct Scan<'h> {
    /// The last `Transfer-Encoding` value.
    transfer_encoding: Option<&'h [u8]>,
    /// The `Content-Length` (every value and comma-separated part the same), or why not.
    length: Result<Option<u64>, ProtoError>,
    close: bool,
    keep_alive: bool,
    /// The `Connection` values, when they name headers beyond `close` and `keep-alive`.
    named: Vec<&'h [u8]>,
    /// Bit i: header i is hop-by-hop (`MAX_HEADERS` fit).
    hop: u128,
}

impl<'h> Scan<'h> {
    fn of(headers: &[httparse::Header<'h>]) -> Self {
        let mut s = Scan {
            transfer_encoding: None,
            length: Ok(None),
            close: false,
            keep_alive: false,
            named: Vec::new(),
            hop: 0,
        };
        for (i, h) in headers.iter().enumerate() {
            let name = h.name.as_bytes();
            let role = raw::role(name);
            if role == Role::Hop {
                s.hop |= 1 << i;
            }
            match role {
                Role::Length => s.add_length(h.value),
                Role::Hop if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    s.transfer_encoding = Some(h.value);
                }
                Role::Hop if name.eq_ignore_ascii_case(b"connection") => {
                    for token in h.value.split(|&c| c == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            s.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            s.keep_alive = true;
                        } else if !token.is_empty() {
                            s.named.push(token);
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }

    fn add_length(&mut self, value: &[u8]) {
        let Ok(known) = self.length else { return };
        let mut length = known;
        for part in value.split(|&c| c == b',') {
            match content_length(part.trim_ascii()) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => {
                    self.length = Err(ProtoError::Length);
                    return;
                }
            }
        }
        self.length = Ok(length);
    }

    /// Whether the `Connection` header names `name` (so it is hop-by-hop too).
    fn names(&self, name: &str) -> bool {
        self.named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// How the body is delimited (RFC 9112 §6.3).
    fn framing(&self, status: StatusCode, method: &Method) -> Result<Framing, ProtoError> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::None);
        }
        if let Some(te) = self.transfer_encoding {
            let last = te.rsplit(|&c| c == b',').next().unwrap_or(&[]);
            return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::Close
            });
        }
        match &self.length {
            Ok(length) => Ok(length.map_or(Framing::Close, Framing::Length)),
            Err(_) => Err(ProtoError::Length),
        }
    }
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes left (0: the body is over).
    Length(u64),
    /// Until the connection closes.
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    /// In the trailer section, this many bytes of it seen.
    Trailers(usize),
}

/// One step of decoding what is buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The body is over.
    End,
    /// More bytes are needed.
    More,
}

/// Decodes a response body from the bytes buffered for its connection.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::None => State::Length(0),
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    /// The body is over (nothing more to read for it).
    pub fn is_done(&self) -> bool {
        self.state == State::Length(0)
    }

    /// The body ends when the connection closes.
    pub fn until_close(&self) -> bool {
        self.state == State::Close
    }

    /// The bytes left, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Take what `buf` holds of the body, or say why not.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ProtoError> {
        loop {
            match self.state {
                State::Length(0) => return Ok(Step::End),
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.state = State::Length(n - take as u64);
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::More);
                    };
                    let digits = line[..].split(|&c| c == b';').next().unwrap_or(&[]);
                    let digits = digits.trim_ascii();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(ProtoError::Chunk);
                    }
                    let mut size = 0u64;
                    for &c in digits {
                        let d = (c as char).to_digit(16).ok_or(ProtoError::Chunk)?;
                        size = size * 16 + u64::from(d);
                    }
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::ChunkDataEnd => {
                    let Some(line) = take_line(buf, 2)? else {
                        return Ok(Step::More);
                    };
                    if !line.is_empty() {
                        return Err(ProtoError::Chunk);
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf, MAX_TRAILERS - seen)? else {
                        return Ok(Step::More);
                    };
                    if line.is_empty() {
                        self.state = State::Length(0);
                        return Ok(Step::End);
                    }
                    self.state = State::Trailers(seen + line.len() + 2);
                }
            }
        }
    }
}

/// Take one CRLF- (or LF-) terminated line off the front of `buf`, without its terminator.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ProtoError> {
    match buf.iter().position(|&c| c == b'\n') {
        Some(i) if i <= max => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        Some(_) => Err(ProtoError::Chunk),
        None if buf.len() > max => Err(ProtoError::Chunk),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, bool), ProtoError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::from(wire);
        let mut body = Vec::new();
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::End => return Ok((body, true)),
                Step::More => return Ok((body, false)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (body, end) = decode(
            Framing::Chunked,
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .expect("decodes");
        assert_eq!((body.as_slice(), end), (&b"hello, world"[..], true));
        assert!(matches!(
            decode(Framing::Chunked, b"zz\r\n"),
            Err(ProtoError::Chunk)
        ));
        let long = format!("{}\r\n", "1".repeat(MAX_CHUNK_LINE + 1));
        assert!(matches!(
            decode(Framing::Chunked, long.as_bytes()),
            Err(ProtoError::Chunk)
        ));
    }

    #[test]
    fn lengths_stop_at_their_end_and_partial_input_waits() {
        let (body, end) = decode(Framing::Length(3), b"abcdef").expect("decodes");
        assert_eq!((body.as_slice(), end), (&b"abc"[..], true));
        let (body, end) = decode(Framing::Length(3), b"ab").expect("decodes");
        assert_eq!((body.as_slice(), end), (&b"ab"[..], false));
        let (body, end) = decode(Framing::Chunked, b"5\r\nhel").expect("decodes");
        assert_eq!((body.as_slice(), end), (&b"hel"[..], false));
        assert!(Decoder::new(Framing::None).is_done());
    }

    #[test]
    fn response_heads_drop_hop_by_hop_and_named_fields() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nconnection: x-secret\r\nx-secret: 1\r\nx-a: 2\r\ncontent-length: 2, 2\r\n\r\nok"[..],
        );
        let head = parse_response_head(&mut buf, &Method::POST)
            .expect("parses")
            .expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        let names: Vec<_> = head.headers.iter().map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names, vec![b"x-a".to_vec(), b"content-length".to_vec()]);
        assert_eq!(&buf[..], b"ok");

        let mut head = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n"[..]);
        assert!(matches!(
            parse_response_head(&mut head, &Method::GET),
            Err(ProtoError::Length)
        ));
        let mut head = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let h = parse_response_head(&mut head, &Method::HEAD)
            .expect("parses")
            .expect("complete");
        assert_eq!((h.framing, h.keep_alive), (Framing::None, false));
    }

    #[test]
    fn request_heads_take_their_framing_from_the_body() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "999".parse().expect("v"));
        h.insert("x-a", "1".parse().expect("v"));
        let mut out = BytesMut::new();
        put_request_head(
            &mut out,
            &Method::POST,
            "/score?x=1",
            &h,
            Framing::Length(2),
        );
        assert_eq!(
            &out[..],
            b"POST /score?x=1 HTTP/1.1\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n"
        );
    }
}
