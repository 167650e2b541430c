//! Command line: `serve`, `check`, `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "scoregate",
    version,
    about = "TLS-terminating inference gateway for model scoring endpoints"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve scoring requests as the configuration file says.
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file (and its certificates) without binding anything.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo's sample model as a standalone scoring replica (`POST /score`,
    /// `GET /swagger.json`), e.g. behind `serve`; prints the bound address.
    SampleReplica {
        #[arg(long, default_value = "127.0.0.1:5001")]
        listen: SocketAddr,
        /// Name returned in the `x-scoregate-replica` header.
        #[arg(long)]
        name: Option<String>,
    },
    /// Run the embedded demo: self-signed TLS, a sample model, no configuration needed.
    Demo {
        /// TLS listener address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Admin (metrics) listener address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin_listen: SocketAddr,
        /// Service key (at least 16 characters); random when omitted.
        #[arg(long)]
        key: Option<String>,
        /// Folder for the generated CA, certificate and key.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}
