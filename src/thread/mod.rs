//! Thread actors: one actix actor per live thread runs everything that changes
//! the thread, one message at a time, in arrival order.
//!
//! HTTP code talks to [`ThreadRegistry`], never to an actor address. The registry
//! starts an actor on first use and the actor stops itself after an idle
//! timeout, so memory follows active threads. Each thread's queue is bounded;
//! past the bound a request is refused as busy and nothing of it is written.
//! `registry.rs` uses `actor.rs`, never the reverse: an actor reaches its
//! registry only through the `Roster` trait the registry implements.

mod actor;
mod registry;

pub use registry::{ThreadRegistry, ThreadSettings, ThreadStats};
