//! The MCP servers as the gateway keeps them: one connection task per server (connect, list the tools,
//! refresh them on `notifications/tools/list_changed`, reconnect with backoff when the server is down),
//! and the tool calls, bounded by the tool timeout and answered as text for the model.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ClientConfig, Tool};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, Peer, ServiceError, ServiceExt};
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};

use super::settings::{McpServerSettings, McpSettings, MAX_FUNCTION_NAME, NAMESPACE_SEPARATOR};
use super::{McpError, ToolOutcome, ToolSpec};
use crate::telemetry::metrics::METRICS;

/// The longest pause between two connection attempts to a server that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The longest wait at start for the first attempt to reach each server, so that a slow server
/// delays the gateway's start a little, and never stops it.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(10);

/// The most text of one tool result handed to the model; the rest is cut, and the model told so.
const MAX_RESULT_CHARS: usize = 64 * 1024;

/// Every configured MCP server, its connection and its current tools.
pub struct McpRegistry {
    servers: Vec<Arc<Server>>,
    tool_timeout: Duration,
    max_tool_rounds: u32,
}

/// One server: its settings, its live connection (if any) and the tools it offers the model.
struct Server {
    settings: McpServerSettings,
    state: RwLock<State>,
    /// Signalled by the connection's handler when the server says its tool list changed.
    list_changed: Notify,
    /// Signalled by a call that found the connection broken, so that the task reconnects.
    broken: Notify,
    /// Signalled when the registry is dropped, so that a connected task closes its session and ends.
    shutdown: Notify,
}

#[derive(Default)]
struct State {
    /// `None` while the server is down or not yet reached.
    peer: Option<Peer<RoleClient>>,
    tools: Vec<OfferedTool>,
    /// Changes whenever the connection does, so that a call that failed on an older one does not
    /// break the newer one.
    generation: u64,
}

/// A tool of a server, as offered to the model.
#[derive(Clone, Debug)]
struct OfferedTool {
    spec: ToolSpec,
    /// The name the server knows it by.
    tool: String,
}

/// The client side of one connection: hears the server's notifications.
struct Listener {
    server: Weak<Server>,
}

impl ClientHandler for Listener {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        if let Some(server) = self.server.upgrade() {
            tracing::info!(server = %server.settings.name, "the MCP server's tool list changed");
            // A permit is stored when the task is busy, so no change is missed.
            server.list_changed.notify_one();
        }
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info.name = "chatkit-gateway".into();
        info.client_info.version = env!("CARGO_PKG_VERSION").into();
        info
    }
}

impl McpRegistry {
    /// Starts one connection task per server, and waits (briefly, bounded) for each one's first attempt,
    /// so that the tools of the servers that are up are offered from the first turn. A server that is
    /// down is logged and retried in the background; its tools are missing until it answers.
    pub async fn start(settings: McpSettings) -> Arc<McpRegistry> {
        crate::tls::install_provider();
        let mut firsts = Vec::new();
        let mut servers = Vec::new();
        for server_settings in settings.servers {
            let server = Arc::new(Server {
                settings: server_settings,
                state: RwLock::new(State::default()),
                list_changed: Notify::new(),
                broken: Notify::new(),
                shutdown: Notify::new(),
            });
            let (first_tx, first_rx) = watch::channel(false);
            tokio::spawn(run(Arc::downgrade(&server), settings.reconnect_backoff, first_tx));
            firsts.push(first_rx);
            servers.push(server);
        }
        let wait = futures_util::future::join_all(firsts.into_iter().map(|mut first| async move {
            let _ = first.wait_for(|done| *done).await;
        }));
        if tokio::time::timeout(FIRST_ATTEMPT_WAIT, wait).await.is_err() {
            tracing::warn!(
                "some MCP servers did not answer within {FIRST_ATTEMPT_WAIT:?}; their tools come when they do"
            );
        }
        Arc::new(McpRegistry {
            servers,
            tool_timeout: settings.tool_timeout,
            max_tool_rounds: settings.max_tool_rounds,
        })
    }

    /// The names of the configured servers, in configuration order.
    pub fn server_names(&self) -> Vec<String> {
        self.servers.iter().map(|server| server.settings.name.clone()).collect()
    }

    /// The tools of the servers named (all of them for `None`); unknown names are refused.
    pub fn view(self: &Arc<Self>, names: Option<&[String]>) -> Result<super::McpTools, McpError> {
        let servers = match names {
            None => self.server_names(),
            Some(names) => {
                for name in names {
                    if !self.servers.iter().any(|server| &server.settings.name == name) {
                        let known = self.server_names();
                        return Err(McpError::Config(format!(
                            "unknown MCP server `{name}` (configured in CHATKIT_MCP_SERVERS: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        )));
                    }
                }
                names.to_vec()
            }
        };
        Ok(super::McpTools::new(self.clone(), servers))
    }

    pub fn max_tool_rounds(&self) -> u32 {
        self.max_tool_rounds
    }

    /// The tools the servers named offer now.
    pub(super) fn tools(&self, servers: &[String]) -> Vec<ToolSpec> {
        self.servers
            .iter()
            .filter(|server| servers.contains(&server.settings.name))
            .flat_map(|server| server.read().tools.iter().map(|tool| tool.spec.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// The server and tool behind a name offered to the model, among the servers named.
    fn find(&self, servers: &[String], name: &str) -> Option<(Arc<Server>, OfferedTool)> {
        let (prefix, _) = name.split_once(NAMESPACE_SEPARATOR)?;
        let server = self
            .servers
            .iter()
            .find(|server| server.settings.name == prefix && servers.contains(&server.settings.name))?;
        let tool = server.read().tools.iter().find(|tool| tool.spec.name == name).cloned()?;
        Some((server.clone(), tool))
    }

    /// Whether `name` has the shape of a tool of one of the servers named (`<server>__…`).
    pub(super) fn owns(&self, servers: &[String], name: &str) -> bool {
        name.split_once(NAMESPACE_SEPARATOR).is_some_and(|(prefix, _)| servers.iter().any(|server| server == prefix))
    }

    /// The title of a task for a call of `name`.
    pub(super) fn title(&self, servers: &[String], name: &str) -> String {
        match self.find(servers, name) {
            Some((_, tool)) => tool.spec.title,
            None => name.to_string(),
        }
    }

    /// Calls a tool with the model's arguments (a JSON object as text), within the tool timeout.
    /// Every failure is an outcome for the model, never an error of the turn.
    pub(super) async fn call(&self, servers: &[String], name: &str, arguments: &str) -> ToolOutcome {
        let (outcome, kind) = match self.find(servers, name) {
            None => (ToolOutcome::Failed(format!("The tool `{name}` is not available right now.")), "unavailable"),
            Some((server, tool)) => self.call_on(&server, &tool, arguments).await,
        };
        METRICS.mcp_tool_calls.with_label_values(&[kind]).inc();
        outcome
    }

    /// One call, and its outcome's kind for the metric.
    async fn call_on(&self, server: &Server, tool: &OfferedTool, arguments: &str) -> (ToolOutcome, &'static str) {
        let server_name = server.settings.name.as_str();
        let arguments: Map<String, Value> = match arguments.trim() {
            "" => Map::new(),
            raw => match serde_json::from_str(raw) {
                Ok(arguments) => arguments,
                Err(error) => {
                    return (ToolOutcome::Failed(format!("The arguments are not a JSON object ({error}).")), "invalid");
                }
            },
        };
        let (peer, generation) = {
            let state = server.read();
            (state.peer.clone(), state.generation)
        };
        let Some(peer) = peer else {
            let outcome = ToolOutcome::Failed(format!("The tool server `{server_name}` is not reachable right now."));
            return (outcome, "unreachable");
        };
        let params = CallToolRequestParams::new(tool.tool.clone()).with_arguments(arguments);
        // Dropping the call at the timeout cancels the request on the server (`notifications/cancelled`).
        let result = match tokio::time::timeout(self.tool_timeout, peer.call_tool(params)).await {
            Err(_) => {
                tracing::warn!(server = server_name, tool = %tool.tool, timeout = ?self.tool_timeout, "MCP tool call timed out");
                let seconds = self.tool_timeout.as_secs_f64();
                return (ToolOutcome::Failed(format!("The tool did not answer within {seconds} seconds.")), "timeout");
            }
            Ok(Err(ServiceError::McpError(error))) => {
                tracing::warn!(server = server_name, tool = %tool.tool, message = %error.message, "MCP tool call refused");
                return (
                    ToolOutcome::Failed(format!("The tool server refused the call: {}", error.message)),
                    "refused",
                );
            }
            Ok(Err(ServiceError::UnexpectedResponse)) => {
                // An `input_required` or task answer: elicitation and tasks are not supported here.
                tracing::warn!(server = server_name, tool = %tool.tool, "MCP tool asked for input or made a task");
                let reason =
                    "The tool asked for something the gateway does not support (further input, or a background task).";
                return (ToolOutcome::Failed(reason.into()), "unsupported");
            }
            Ok(Err(error)) => {
                tracing::warn!(server = server_name, tool = %tool.tool, %error, "MCP tool call failed");
                if matches!(error, ServiceError::TransportSend(_) | ServiceError::TransportClosed)
                    && server.read().generation == generation
                {
                    server.broken.notify_one();
                }
                return (
                    ToolOutcome::Failed(format!("The tool server `{server_name}` could not be reached.")),
                    "unreachable",
                );
            }
            Ok(Ok(result)) => result,
        };
        let content = serde_json::to_value(&result.content).unwrap_or(Value::Null);
        let mut text = result_text(&content, result.structured_content.as_ref());
        if text.chars().count() > MAX_RESULT_CHARS {
            text = text.chars().take(MAX_RESULT_CHARS).collect::<String>() + "\n[The rest of the result was cut.]";
        }
        if result.is_error == Some(true) {
            tracing::info!(server = server_name, tool = %tool.tool, "MCP tool answered an error");
            let text = if text.trim().is_empty() { "The tool reported an error.".to_string() } else { text };
            (ToolOutcome::Failed(text), "tool_error")
        } else {
            (ToolOutcome::Answered(text), "answered")
        }
    }
}

impl Drop for McpRegistry {
    fn drop(&mut self) {
        // A stored permit reaches a task that is busy now; one that is waiting to reconnect finds the server gone.
        for server in &self.servers {
            server.shutdown.notify_one();
        }
    }
}

impl Server {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The lock guards plain data swapped whole; a panic cannot leave it half written.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the server for its tools and keeps those the allow-list lets through.
    async fn refresh(&self, peer: &Peer<RoleClient>) -> Result<(), ServiceError> {
        let listed = peer.list_all_tools().await?;
        let tools = offered(&self.settings, listed);
        tracing::info!(server = %self.settings.name, tools = ?tools.iter().map(|t| t.tool.as_str()).collect::<Vec<_>>(), "MCP tools listed");
        self.write().tools = tools;
        Ok(())
    }
}

/// The tools of a listing that the model may see, under their namespaced names.
fn offered(settings: &McpServerSettings, listed: Vec<Tool>) -> Vec<OfferedTool> {
    let mut seen = HashMap::new();
    let mut tools = Vec::new();
    for tool in listed {
        let name = tool.name.to_string();
        if !settings.allows(&name) {
            continue;
        }
        let exposed = format!("{}{NAMESPACE_SEPARATOR}{name}", settings.name);
        let valid = exposed.len() <= MAX_FUNCTION_NAME
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            tracing::warn!(server = %settings.name, tool = %name, "MCP tool skipped: its name does not fit a model function name (letters, digits, `_`, `-`, 64 in all)");
            continue;
        }
        if seen.insert(exposed.clone(), ()).is_some() {
            continue;
        }
        let title = tool
            .title
            .clone()
            .or_else(|| tool.annotations.as_ref().and_then(|a| a.title.clone()))
            .unwrap_or_else(|| name.clone());
        tools.push(OfferedTool {
            spec: ToolSpec {
                name: exposed,
                title,
                description: tool.description.as_deref().unwrap_or_default().to_string(),
                parameters: Value::Object((*tool.input_schema).clone()),
            },
            tool: name,
        });
    }
    tools
}

/// A result's content as text: text blocks as they are, other blocks as JSON; the structured
/// content when there is no content.
fn result_text(content: &Value, structured: Option<&Value>) -> String {
    let blocks = content.as_array().map(Vec::as_slice).unwrap_or_default();
    let parts: Vec<String> = blocks
        .iter()
        .map(|block| match (block["type"].as_str(), block["text"].as_str()) {
            (Some("text"), Some(text)) => text.to_string(),
            (Some("image"), _) | (Some("audio"), _) => {
                format!("[{} content not shown]", block["type"].as_str().unwrap_or("binary"))
            }
            _ => block.to_string(),
        })
        .collect();
    if parts.is_empty() {
        return structured.map(Value::to_string).unwrap_or_default();
    }
    parts.join("\n")
}

/// Keeps one server connected for as long as the registry lives: connect, list, refresh on change,
/// and after a failure or a lost connection try again with doubling pauses.
async fn run(server: Weak<Server>, first_backoff: Duration, first: watch::Sender<bool>) {
    let mut backoff = first_backoff;
    loop {
        let Some(strong) = server.upgrade() else { return };
        let name = strong.settings.name.clone();
        match connect(&strong, &server).await {
            Ok(running) => {
                backoff = first_backoff;
                let peer = running.peer().clone();
                let listed = strong.refresh(&peer).await;
                if let Err(error) = &listed {
                    tracing::warn!(server = %name, %error, "cannot list the MCP server's tools");
                }
                if listed.is_ok() {
                    {
                        let mut state = strong.write();
                        state.peer = Some(peer.clone());
                        state.generation += 1;
                    }
                    tracing::info!(server = %name, "MCP server connected");
                    let _ = first.send(true);
                    let cancel = running.cancellation_token();
                    let waiting = running.waiting();
                    tokio::pin!(waiting);
                    loop {
                        tokio::select! {
                            _ = &mut waiting => break,
                            _ = strong.list_changed.notified() => {
                                if let Err(error) = strong.refresh(&peer).await {
                                    tracing::warn!(server = %name, %error, "cannot refresh the MCP server's tools");
                                    if matches!(error, ServiceError::TransportSend(_) | ServiceError::TransportClosed) {
                                        break;
                                    }
                                }
                            }
                            _ = strong.broken.notified() => break,
                            _ = strong.shutdown.notified() => {
                                cancel.cancel();
                                return;
                            }
                        }
                    }
                    cancel.cancel();
                } else {
                    running.cancellation_token().cancel();
                }
                {
                    let mut state = strong.write();
                    state.peer = None;
                    state.tools.clear();
                    state.generation += 1;
                }
                tracing::warn!(server = %name, "MCP server disconnected; its tools are unavailable until it is back");
            }
            Err(error) => {
                tracing::warn!(server = %name, %error, retry_in = ?backoff, "cannot connect to the MCP server; retrying in the background");
            }
        }
        let _ = first.send(true);
        drop(strong);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens a session with a server over streamable HTTP, its configured headers on every request.
async fn connect(
    server: &Server,
    weak: &Weak<Server>,
) -> Result<rmcp::service::RunningService<RoleClient, Listener>, McpError> {
    let settings = &server.settings;
    let mut headers = HashMap::new();
    for (name, value) in &settings.headers {
        // Both were checked at start.
        let name = upstream_http::header::HeaderName::try_from(name.as_str())
            .map_err(|_| McpError::Config(format!("bad header name `{name}`")))?;
        let mut value = upstream_http::header::HeaderValue::from_str(value.expose())
            .map_err(|_| McpError::Config(format!("bad value of header `{name}`")))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let http = upstream_http::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Same-origin redirects only would need the SDK's policy; none is the safe default for headers that carry secrets.
        .redirect(upstream_http::redirect::Policy::none())
        .build()
        .map_err(|e| McpError::Connect(format!("cannot build the HTTP client: {e}")))?;
    let config = StreamableHttpClientTransportConfig::with_uri(settings.url.clone()).custom_headers(headers);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let listener = Listener { server: weak.clone() };
    let connecting = listener.serve(transport);
    match tokio::time::timeout(FIRST_ATTEMPT_WAIT, connecting).await {
        Err(_) => Err(McpError::Connect(format!("no answer within {FIRST_ATTEMPT_WAIT:?}"))),
        Ok(Err(error)) => Err(McpError::Connect(error.to_string())),
        Ok(Ok(running)) => Ok(running),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn results_read_as_text() {
        let content =
            json!([{"type": "text", "text": "3"}, {"type": "image", "data": "AAAA", "mimeType": "image/png"}]);
        assert_eq!(result_text(&content, None), "3\n[image content not shown]");
        assert_eq!(result_text(&json!([]), Some(&json!({"sum": 3}))), r#"{"sum":3}"#);
        assert_eq!(result_text(&json!([]), None), "");
    }

    #[test]
    fn allow_lists_and_bad_names_filter_the_listing() {
        let settings = McpServerSettings {
            name: "math".into(),
            url: "http://x".into(),
            headers: vec![],
            tools: Some(vec!["add".into(), "with.dot".into()]),
        };
        let tool = |name: &str| {
            serde_json::from_value::<Tool>(json!({"name": name, "inputSchema": {"type": "object"}, "title": "Adder"}))
                .unwrap()
        };
        let offered = offered(&settings, vec![tool("add"), tool("sub"), tool("with.dot")]);
        assert_eq!(offered.len(), 1);
        assert_eq!((offered[0].spec.name.as_str(), offered[0].tool.as_str()), ("math__add", "add"));
        assert_eq!(offered[0].spec.title, "Adder");
        assert_eq!(offered[0].spec.parameters, json!({"type": "object"}));
    }
}
