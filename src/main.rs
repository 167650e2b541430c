//! The `scoregate` binary: parse the command line, load and validate, dispatch. Exit codes:
//! 0 success, 64 bad configuration or arguments (nothing bound), 1 runtime failure.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use scoregate::cli::{CertCommand, Cli, Command};
use scoregate::{config, control, demo, server, shutdown, tls};

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
        Command::Attach(a) => {
            let env = a.common.env();
            let opts = control::commands::AttachOptions {
                compute: a.compute.clone(),
                purpose: a.purpose.clone(),
                load_balancer: a.load_balancer.clone(),
                subnet: a.subnet.clone(),
                tls: a.tls.options(),
                namespace: a.namespace.clone(),
                image: a.image.clone(),
                wait: a.wait.wait(),
                dry_run: a.dry_run,
            };
            return run_control(a.common.output, control::commands::attach(opts, &env));
        }
        Command::Update(u) => {
            let env = u.common.env();
            let opts = control::commands::UpdateOptions {
                compute: u.compute.clone(),
                purpose: u.purpose.clone(),
                load_balancer: u.load_balancer.clone(),
                subnet: u.subnet.clone(),
                tls: u.tls.options(),
                image: u.image.clone(),
                allow_public_plaintext: u.allow_public_plaintext,
                wait: u.wait.wait(),
            };
            return run_control(u.common.output, control::commands::update(opts, &env));
        }
        Command::Detach { compute, common } => {
            let env = common.env();
            return run_control(common.output, control::commands::detach(&compute, &env));
        }
        Command::Status { compute, common } => {
            let env = common.env();
            return run_control(common.output, control::commands::status(&compute, &env));
        }
        Command::Cert(c) => return cert(c),
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

fn cert(c: CertCommand) -> ExitCode {
    use control::cert;
    match c {
        CertCommand::Set {
            compute,
            cert_pem_file,
            key_pem_file,
            common,
        } => {
            let env = common.env();
            run_control(
                common.output,
                cert::set(&compute, &cert_pem_file, &key_pem_file, &env),
            )
        }
        CertCommand::Export {
            compute,
            dir,
            common,
        } => {
            let env = common.env();
            run_control(common.output, cert::export(&compute, &dir, &env))
        }
        CertCommand::Status { compute, common } => {
            let env = common.env();
            run_control(common.output, cert::status(&compute, &env))
        }
        CertCommand::Renew { compute, common } => {
            let env = common.env();
            run_control(common.output, cert::renew(&compute, &env))
        }
        CertCommand::Disable {
            compute,
            allow_public_plaintext,
            wait,
            common,
        } => {
            let env = common.env();
            run_control(
                common.output,
                cert::disable(&compute, allow_public_plaintext, wait.wait(), &env),
            )
        }
    }
}

/// Run one control command; its result on stdout in `format`, errors on stderr. Exit 64 for
/// bad options (nothing touched), 1 for refusals and failures.
fn run_control(
    format: control::output::Format,
    fut: impl std::future::Future<Output = Result<serde_json::Value, control::ControlError>>,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(v) => {
            print!("{}", control::output::render(&v, format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn bad_config(e: &config::ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(EX_CONFIG)
}

/// The tokio runtime: one worker per core (`TOKIO_WORKER_THREADS` to change it); with exactly
/// one worker the current-thread scheduler, which skips the work-stealing machinery a single
/// worker cannot use.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut b = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all().build().context("starting the tokio runtime")
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let app = server::App::build(&config).context("building the gateway")?;
    let listeners = server::Listeners::bind(&config.listen).await?;
    let a = listeners.addrs();
    tracing::info!(tls = ?a.tls, http = ?a.http, admin = ?a.admin, services = config.services.len(), "listening");
    server::run(app, listeners, shutdown::signal()).await;
    Ok(())
}
