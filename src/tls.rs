//! The process-wide TLS setup every outgoing HTTPS client shares (the model service, agents, MCP servers, the
//! trace exporter): rustls with the ring crypto provider.

/// Installs ring as rustls's crypto provider, which rustls needs once per process before any client is built;
/// ring is the lean choice. Every client calls it, so none depends on another having started first.
pub fn install_provider() {
    // Fails only when one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
