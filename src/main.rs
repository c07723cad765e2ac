use anyhow::Context;
use livegate::config::{Config, LogFormat};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// With glibc's allocator RSS grew by ~0.4 MB per WebRTC viewer (webrtc-rs's per-peer driver
/// allocates zeroed ~100 KB receive buffers, and glibc zeroes a reused chunk by writing to it).
/// jemalloc measured: 200 viewers on a fresh gateway 112 MB instead of 132, the overload peak of
/// a whole `make bench` run 138 MB instead of 145–151 (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loaded = match Config::load() {
        Ok(loaded) => loaded,
        Err(livegate::config::ConfigError::Flags(err)) if !err.use_stderr() => err.exit(),
        // Rejected values are quoted back: mask any password in them.
        Err(err) => {
            eprintln!("livegate: {}", livegate::redact::Secrets::global().scrub(&err.to_string()).trim_end());
            std::process::exit(2);
        }
    };
    if loaded.check_only {
        println!("{}", loaded.config);
        return Ok(());
    }
    init_tracing(loaded.config.log_format);
    // Handled from now on: a signal that came before the first poll of a lazy handler would kill
    // the process instead of stopping it cleanly.
    let term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    livegate::run(loaded.config, shutdown_signal(term, interrupt)).await.context("livegate stopped with an error")
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,webrtc=warn,rtc=warn"));
    // Every line passes through the scrubber: no secret reaches the log, whoever formatted it.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(livegate::redact::ScrubbingStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Completes on SIGTERM (Kubernetes, systemd) or SIGINT (ctrl-c).
async fn shutdown_signal(mut term: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
}
