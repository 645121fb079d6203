//! What the model responder is configured with, checked once at start.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::secret::Secret;

/// A tool the browser carries out: declared in configuration, offered to the
/// model, and answered through `threads.add_client_tool_output`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The JSON schema of the arguments; an empty object schema when omitted.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

#[derive(Clone, Debug)]
pub struct ModelSettings {
    /// `None` for servers that need no key (a local vLLM or Ollama).
    pub api_key: Option<Secret>,
    /// The API root, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    pub default_model: String,
    /// What `inference_options.model` may pick; always holds the default.
    pub allowed_models: Vec<String>,
    pub system_prompt: String,
    /// How many of the newest thread items go to the model.
    pub history_items: usize,
    /// Whether a title is generated after the first turn.
    pub titles: bool,
    pub title_model: String,
    pub client_tools: Vec<ClientTool>,
    /// Limit on waiting for the model: for the answer to start, and between two chunks.
    pub timeout: Duration,
    /// Retries of a connection failure before the first token.
    pub retries: u32,
    /// The first pause before a retry; it doubles each time.
    pub retry_backoff: Duration,
    pub transcribe_model: String,
}

impl ModelSettings {
    /// Parses `CHATKIT_CLIENT_TOOLS`: a JSON array, or `@path` to a file holding one.
    pub fn parse_client_tools(spec: &str) -> Result<Vec<ClientTool>, String> {
        let text = match spec.trim().strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("CHATKIT_CLIENT_TOOLS: cannot read `{path}`: {e}"))?
            }
            None => spec.to_string(),
        };
        let tools: Vec<ClientTool> = serde_json::from_str(&text).map_err(|e| {
            format!("CHATKIT_CLIENT_TOOLS must be a JSON array of {{\"name\", \"description\", \"parameters\"}}: {e}")
        })?;
        let mut names = std::collections::HashSet::new();
        for tool in &tools {
            let valid = !tool.name.is_empty()
                && tool.name.len() <= 64
                && tool.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "CHATKIT_CLIENT_TOOLS: tool name `{}` must be 1 to 64 letters, digits, `_` or `-`",
                    tool.name
                ));
            }
            if !names.insert(tool.name.as_str()) {
                return Err(format!("CHATKIT_CLIENT_TOOLS: tool `{}` is declared twice", tool.name));
            }
            if !tool.parameters.is_object() {
                return Err(format!(
                    "CHATKIT_CLIENT_TOOLS: the parameters of `{}` must be a JSON schema object",
                    tool.name
                ));
            }
        }
        Ok(tools)
    }

    pub fn tool(&self, name: &str) -> Option<&ClientTool> {
        self.client_tools.iter().find(|tool| tool.name == name)
    }
}

/// The tools as the Chat Completions API takes them.
pub fn tools_json(tools: &[ClientTool]) -> Vec<Value> {
    tools
        .iter()
        .map(|tool| {
            let mut function = Map::new();
            function.insert("name".into(), Value::String(tool.name.clone()));
            if !tool.description.is_empty() {
                function.insert("description".into(), Value::String(tool.description.clone()));
            }
            function.insert("parameters".into(), tool.parameters.clone());
            serde_json::json!({"type": "function", "function": function})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tools_parse_and_bad_ones_are_named() {
        let tools = ModelSettings::parse_client_tools(
            r#"[{"name": "get_time", "description": "Local time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}, {"name": "beep"}]"#,
        )
        .unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1].parameters["type"], "object");
        let json = tools_json(&tools);
        assert_eq!(json[0]["function"]["name"], "get_time");
        assert!(json[1]["function"].get("description").is_none());
        for (spec, needle) in [
            ("{}", "JSON array"),
            (r#"[{"name": "a b"}]"#, "`a b`"),
            (r#"[{"name": "a"}, {"name": "a"}]"#, "twice"),
            (r#"[{"name": "a", "parameters": 3}]"#, "schema object"),
            (r#"[{"name": "a", "params": {}}]"#, "unknown field"),
        ] {
            let error = ModelSettings::parse_client_tools(spec).unwrap_err();
            assert!(error.contains(needle), "{spec}: {error}");
        }
    }
}
