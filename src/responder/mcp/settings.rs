//! What the MCP client is configured with (`CHATKIT_MCP_SERVERS` and its limits), checked once at start.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::McpError;
use crate::secret::Secret;

/// The setting that lists the servers; every error about an entry names it.
pub const SERVERS_SETTING: &str = "CHATKIT_MCP_SERVERS";

/// The separator between a server's name and its tool's name in what the model sees.
pub const NAMESPACE_SEPARATOR: &str = "__";

/// The longest function name the Chat Completions and Responses APIs accept.
pub const MAX_FUNCTION_NAME: usize = 64;

/// The longest server name: short enough to leave most of a function name to the tool.
const MAX_SERVER_NAME: usize = 24;

/// One MCP server reached over streamable HTTP.
#[derive(Clone, Debug)]
pub struct McpServerSettings {
    /// Unique; the prefix of its tools' names (`<name>__<tool>`).
    pub name: String,
    /// The streamable HTTP endpoint, e.g. `https://tools.example.com/mcp`.
    pub url: String,
    /// Sent with every request (e.g. `Authorization`); the values are secrets and never printed.
    pub headers: Vec<(String, Secret)>,
    /// The tools offered to the model; `None` offers every tool the server lists.
    pub tools: Option<Vec<String>>,
}

impl McpServerSettings {
    /// Whether the allow-list lets the model see `tool`.
    pub fn allows(&self, tool: &str) -> bool {
        self.tools.as_ref().is_none_or(|allowed| allowed.iter().any(|name| name == tool))
    }
}

/// The MCP servers and the limits of the tool loop.
#[derive(Clone, Debug)]
pub struct McpSettings {
    pub servers: Vec<McpServerSettings>,
    /// The longest wait for one tool call; past it the model is told the call timed out.
    pub tool_timeout: Duration,
    /// How many rounds of server tool calls one turn may run before the model must answer.
    pub max_tool_rounds: u32,
    /// The first pause before reconnecting to a server that is down; it doubles up to a minute.
    pub reconnect_backoff: Duration,
}

/// One entry of `CHATKIT_MCP_SERVERS` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    tools: Option<Vec<String>>,
}

impl McpSettings {
    /// Parses `CHATKIT_MCP_SERVERS`: a JSON array of `{"name", "url", "headers"?, "tools"?}`, or `@path`
    /// to a file holding one. An empty value configures no server.
    pub fn parse_servers(spec: &str) -> Result<Vec<McpServerSettings>, McpError> {
        let bad = |message: String| McpError::Config(format!("{SERVERS_SETTING}: {message}"));
        let text = match spec.trim().strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read `{path}`: {e}")))?,
            None => spec.to_string(),
        };
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        // The error of a bad entry may quote a header value: say where, never what.
        let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "must be a JSON array of {{\"name\", \"url\", \"headers\", \"tools\"}} (line {}, column {}: {})",
                e.line(),
                e.column(),
                classify(&e)
            ))
        })?;
        let mut names = HashSet::new();
        let mut servers = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let name = entry.name;
            let at = format!("entry {index} (`{name}`)");
            let valid = !name.is_empty()
                && name.len() <= MAX_SERVER_NAME
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !name.contains(NAMESPACE_SEPARATOR);
            if !valid {
                return Err(bad(format!(
                    "{at}: the name must be 1 to {MAX_SERVER_NAME} letters, digits, `_` or `-`, without `__`"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(bad(format!("{at}: the name `{name}` is used twice")));
            }
            if !(entry.url.starts_with("http://") || entry.url.starts_with("https://")) {
                return Err(bad(format!("{at}: `url` must be an http:// or https:// URL")));
            }
            let mut headers = Vec::with_capacity(entry.headers.len());
            for (header, value) in entry.headers {
                if header.parse::<upstream_http::header::HeaderName>().is_err() {
                    return Err(bad(format!("{at}: `{header}` is not a valid header name")));
                }
                if upstream_http::header::HeaderValue::from_str(&value).is_err() {
                    return Err(bad(format!("{at}: the value of header `{header}` is not a valid header value")));
                }
                headers.push((header, Secret::new(value)));
            }
            if let Some(tools) = &entry.tools {
                if let Some(empty) = tools.iter().find(|tool| tool.trim().is_empty()) {
                    return Err(bad(format!("{at}: `tools` holds an empty name (`{empty}`)")));
                }
            }
            servers.push(McpServerSettings { name, url: entry.url, headers, tools: entry.tools });
        }
        Ok(servers)
    }

    /// Refuses client tools whose names could be taken for a server's tools (`<server>__…`).
    pub fn check_client_tools<'a>(&self, client_tools: impl IntoIterator<Item = &'a str>) -> Result<(), McpError> {
        for tool in client_tools {
            if let Some(server) =
                self.servers.iter().find(|s| tool.starts_with(&format!("{}{NAMESPACE_SEPARATOR}", s.name)))
            {
                return Err(McpError::Config(format!(
                    "CHATKIT_CLIENT_TOOLS: the client tool `{tool}` starts with `{}{NAMESPACE_SEPARATOR}`, the prefix of the tools of MCP server `{}` ({SERVERS_SETTING}); rename one of them",
                    server.name, server.name
                )));
            }
        }
        Ok(())
    }
}

/// What kind of JSON error this is, without the text that may quote a secret.
fn classify(error: &serde_json::Error) -> String {
    let message = error.to_string();
    // serde's messages about fields and types name keys, not values; only those are repeated.
    let safe = ["unknown field", "missing field", "invalid type: map", "invalid type: sequence", "duplicate field"];
    if safe.iter().any(|start| message.starts_with(start)) {
        message.split(" at line").next().unwrap_or_default().to_string()
    } else {
        match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON".into(),
            _ => "a value has the wrong type".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_and_bad_entries_are_named() {
        let servers = McpSettings::parse_servers(
            r#"[{"name": "math", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer s3cr3t"}, "tools": ["add"]},
                {"name": "web-2", "url": "https://tools.example/mcp"}]"#,
        )
        .unwrap();
        assert_eq!(servers.len(), 2);
        assert!(servers[0].allows("add") && !servers[0].allows("sub") && servers[1].allows("anything"));
        assert!(!format!("{servers:?}").contains("s3cr3t"), "header values never print");
        assert!(McpSettings::parse_servers("  ").unwrap().is_empty());
        for (spec, needle) in [
            ("{}", "JSON array"),
            (r#"[{"name": "a b", "url": "http://x"}]"#, "entry 0 (`a b`)"),
            (r#"[{"name": "a__b", "url": "http://x"}]"#, "without `__`"),
            (r#"[{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]"#, "used twice"),
            (r#"[{"name": "a", "url": "ftp://x"}]"#, "http://"),
            (r#"[{"name": "a", "url": "http://x", "headers": {"bad header": "v"}}]"#, "`bad header`"),
            (r#"[{"name": "a", "url": "http://x", "tools": [""]}]"#, "empty name"),
            (r#"[{"name": "a", "url": "http://x", "extra": 1}]"#, "unknown field"),
        ] {
            let error = McpSettings::parse_servers(spec).unwrap_err().to_string();
            assert!(error.contains(SERVERS_SETTING) && error.contains(needle), "{spec}: {error}");
        }
        let error =
            McpSettings::parse_servers(r#"[{"name": "a", "url": "http://x", "headers": {"k": "top\nsecret"}}]"#)
                .unwrap_err()
                .to_string();
        assert!(!error.contains("secret"), "a bad header value is not quoted: {error}");
        let error = McpSettings::parse_servers(r#"[{"name": "a", "url": "http://x", "headers": {"k": 12345}}]"#)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("12345"), "a mistyped value is not quoted: {error}");
    }

    #[test]
    fn client_tools_may_not_look_like_server_tools() {
        let settings = McpSettings {
            servers: McpSettings::parse_servers(r#"[{"name": "math", "url": "http://x"}]"#).unwrap(),
            tool_timeout: Duration::from_secs(1),
            max_tool_rounds: 1,
            reconnect_backoff: Duration::from_millis(10),
        };
        assert!(settings.check_client_tools(["get_time", "math_add"]).is_ok());
        let error = settings.check_client_tools(["math__add"]).unwrap_err().to_string();
        assert!(error.contains("math__add") && error.contains("CHATKIT_CLIENT_TOOLS"), "{error}");
    }
}
