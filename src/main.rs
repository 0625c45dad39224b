use std::io::IsTerminal;

use clap::Parser;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KODEV_LOG"))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in logs piped to a file or a CI job.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .init();
    // Before the flags are read: its SKAFFOLD_ variables set flags, as in Skaffold.
    if let Err(e) = kodev::config::envfile::load_into_process() {
        eprintln!("kodev: {e}");
        std::process::exit(e.exit_code());
    }
    kodev::config::envfile::forget_empty_flag_variables();
    let cli = kodev::cli::Cli::parse();
    std::process::exit(kodev::cli::run(cli));
}
