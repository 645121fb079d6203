//! Server tools over the Model Context Protocol: the MCP servers of `CHATKIT_MCP_SERVERS` (streamable
//! HTTP, through the official `rmcp` SDK), their tools offered to the model beside the client tools, and
//! the executor a model responder's tool loop calls: `McpTools::tools` (what to offer), `McpTools::call`
//! (run one call, within the timeout, answered as text) and `ToolWorkflow` (the `workflow` item and task
//! events the user sees while the calls run).
//!
//! A server's tools are offered as `<server>__<tool>`, so that two servers, or a server and the client
//! tools, can never offer the same name; the model sees the server's description and input schema.

mod registry;
mod settings;
mod workflow;

use std::sync::Arc;

use serde_json::{Map, Value};

pub use registry::McpRegistry;
pub use settings::{McpServerSettings, McpSettings, NAMESPACE_SEPARATOR, SERVERS_SETTING};
pub use workflow::ToolWorkflow;

/// What can go wrong with MCP servers before a turn; failures during a turn are `ToolOutcome`s.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// A setting is wrong; the message names it. The gateway refuses to start.
    #[error("{0}")]
    Config(String),
    /// A server could not be reached or refused the session; retried in the background.
    #[error("cannot connect: {0}")]
    Connect(String),
}

/// A tool as offered to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The name the model calls it by: `<server>__<tool>`.
    pub name: String,
    /// What the task that shows a call is titled: the tool's title, else its name.
    pub title: String,
    pub description: String,
    /// The JSON schema of the arguments, as the server gave it.
    pub parameters: Value,
}

impl ToolSpec {
    /// The tool as the Chat Completions API takes it (`{"type": "function", "function": {…}}`).
    pub fn chat_completions_json(&self) -> Value {
        let mut function = Map::new();
        function.insert("name".into(), Value::String(self.name.clone()));
        if !self.description.is_empty() {
            function.insert("description".into(), Value::String(self.description.clone()));
        }
        function.insert("parameters".into(), self.parameters.clone());
        serde_json::json!({"type": "function", "function": function})
    }

    /// The tool as the Responses API takes it (`{"type": "function", "name", …}`).
    pub fn responses_json(&self) -> Value {
        let mut tool = Map::new();
        tool.insert("type".into(), Value::String("function".into()));
        tool.insert("name".into(), Value::String(self.name.clone()));
        if !self.description.is_empty() {
            tool.insert("description".into(), Value::String(self.description.clone()));
        }
        tool.insert("parameters".into(), self.parameters.clone());
        Value::Object(tool)
    }
}

/// How one tool call ended. Never an error of the turn: a failure is told to the model, which answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolOutcome {
    /// The tool's result, as text.
    Answered(String),
    /// Why the call failed (timeout, the tool's own error, the server unreachable), for the model and the user.
    Failed(String),
}

impl ToolOutcome {
    /// What the model gets as the tool message's content.
    pub fn model_text(&self) -> String {
        match self {
            ToolOutcome::Answered(text) => text.clone(),
            ToolOutcome::Failed(reason) => format!("The tool call failed: {reason}"),
        }
    }
}

/// The MCP tools one responder offers: those of the servers its workflow names (all, by default).
/// Cheap to clone; the registry behind it keeps every server's tools current.
#[derive(Clone)]
pub struct McpTools {
    registry: Arc<McpRegistry>,
    servers: Arc<[String]>,
}

impl std::fmt::Debug for McpTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTools").field("servers", &self.servers).finish()
    }
}

impl McpTools {
    fn new(registry: Arc<McpRegistry>, servers: Vec<String>) -> Self {
        McpTools { registry, servers: servers.into() }
    }

    /// The tools to offer the model now (servers that are down offer none).
    pub fn tools(&self) -> Vec<ToolSpec> {
        self.registry.tools(&self.servers)
    }

    /// Whether the model's call of `name` is for these servers (`<server>__…`), even if the tool is gone.
    pub fn owns(&self, name: &str) -> bool {
        self.registry.owns(&self.servers, name)
    }

    /// The title of the task that shows a call of `name`.
    pub fn title(&self, name: &str) -> String {
        self.registry.title(&self.servers, name)
    }

    /// Runs one call with the model's arguments (a JSON object as text), within the tool timeout.
    pub async fn call(&self, name: &str, arguments: &str) -> ToolOutcome {
        self.registry.call(&self.servers, name, arguments).await
    }

    /// How many rounds of tool calls one turn may run before the model must answer.
    pub fn max_tool_rounds(&self) -> u32 {
        self.registry.max_tool_rounds()
    }
}
