//! The `scoregate` binary: parse the command line, load and validate, dispatch. Exit codes:
//! 0 success (and `--help`, `--version`); 64 bad command line, options or configuration (nothing
//! bound, nothing touched); 1 refused or failed at run time; 130 interrupted (Ctrl-C) while a
//! control command waited.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use scoregate::busy_poll::BusyPoll;
use scoregate::cli::{CertCommand, Cli, Command, ControlArgs, LogFormat};
use scoregate::{config, control, demo, shutdown, tls};
use tokio::runtime::Runtime;

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    init_logging(cli.log_format);
    tls::install_default_provider();

    let result = match cli.command {
        Command::Attach(a) => {
            let opts = control::commands::AttachOptions {
                compute: a.compute,
                settings: a.settings.settings(),
                namespace: a.namespace,
                allow_public_plaintext: a.allow_public_plaintext,
                wait: a.wait.wait(),
                dry_run: a.dry_run,
            };
            // A dry run prints manifests: YAML unless asked otherwise.
            let default = if a.dry_run {
                control::output::Format::Yaml
            } else {
                control::output::Format::Table
            };
            return run_control(&a.common, default, async |env| {
                control::commands::attach(opts, &env).await
            });
        }
        Command::Update(u) => {
            let opts = control::commands::UpdateOptions {
                compute: u.compute,
                settings: u.settings.settings(),
                allow_public_plaintext: u.allow_public_plaintext,
                yes: u.yes,
                wait: u.wait.wait(),
            };
            return run_control(&u.common, control::output::Format::Table, async |env| {
                control::commands::update(opts, &env).await
            });
        }
        Command::Detach { compute, common } => {
            return run_control(&common, control::output::Format::Table, async |env| {
                control::commands::detach(&compute, &env).await
            });
        }
        Command::Status { compute, common } => {
            return run_control(&common, control::output::Format::Table, async |env| {
                control::commands::status(&compute, &env).await
            });
        }
        Command::Cert(c) => return cert(c),
        Command::Check { config: path } => {
            let c = match load(&path) {
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
            let c = match load(&path) {
                Ok(c) => c,
                Err(e) => return bad_config(&e),
            };
            runtime_with(c.runtime.busy_poll).and_then(|(rt, bp)| rt.block_on(serve(c, path, bp)))
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
                Ok(Err(e @ demo::DemoError::DirInUse(_))) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
                Ok(other) => other.context("demo failed"),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn cert(c: CertCommand) -> ExitCode {
    use control::cert;
    match c {
        CertCommand::Set {
            compute,
            cert_pem_file,
            key_pem_file,
            common,
        } => run_control(&common, control::output::Format::Table, async |env| {
            cert::set(&compute, &cert_pem_file, &key_pem_file, &env).await
        }),
        CertCommand::Export {
            compute,
            dir,
            force,
            common,
        } => run_control(&common, control::output::Format::Table, async |env| {
            cert::export(&compute, &dir, force, &env).await
        }),
        CertCommand::Status { compute, common } => {
            run_control(&common, control::output::Format::Table, async |env| {
                cert::status(&compute, &env).await
            })
        }
        CertCommand::Renew { compute, common } => {
            run_control(&common, control::output::Format::Table, async |env| {
                cert::renew(&compute, &env).await
            })
        }
        CertCommand::Disable {
            compute,
            allow_public_plaintext,
            yes,
            wait,
            common,
        } => run_control(&common, control::output::Format::Table, async |env| {
            cert::disable(&compute, allow_public_plaintext, yes, wait.wait(), &env).await
        }),
    }
}

/// Run one control command with the environment its flags describe; its result on stdout in
/// `--output`'s format, errors on stderr. Exit 64 for bad options (nothing touched), 1 for
/// refusals and failures.
fn run_control(
    common: &ControlArgs,
    default: control::output::Format,
    command: impl AsyncFnOnce(control::Env) -> Result<serde_json::Value, control::ControlError>,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command(common.env())) {
        Ok(v) => {
            print!(
                "{}",
                control::output::render(&v, common.output.unwrap_or(default))
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", scoregate::report::ErrorChain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs on stderr at `RUST_LOG` (default `info`): text, coloured only when stderr is a terminal
/// (and `NO_COLOR` is unset), or JSON, one object per event with its fields at the top level.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns on every client that sends an IP address as SNI: not actionable.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// `--help` and `--version` exit 0; any other command-line error, like a bad option value in
/// the configuration, exits 64 (EX_USAGE) with clap's message: nothing was done.
fn usage(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(EX_CONFIG),
    }
}

/// An error with its causes, each once.
fn chain(e: &anyhow::Error) -> scoregate::report::ErrorChain<'_> {
    scoregate::report::ErrorChain(e.as_ref())
}

fn bad_config(e: &config::ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(EX_CONFIG)
}

/// The tokio runtime: one worker per core (`TOKIO_WORKER_THREADS` to change it); with exactly
/// one worker the current-thread scheduler, which skips the work-stealing machinery a single
/// worker cannot use.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(std::time::Duration::ZERO).map(|(rt, _)| rt)
}

fn one_worker() -> bool {
    std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1")
}

/// The configuration file, validated, and checked against the runtime this process will start.
fn load(path: &std::path::Path) -> Result<config::Config, config::ConfigErrors> {
    let c = config::load(path)?;
    if c.runtime.busy_poll.is_zero() || one_worker() {
        return Ok(c);
    }
    Err(config::ConfigErrors::one(
        "runtime.busy_poll_us",
        "busy polling keeps the one worker awake; run the one-worker runtime \
         (TOKIO_WORKER_THREADS=1: a process per core, or a one-vCPU pod) or remove it",
    ))
}

/// [`runtime`], busy polling for `busy_poll` after work when it is not zero (one worker only,
/// checked with the configuration).
fn runtime_with(
    busy_poll: std::time::Duration,
) -> anyhow::Result<(Runtime, Option<Arc<BusyPoll>>)> {
    let mut b = if one_worker() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let bp = if busy_poll.is_zero() {
        None
    } else {
        Some(BusyPoll::new(busy_poll).context("busy polling")?)
    };
    if let Some(bp) = &bp {
        bp.install(&mut b);
    }
    let rt = b
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if let Some(bp) = &bp {
        rt.spawn(bp.nudger());
    }
    Ok((rt, bp))
}

async fn serve(
    config: config::Config,
    path: std::path::PathBuf,
    busy_poll: Option<Arc<BusyPoll>>,
) -> anyhow::Result<()> {
    let mut app = scoregate::App::build(&config)
        .context("building the gateway")?
        .reload_from(path);
    if let Some(bp) = &busy_poll {
        app = app.busy_poll(bp).context("busy polling")?;
        tracing::info!(
            budget_us = config.runtime.busy_poll.as_micros() as u64,
            "busy polling on"
        );
    }
    let listeners = scoregate::Listeners::bind(&config.listen).await?;
    let a = listeners.addrs();
    tracing::info!(tls = ?a.tls, http = ?a.http, admin = ?a.admin, peer = ?a.peer, services = config.services.len(), "listening");
    scoregate::run(app, listeners, shutdown::signal()).await;
    Ok(())
}
