use anyhow::Context;
use livegate::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loaded = match Config::load() {
        Ok(loaded) => loaded,
        Err(livegate::config::ConfigError::Flags(err)) => err.exit(),
        Err(err) => {
            eprintln!("livegate: {err}");
            std::process::exit(2);
        }
    };
    if loaded.check_only {
        println!("{}", loaded.config);
        return Ok(());
    }
    init_tracing(loaded.config.log_format);
    livegate::run(loaded.config, shutdown_signal()).await.context("livegate stopped with an error")
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,webrtc=warn,rtc=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Completes on SIGTERM (Kubernetes, systemd) or ctrl-c.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
