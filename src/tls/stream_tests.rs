//! The unbuffered server stream against rustls's client as tokio-rustls drives it (the TLS
//! client the gateway's own tests, reqwest and the benches use), over real TCP sockets.

use std::sync::Arc;
use std::task::Poll;

use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

use super::{TlsStream, accept};
use crate::tls::{CertHandle, CertStore, SelfSigned, server_config};

struct Bed {
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    client: Arc<ClientConfig>,
}

fn bed_with(tls12_only: bool, alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    crate::tls::install_default_provider();
    let dev = SelfSigned::generate(&["localhost".to_string()]).expect("generate");
    let loaded = dev.certified_key().expect("load");
    let store = CertStore::new([&loaded]).expect("store");
    let server = server_config(CertHandle::new(store), true, None).expect("server config");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(dev.ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let builder = if tls12_only {
        ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        ClientConfig::builder()
    };
    let mut client = builder.with_root_certificates(roots).with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (server, Arc::new(client))
}

async fn bed(tls12_only: bool, alpn: &[&[u8]]) -> Bed {
    let (server, client) = bed_with(tls12_only, alpn);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Bed {
        listener,
        server,
        client,
    }
}

impl Bed {
    /// One connection: the server's accept and the client's connect, both finished.
    async fn pair(
        &self,
    ) -> (
        std::io::Result<TlsStream>,
        std::io::Result<ClientStream<TcpStream>>,
    ) {
        let addr = self.listener.local_addr().expect("addr");
        let connector = TlsConnector::from(self.client.clone());
        let server = async {
            let (tcp, _) = self.listener.accept().await.expect("accept");
            accept(tcp, self.server.clone()).await
        };
        let client = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            connector.connect(name, tcp).await
        };
        tokio::join!(server, client)
    }
}

/// Poll one read without waiting: `None` when it would wait.
fn read_now(s: &mut TlsStream) -> Option<std::io::Result<Vec<u8>>> {
    let mut room = [0u8; 256];
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut rb = ReadBuf::new(&mut room);
    match std::pin::Pin::new(s).poll_read(&mut cx, &mut rb) {
        Poll::Ready(r) => Some(r.map(|()| rb.filled().to_vec())),
        Poll::Pending => None,
    }
}

#[tokio::test]
async fn a_request_and_answer_then_idle_holds_no_buffer() {
    let b = bed(false, &[b"http/1.1"]).await;
    let (server, client) = b.pair().await;
    let (mut server, mut client) = (server.expect("server"), client.expect("client"));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    for round in 0..3 {
        let req = format!("POST /score {round}");
        client.write_all(req.as_bytes()).await.expect("send");
        let mut got = vec![0u8; req.len()];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(got, req.as_bytes());
        server.write_all(b"answer").await.expect("answer");
        server.flush().await.expect("flush");
        let mut ans = [0u8; 6];
        client.read_exact(&mut ans).await.expect("client read");
        assert_eq!(&ans, b"answer");
        // Waiting for the next request: nothing buffered, nothing allocated.
        assert!(read_now(&mut server).is_none(), "nothing to read yet");
        assert_eq!(server.buffered_capacity(), 0, "{server:?}");
    }
    // The client's close_notify reads as the end of the stream.
    client.shutdown().await.expect("client close");
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.expect("clean end");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_megabyte_each_way_in_small_reads_and_large_writes() {
    let b = bed(false, &[]).await;
    let (server, client) = b.pair().await;
    let (mut server, client) = (server.expect("server"), client.expect("client"));
    let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let (mut cr, mut cw) = tokio::io::split(client);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        cw.write_all(&sent).await.expect("client write");
        cw.flush().await.expect("client flush");
        cw
    });
    let reader = tokio::spawn(async move {
        let mut back = vec![0u8; 1_048_576];
        cr.read_exact(&mut back).await.expect("client read");
        back
    });
    // The server echoes what it reads, reading 700 bytes at a time (records are 16 KiB: the
    // rest of each waits in the stream) and writing in bursts of up to 200 KiB.
    let mut echoed = 0;
    let mut pending = Vec::new();
    while echoed < data.len() {
        let mut chunk = [0u8; 700];
        let n = server.read(&mut chunk).await.expect("server read");
        assert!(n > 0, "early end after {echoed}");
        pending.extend_from_slice(&chunk[..n]);
        if pending.len() >= 200 * 1024 || echoed + pending.len() == data.len() {
            server.write_all(&pending).await.expect("server write");
            echoed += pending.len();
            pending.clear();
        }
    }
    server.flush().await.expect("flush");
    let back = reader.await.expect("reader");
    assert!(back == data, "the echo differs from what was sent");
    drop(writer.await.expect("writer"));
}

#[tokio::test]
async fn a_client_key_update_is_answered_before_the_next_answer() {
    let b = bed(false, &[]).await;
    let (server, client) = b.pair().await;
    let (mut server, mut client) = (server.expect("server"), client.expect("client"));
    for round in 0..3u8 {
        // The client's `key_update` asks the server to update its keys too: the server's next
        // records are only readable if its own `key_update` went out before them.
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(&[round; 100]).await.expect("send");
        let mut got = [0u8; 100];
        server.read_exact(&mut got).await.expect("server read");
        assert_eq!(got, [round; 100]);
        server.write_all(&[round + 10; 50]).await.expect("answer");
        server.flush().await.expect("flush");
        let mut ans = [0u8; 50];
        client.read_exact(&mut ans).await.expect("client read");
        assert_eq!(ans, [round + 10; 50]);
    }
}

#[tokio::test]
async fn shutdown_sends_close_notify() {
    let b = bed(false, &[]).await;
    let (server, client) = b.pair().await;
    let (mut server, mut client) = (server.expect("server"), client.expect("client"));
    server.write_all(b"bye").await.expect("write");
    server.shutdown().await.expect("shutdown");
    let mut all = Vec::new();
    // tokio-rustls reads a close without close_notify as an UnexpectedEof error.
    client.read_to_end(&mut all).await.expect("clean close");
    assert_eq!(all, b"bye");
    // The control: the same close without close_notify is an error to the client.
    let (server, client) = b.pair().await;
    let (server, mut client) = (server.expect("server"), client.expect("client"));
    drop(server);
    let err = client
        .read_to_end(&mut all)
        .await
        .expect_err("no close_notify");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn a_tcp_close_without_close_notify_is_an_unexpected_eof() {
    let b = bed(false, &[]).await;
    // At a record boundary and inside a record (the first 3 bytes of a header), then a FIN (a
    // dropped socket would send a reset, as the server's session tickets are still unread in
    // it): an error, as rustls's own reader says, then the end.
    for tail in [&[][..], &[23, 3, 3][..]] {
        let (server, client) = b.pair().await;
        let (mut server, client) = (server.expect("server"), client.expect("client"));
        let (mut tcp, _) = client.into_inner();
        tcp.write_all(tail).await.expect("partial record");
        tcp.shutdown().await.expect("fin");
        let mut rest = Vec::new();
        let err = server
            .read_to_end(&mut rest)
            .await
            .expect_err("no close_notify");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        assert_eq!(server.read(&mut [0u8; 8]).await.expect("then the end"), 0);
    }
}

#[tokio::test]
async fn a_failed_handshake_sends_its_alert() {
    // The client offers only a protocol the server does not speak: the server refuses with
    // `no_application_protocol`, and the client reads that alert (not a bare close).
    let b = bed(false, &[b"not-http"]).await;
    let (server, client) = b.pair().await;
    let server_err = server.expect_err("refused");
    assert_eq!(server_err.kind(), std::io::ErrorKind::InvalidData);
    let client_err = client.expect_err("refused").to_string();
    assert!(
        client_err.contains("NoApplicationProtocol"),
        "the client saw {client_err:?}"
    );
}

#[tokio::test]
async fn tls12_and_tls13_resumption_work() {
    let b = bed(true, &[]).await;
    let (server, client) = b.pair().await;
    let (mut server, mut client) = (server.expect("tls12 server"), client.expect("tls12 client"));
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    client.write_all(b"twelve").await.expect("send");
    let mut got = [0u8; 6];
    server.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"twelve");

    // TLS 1.3: the tickets the server sends after the handshake let the next connection resume.
    let b = bed(false, &[]).await;
    for n in 0..2 {
        let (server, client) = b.pair().await;
        let (mut server, mut client) = (server.expect("server"), client.expect("client"));
        client.write_all(b"ping").await.expect("send");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.expect("read");
        server.write_all(b"pong").await.expect("answer");
        server.flush().await.expect("flush");
        client.read_exact(&mut got).await.expect("client read");
        let kind = client.get_ref().1.handshake_kind();
        let want = if n == 0 {
            HandshakeKind::Full
        } else {
            HandshakeKind::Resumed
        };
        assert_eq!(kind, Some(want), "connection {n}");
    }
}
