//! The command line: one file per command.

mod certs;
mod config;
mod explain;
mod flare;
mod health;
mod local;
mod metamap;
mod start;
mod status;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "datadog-cluster-agent",
    version = crate::version::VERSION,
    about = "Datadog Cluster Agent: external metrics for HPAs, cluster-level tags for node agents, Kubernetes events"
)]
pub struct Cli {
    /// Path to the folder holding datadog-cluster.yaml, or to the file itself.
    #[arg(short = 'c', long = "cfgpath", global = true, value_name = "PATH")]
    pub cfgpath: Option<PathBuf>,
    /// Disable colours in the output.
    #[arg(short = 'n', long = "no-color", global = true)]
    pub no_color: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the cluster agent (the default command).
    Start,
    /// Print the version, commit, build date and compiler.
    Version,
    /// Print the effective configuration (file + environment), secrets scrubbed, as YAML.
    Config(config::ConfigArgs),
    /// Print the running agent's pod -> services map (every node, or one), as the Go DCA does.
    Metamap(metamap::MetamapArgs),
    /// Print the running agent's component health (PASS or FAIL, and why); exit 1 on FAIL.
    Health(health::HealthArgs),
    /// Print the running agent's status: leader election, node-agent API, external metrics (each with its value, age and error) and the Datadog API.
    Status(status::StatusArgs),
    /// Explain what an HPA's External metrics get from this agent, and why (ours).
    Explain(explain::ExplainArgs),
    /// Build a scrubbed archive for Datadog support (status, health, logs, config, telemetry) and send it with --send.
    Flare(flare::FlareArgs),
    /// Make the external metrics server's CA and serving certificate (no openssl needed).
    Certs(certs::CertsArgs),
}

/// Runs the parsed command. Errors are printed as one line, never as a panic.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Start) {
        Command::Start => start::run(cli.cfgpath.as_deref(), !cli.no_color),
        Command::Version => version::run(),
        Command::Config(args) => config::run(cli.cfgpath.as_deref(), &args),
        Command::Metamap(args) => metamap::run(cli.cfgpath.as_deref(), &args),
        Command::Health(args) => health::run(cli.cfgpath.as_deref(), &args, !cli.no_color),
        Command::Status(args) => status::run(cli.cfgpath.as_deref(), &args, !cli.no_color),
        Command::Explain(args) => explain::run(cli.cfgpath.as_deref(), &args),
        Command::Flare(args) => flare::run(cli.cfgpath.as_deref(), &args),
        Command::Certs(args) => certs::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let cause: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("Error: {}", crate::error::chain_line(cause));
            ExitCode::FAILURE
        }
    }
}
