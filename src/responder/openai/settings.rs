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
    /// Which API answers turns.
    pub api: ModelApi,
    /// Tools OpenAI runs itself (web search, file search, code interpreter, image generation), as the
    /// Responses API takes them; checked by `parse_hosted_tools`. Responses API only.
    pub hosted_tools: Vec<Value>,
    /// `reasoning.summary` asked of reasoning models (`auto`, `concise`, `detailed`); Responses API only.
    pub reasoning_summary: Option<String>,
}

/// The API a model responder answers through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelApi {
    /// `POST /responses`: hosted tools, reasoning summaries, generated images.
    Responses,
    /// `POST /chat/completions`: what OpenAI-compatible servers (vLLM, Ollama, …) speak.
    Chat,
}

impl ModelApi {
    /// Parses `CHATKIT_MODEL_API`.
    pub fn parse(value: &str) -> Result<ModelApi, String> {
        match value.trim() {
            "responses" => Ok(ModelApi::Responses),
            "chat" => Ok(ModelApi::Chat),
            other => Err(format!("CHATKIT_MODEL_API must be `responses` or `chat`; got `{other}`")),
        }
    }
}

/// The hosted tool types the gateway knows how to show while they run.
pub const HOSTED_TOOL_TYPES: [&str; 5] =
    ["web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation"];

/// The reasoning summary levels the Responses API takes.
pub const REASONING_SUMMARIES: [&str; 3] = ["auto", "concise", "detailed"];

/// Checks hosted tool objects (`setting` names where they came from, for the messages): each a JSON
/// object whose `type` is one of `HOSTED_TOOL_TYPES`; a file search names its vector stores; a code
/// interpreter without a container gets an automatic one, as OpenAI requires one.
pub fn check_hosted_tools(setting: &str, tools: Vec<Value>) -> Result<Vec<Value>, String> {
    let mut checked = Vec::with_capacity(tools.len());
    for mut tool in tools {
        let Some(object) = tool.as_object_mut() else {
            return Err(format!("{setting}: every hosted tool must be a JSON object with a `type`; got {tool}"));
        };
        let kind = object.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        if !HOSTED_TOOL_TYPES.contains(&kind.as_str()) {
            return Err(format!(
                "{setting}: unknown hosted tool type `{kind}`; known types: {}",
                HOSTED_TOOL_TYPES.join(", ")
            ));
        }
        match kind.as_str() {
            "file_search" => {
                let stores = object.get("vector_store_ids").and_then(Value::as_array);
                if !stores.is_some_and(|ids| !ids.is_empty() && ids.iter().all(Value::is_string)) {
                    return Err(format!(
                        "{setting}: a `file_search` tool needs `vector_store_ids`, a non-empty array of vector store ids"
                    ));
                }
            }
            "code_interpreter" => {
                object.entry("container").or_insert_with(|| serde_json::json!({"type": "auto"}));
            }
            _ => {}
        }
        checked.push(tool);
    }
    Ok(checked)
}

/// Parses `CHATKIT_HOSTED_TOOLS`: a JSON array of tool objects, or `@path` to a file holding one.
pub fn parse_hosted_tools(spec: &str) -> Result<Vec<Value>, String> {
    let text = match spec.trim().strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("CHATKIT_HOSTED_TOOLS: cannot read `{path}`: {e}"))?
        }
        None => spec.to_string(),
    };
    let tools: Vec<Value> = serde_json::from_str(&text)
        .map_err(|e| format!("CHATKIT_HOSTED_TOOLS must be a JSON array of tool objects: {e}"))?;
    check_hosted_tools("CHATKIT_HOSTED_TOOLS", tools)
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
        check_client_tools("CHATKIT_CLIENT_TOOLS", tools)
    }

    pub fn tool(&self, name: &str) -> Option<&ClientTool> {
        self.client_tools.iter().find(|tool| tool.name == name)
    }
}

/// The client tools as the Responses API takes them (flat, not under `function`).
pub fn response_tools_json(tools: &[ClientTool]) -> Vec<Value> {
    tools
        .iter()
        .map(|tool| {
            let mut function = Map::new();
            function.insert("type".into(), Value::String("function".into()));
            function.insert("name".into(), Value::String(tool.name.clone()));
            if !tool.description.is_empty() {
                function.insert("description".into(), Value::String(tool.description.clone()));
            }
            function.insert("parameters".into(), tool.parameters.clone());
            // Strict schemas need every property required; configured schemas need not be written so.
            function.insert("strict".into(), Value::Bool(false));
            Value::Object(function)
        })
        .collect()
}

/// Checks client tools as `setting` (the environment variable or a workflow's key, named in every message)
/// declares them: names of 1 to 64 letters, digits, `_` or `-`, each once, parameters a JSON schema object.
pub fn check_client_tools(setting: &str, tools: Vec<ClientTool>) -> Result<Vec<ClientTool>, String> {
    let mut names = std::collections::HashSet::new();
    for tool in &tools {
        let valid = !tool.name.is_empty()
            && tool.name.len() <= 64
            && tool.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(format!("{setting}: tool name `{}` must be 1 to 64 letters, digits, `_` or `-`", tool.name));
        }
        if !names.insert(tool.name.as_str()) {
            return Err(format!("{setting}: tool `{}` is declared twice", tool.name));
        }
        if !tool.parameters.is_object() {
            return Err(format!("{setting}: the parameters of `{}` must be a JSON schema object", tool.name));
        }
    }
    Ok(tools)
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

    #[test]
    fn hosted_tools_are_checked_and_unknown_types_named() {
        let tools = parse_hosted_tools(
            r#"[{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "code_interpreter"}, {"type": "image_generation", "partial_images": 2}]"#,
        )
        .unwrap();
        assert_eq!(tools.len(), 4);
        assert_eq!(tools[2]["container"], serde_json::json!({"type": "auto"}), "a container is filled in");
        for (spec, needle) in [
            (r#"[{"type": "telepathy"}]"#, "`telepathy`"),
            (r#"[{"type": "file_search"}]"#, "vector_store_ids"),
            (r#"["web_search"]"#, "JSON object"),
            (r#"{"type": "web_search"}"#, "JSON array"),
        ] {
            let error = parse_hosted_tools(spec).unwrap_err();
            assert!(error.contains(needle) && error.contains("CHATKIT_HOSTED_TOOLS"), "{spec}: {error}");
        }
        assert_eq!(ModelApi::parse("chat"), Ok(ModelApi::Chat));
        assert!(ModelApi::parse("completions").unwrap_err().contains("`completions`"));
    }
}
