//! `scoregate demo`: the whole product on a laptop with no file. A development CA and a
//! localhost certificate are written to a folder (printed, so curl can trust `ca.pem`), two
//! in-process replicas of a small real model ([`model`]) stand behind the gateway, and a
//! ready-to-paste `curl` line is printed.

pub mod chat;
pub mod grpc;
pub mod model;
pub mod v2;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;

use crate::app::{self, App};
use crate::config::{self, ConfigErrors};
use crate::server::{Listeners, ServerError};
use crate::tls::{SelfSigned, TlsError};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "iris";
const REPLICAS: usize = 2;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The service key; a random one when `None`.
    pub key: Option<String>,
    /// Where the certificates go; `<tmp>/scoregate-demo` when `None`.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("binding a demo replica on 127.0.0.1: {0}")]
    Replica(#[source] std::io::Error),
    /// Another demo serves the certificates in this folder: they are never rewritten under it.
    #[error(
        "{} is in use by another running demo (it serves the certificate there); stop that one, or pass --dir with another folder",
        .0.display()
    )]
    DirInUse(PathBuf),
}

/// A random 32-character key (Azure ML's key length).
pub fn random_key() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), DemoError> {
    crate::fsutil::write_atomic(
        path,
        contents.as_bytes(),
        if private { 0o600 } else { 0o644 },
    )
    .map_err(|source| DemoError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// An exclusive lock on `dir/.lock`, released when the returned file is dropped (or the process
/// ends, however it ends).
fn lock_dir(dir: &Path) -> Result<std::fs::File, DemoError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DemoError::Write {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DemoError::DirInUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(DemoError::Write { path, source }),
    }
}

fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Validate the options, write the certificates, start replicas and the gateway, print how to
/// call it, and serve until `shutdown` resolves. Errors before serving are config errors (64).
pub async fn run(opts: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let key = opts.key.clone().unwrap_or_else(random_key);
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("scoregate-demo"));
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Write {
        path: dir.clone(),
        source,
    })?;
    // Held for as long as this demo runs: a second demo on the same folder stops here, before
    // it writes anything, instead of replacing the files the first one watches and serves.
    let _lock = lock_dir(&dir)?;
    let material = SelfSigned::generate(&["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    let (ca, cert, keyfile) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    write_file(&ca, &material.ca_pem, false)?;
    write_file(&cert, &material.cert_pem, false)?;
    write_file(&keyfile, &material.key_pem, true)?;

    let mut replica_listeners = Vec::new();
    for _ in 0..REPLICAS {
        replica_listeners.push(
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(DemoError::Replica)?,
        );
    }
    let replicas: Vec<String> = replica_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| toml_str(&a.to_string()))
        .collect();
    // The demo goes through the same parser and validation as `serve --config`.
    let text = format!(
        r#"
[listen]
tls = {listen}
admin = {admin}

[[tls.certificates]]
cert = {cert}
key = {key_file}

[[services]]
name = "{SERVICE}"
primary_key = {key}
replica_max_concurrent_requests = 32

[[services.versions]]
name = "blue"
protocol = "h2c"
replicas = [{replicas}]
"#,
        listen = toml_str(&opts.listen.to_string()),
        admin = toml_str(&opts.admin_listen.to_string()),
        cert = toml_str(&cert.display().to_string()),
        key_file = toml_str(&keyfile.display().to_string()),
        key = toml_str(&key),
        replicas = replicas.join(", "),
    );
    let config = config::from_toml(&text, &dir).map_err(|mut e| {
        // Name the flag the user passed, not the generated config's field.
        for f in &mut e.0 {
            if f.field.ends_with("primary_key") {
                f.field = "--key".into();
            }
        }
        e
    })?;
    let app = App::build(&config)?;
    let listeners = Listeners::bind(&config.listen).await?;
    let bound = listeners.addrs();

    let stop = CancellationToken::new();
    for l in replica_listeners {
        let rx = stop.clone();
        tokio::spawn(model::serve(l, rx.cancelled_owned()));
    }
    let port = bound.tls.map(|a| a.port()).unwrap_or(opts.listen.port());
    let url = format!("https://localhost:{port}/api/v1/service/{SERVICE}/score");
    let admin = bound.admin.map(|a| a.to_string()).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "scoregate demo: service {SERVICE:?} with {REPLICAS} replicas of a logistic-regression iris model\n\
         \n  scoring URL   {url}\
         \n  swagger       https://localhost:{port}/api/v1/service/{SERVICE}/swagger.json\
         \n  key           {key}\
         \n  CA to trust   {ca}\
         \n  admin         http://{admin}/metrics  /readyz  /config  /certificates\
         \n  v2 (OIP)      https://localhost:{port}/v2/models/{SERVICE}/infer\
         \n  gRPC (OIP)    localhost:{port}, metadata scoregate-service: {SERVICE}, authorization: Bearer <key>\
         \n  OpenAI chat   https://localhost:{port}/v1/chat/completions, model {SERVICE:?} (streams)\
         \n\ntry:\n  curl --cacert {ca} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
         -d '{{\"data\": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}' {url}\
         \n  curl --cacert {ca} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
         -d '{{\"inputs\": [{{\"name\": \"measurements\", \"shape\": [2, 4], \"datatype\": \"FP32\", \
         \"data\": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}}]}}' https://localhost:{port}/v2/models/{SERVICE}/infer\
         \n  curl -N --cacert {ca} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
         -d '{{\"model\": \"{SERVICE}\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"6.7 3.0 5.2 2.3\"}}]}}' \
         https://localhost:{port}/v1/chat/completions\n",
        ca = ca.display(),
    );
    let _ = out.flush();
    drop(out);

    app::run(app, listeners, shutdown).await;
    stop.cancel();
    Ok(())
}
