use clap::Parser;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KODEV_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = kodev::cli::Cli::parse();
    std::process::exit(kodev::cli::run(cli));
}
