//! Command line: `serve`, `check`, `demo`, `sample-replica`, and the control commands
//! `attach`, `detach`, `update`, `status`, `cert …`.

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
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json` (one object per
    /// event, fields included, for log pipelines).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SCOREGATE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    /// Attach a Kubernetes cluster: check it, install the gateway behind a load balancer, wait,
    /// print the scoring endpoint.
    Attach(AttachArgs),
    /// Remove what attach installed (never the cluster or the scoring workloads).
    Detach {
        compute: String,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// Change purpose, load balancer or TLS mode in place.
    Update(UpdateArgs),
    /// Attachment, purpose, load balancer address, TLS mode, replicas.
    Status {
        compute: String,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// The TLS certificate's lifecycle.
    #[command(subcommand)]
    Cert(CertCommand),
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

/// Where the workspace and the cluster are, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// kubeconfig of the cluster (default: the workspace's record, else $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
    /// Workspace registry file (default: $SCOREGATE_WORKSPACE, else ~/.config/scoregate/workspace.json).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// table (the default), json or yaml (the default of `attach --dry-run`).
    #[arg(long, short, value_enum)]
    pub output: Option<crate::control::output::Format>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return once the objects are applied, without waiting for replicas and the address.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for ready replicas and the load balancer address.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Your certificate chain (PEM, leaf first); with --ssl-key-pem-file and --ssl-cname.
    #[arg(long)]
    pub ssl_cert_pem_file: Option<PathBuf>,
    /// Its private key (PEM, not passphrase-protected).
    #[arg(long)]
    pub ssl_key_pem_file: Option<PathBuf>,
    /// The name clients use; the certificate must cover it.
    #[arg(long)]
    pub ssl_cname: Option<String>,
    /// ACME certificate for `<label><6 characters>.<region>.cloudapp.azure.com`.
    #[arg(long)]
    pub leaf_domain_label: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// ACME directory (default: Let's Encrypt).
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// No TLS (refused behind a PublicIp load balancer unless --allow-public-plaintext).
    #[arg(long)]
    pub no_ssl: bool,
}

/// What attach sets and update changes.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// FastProd (3 gateway replicas, needs 12 vCPUs; attach's default) or DevTest (1 replica).
    #[arg(long)]
    pub purpose: Option<String>,
    /// PublicIp (attach's default) or InternalLoadBalancer.
    #[arg(long)]
    pub load_balancer: Option<String>,
    /// Subnet of an internal load balancer (default aks-subnet).
    #[arg(long)]
    pub subnet: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Gateway container image.
    #[arg(long)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AttachArgs {
    /// Compute name: 3-24 letters, digits or '-', starting with a letter.
    pub compute: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Namespace for the gateway (default scoregate).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Allow --no-ssl behind a PublicIp load balancer (scoring keys cross the network in clear).
    #[arg(long)]
    pub allow_public_plaintext: bool,
    /// Check the options and print the objects (`-o yaml`) without touching the cluster; the
    /// TLS Secret is left out (create it with `scoregate cert set` or kubectl).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub common: ControlArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    pub compute: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Allow --no-ssl behind a PublicIp load balancer.
    #[arg(long)]
    pub allow_public_plaintext: bool,
    /// Delete the TLS Secret (certificate and key) without asking when the change drops it.
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub common: ControlArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CertCommand {
    /// Validate a certificate pair against the cname, then write the TLS Secret.
    Set {
        compute: String,
        #[arg(long)]
        cert_pem_file: PathBuf,
        #[arg(long)]
        key_pem_file: PathBuf,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// Write the Secret's cert.pem and key.pem (mode 0600) into a folder.
    Export {
        compute: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite cert.pem and key.pem when they exist.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// Subject, names, issuer, expiry, and what each gateway replica serves now.
    Status {
        compute: String,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// Force an ACME renewal (leaf domain label mode).
    Renew {
        compute: String,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// Turn TLS off (refused behind a PublicIp load balancer unless --allow-public-plaintext).
    Disable {
        compute: String,
        #[arg(long)]
        allow_public_plaintext: bool,
        /// Delete the TLS Secret (certificate and key) without asking.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        common: ControlArgs,
    },
}

impl SettingsArgs {
    pub fn settings(&self) -> crate::control::commands::Settings {
        let t = &self.tls;
        crate::control::commands::Settings {
            purpose: self.purpose.clone(),
            load_balancer: self.load_balancer.clone(),
            subnet: self.subnet.clone(),
            tls: crate::control::TlsOptions {
                cert_file: t.ssl_cert_pem_file.clone(),
                key_file: t.ssl_key_pem_file.clone(),
                cname: t.ssl_cname.clone(),
                leaf_domain_label: t.leaf_domain_label.clone(),
                region: t.region.clone(),
                acme_directory: t.acme_directory.clone(),
                no_ssl: t.no_ssl,
            },
            image: self.image.clone(),
        }
    }
}

impl WaitArgs {
    pub fn wait(&self) -> crate::control::Wait {
        crate::control::Wait {
            enabled: !self.no_wait,
            timeout: std::time::Duration::from_secs(self.timeout),
            poll: std::time::Duration::from_secs(1),
        }
    }
}

impl ControlArgs {
    pub fn env(&self) -> crate::control::Env {
        crate::control::Env {
            workspace: self
                .workspace
                .clone()
                .unwrap_or_else(crate::control::registry::default_path),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            progress: !self.quiet,
            supported_versions: crate::control::SUPPORTED_VERSIONS.to_vec(),
        }
    }
}
