//! The `chatkit-gateway` binary: parse config, start telemetry, run the app until asked to stop.

use clap::Parser;

use chatkit_gateway::{app::App, config::Config, shutdown, telemetry};

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let traces = match telemetry::init(&config.server.log, config.server.log_format, &config.tracing.settings()) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("cannot start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match App::build(config).await {
        Err(error) => {
            tracing::error!(%error, "cannot start");
            std::process::ExitCode::FAILURE
        }
        Ok(app) => match app.run_until(shutdown::signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "server failed");
                std::process::ExitCode::FAILURE
            }
        },
    };
    // The last spans (the drain's included) are sent before the process ends; the wait blocks, so it runs
    // off the runtime's thread.
    if let Some(traces) = traces {
        let _ = tokio::task::spawn_blocking(move || traces.shutdown(std::time::Duration::from_secs(5))).await;
    }
    code
}
