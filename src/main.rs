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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tls::install_default_provider();

    let config = match &cli.command {
        Command::Serve { config } | Command::Check { config } => match config::load(config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
        Command::Demo { .. } | Command::SampleReplica { .. } => None,
    };
    let result = match (cli.command, config) {
        (Command::Check { config: path }, Some(c)) => {
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
        (Command::Serve { .. }, Some(c)) => runtime().and_then(|rt| rt.block_on(serve(c))),
        (Command::SampleReplica { listen, name }, _) => runtime().and_then(|rt| {
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("--listen: cannot listen on {listen}"))?;
                println!("listening on {}", l.local_addr()?);
                demo::model::serve_named(l, name, shutdown::signal()).await;
                Ok(())
            })
        }),
        (
            Command::Demo {
                listen,
                admin_listen,
                key,
                dir,
            },
            _,
        ) => runtime().and_then(|rt| {
            let opts = demo::DemoOptions {
                listen,
                admin_listen,
                key,
                dir,
            };
            match rt.block_on(demo::run(opts, shutdown::signal())) {
                Err(demo::DemoError::Config(e)) => {
                    eprintln!("{e}");
                    std::process::exit(i32::from(EX_CONFIG));
                }
                other => other.context("demo failed"),
            }
        }),
        _ => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
