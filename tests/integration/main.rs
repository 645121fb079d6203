//! The integration tests, as one program: each module is one area, and all of
//! them share `common` (the app spawner, the fake OpenAI server, Redis and
//! PostgreSQL helpers) compiled once.
//!
//! Every test builds the real app on a loopback port (or runs the real
//! binary), so they run side by side in one process; the few that need the
//! process to themselves say so (see `metrics`).

mod common;

mod agent;
mod bad_input;
mod blob_contract;
mod browser;
mod cancellation;
mod chatkit_ops;
mod conformance;
mod deploy;
mod example_agent;
mod fake_openai_selftest;
mod fencing;
mod mcp_tools;
mod metrics;
mod model_responder;
mod redis_cluster;
mod replicas;
mod request_ids;
mod responder_failures;
mod responses_api;
mod responses_oracle;
mod rest_api;
mod session_cache;
mod sessions;
mod shared_attachments;
mod shutdown;
mod smoke;
mod store_contract;
mod thread_actors;
mod thread_admin;
mod thread_status;
mod traces;
mod viewers;
mod web;
mod workflows;
