//! The `scoregate` binary: parse the command line, load and validate, dispatch. Exit codes:
//! 0 success, 64 bad configuration or arguments (nothing bound), 1 runtime failure.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use scoregate::cli::{Cli, Command};
use scoregate::{config, demo, server, shutdown, tls};

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rustls warns on every client that sends an IP address as SNI: not actionable.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    tls::install_default_provider();

    let result = match cli.command {
        Command::Check { config: path } => {
            let c = match config::load(&path) {
                Ok(c) => c,
                Err(e) => return bad_config(&e),
            };
            println!(
                "{}: valid ({} service{}, {} certificate{})",
                path.display(),
                c.services.len(),
                if c.services.len() == 1 { "" } else { "s" },
                c.tls.slots.len(),
                if c.tls.slots.len() == 1 { "" } else { "s" },
            );
            Ok(())
        }
        Command::Serve { config: path } => {
            // Parsed and validated in full before any port is bound.
            let c = match config::load(&path) {
                Ok(c) => c,
                Err(e) => return bad_config(&e),
            };
            runtime().and_then(|rt| rt.block_on(serve(c)))
        }
        Command::SampleReplica { listen, name } => runtime().and_then(|rt| {
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("--listen: cannot listen on {listen}"))?;
                println!("listening on {}", l.local_addr()?);
                demo::model::serve_named(l, name, shutdown::signal()).await;
                Ok(())
            })
        }),
        Command::Demo {
            listen,
            admin_listen,
            key,
            dir,
        } => {
            let opts = demo::DemoOptions {
                listen,
                admin_listen,
                key,
                dir,
            };
            match runtime().map(|rt| rt.block_on(demo::run(opts, shutdown::signal()))) {
                Ok(Err(demo::DemoError::Config(e))) => return bad_config(&e),
                Ok(other) => other.context("demo failed"),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bad_config(e: &config::ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(EX_CONFIG)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let app = server::App::build(&config).context("building the gateway")?;
    let listeners = server::Listeners::bind(&config.listen).await?;
    let a = listeners.addrs();
    tracing::info!(tls = ?a.tls, http = ?a.http, admin = ?a.admin, services = config.services.len(), "listening");
    server::run(app, listeners, shutdown::signal()).await;
    Ok(())
}
