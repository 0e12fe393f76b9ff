#![forbid(unsafe_code)]
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (kube, reqwest, our servers).
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("Error: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    datadog_cluster_agent::cli::run(datadog_cluster_agent::cli::Cli::parse())
}
