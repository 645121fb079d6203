//! The process signals: a future that resolves on SIGTERM or Ctrl-C, and the SIGHUP loop that reloads.

/// Resolves when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Calls `reload` on every SIGHUP, for as long as the process runs.
pub async fn on_hangup(mut reload: impl FnMut()) {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut stream) => {
            while stream.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading");
                reload();
            }
        }
        Err(error) => tracing::error!(%error, "cannot listen for SIGHUP"),
    }
    #[cfg(not(unix))]
    let _ = &mut reload;
}
