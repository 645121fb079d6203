//! chatkit-gateway: a realtime gateway that speaks the OpenAI ChatKit server protocol.
//!
//! See `ARCHITECTURE.md` for the code map and the invariants between modules.

pub mod app;
pub mod blobs;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod http;
pub mod ids;
pub mod protocol;
pub mod responder;
pub mod secret;
pub mod sessions;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod thread;
pub mod tls;
