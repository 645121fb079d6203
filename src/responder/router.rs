//! Workflows pick responders: the workflows file (`CHATKIT_WORKFLOWS`, TOML) maps a session's
//! `workflow.id` to what answers its turns (an agent, the model responder or echo), with a default
//! for everything else; reloaded on SIGHUP without touching running turns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::openai::{check_client_tools, check_hosted_tools};
use super::{
    AgentResponder, AgentSettings, AudioInput, ClientTool, EchoResponder, EventStream, McpRegistry, ModelApi,
    ModelSettings, OpenAiResponder, RespondInput, Responder, ResponderError, TurnContext, REASONING_SUMMARIES,
};
use crate::ids::UserId;
use crate::protocol::{Action, FeedbackKind, SyncCustomActionResponse, ThreadItem, TranscriptionResult};
use crate::secret::Secret;
use crate::sessions::ActiveSession;

/// What an entry of the workflows file does not say, taken from the gateway's own settings.
#[derive(Clone)]
pub struct WorkflowDefaults {
    /// Answers when the file has no `[default]` entry: the responder the environment configures.
    pub responder: Arc<dyn Responder>,
    /// The model service's connection settings, which `model` entries need (`None`: no model configured).
    pub model: Option<ModelSettings>,
    /// The MCP servers `model` entries may offer tools of (`None`: none configured).
    pub mcp: Option<Arc<McpRegistry>>,
    pub agent_history_items: usize,
    pub agent_timeout: Duration,
}

/// The workflows file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowsFile {
    default: Option<Entry>,
    #[serde(default)]
    workflows: HashMap<String, Entry>,
}

/// One responder of the file, chosen by its `responder` key.
#[derive(Deserialize)]
#[serde(tag = "responder", rename_all = "lowercase", deny_unknown_fields)]
enum Entry {
    // A struct variant, so that unknown keys are refused here too (a unit variant ignores them).
    Echo {},
    Model {
        model: Option<String>,
        instructions: Option<String>,
        /// `responses` or `chat`; the environment's choice when omitted.
        api: Option<ModelApi>,
        /// Hosted tool objects as the Responses API takes them; the environment's when omitted.
        hosted_tools: Option<Vec<serde_json::Value>>,
        reasoning_summary: Option<String>,
        /// Names of configured MCP servers whose tools this workflow offers; all of them when omitted.
        mcp_servers: Option<Vec<String>>,
        /// Tools the browser carries out, as `CHATKIT_CLIENT_TOOLS` declares them; the environment's when
        /// omitted, none with `[]`.
        client_tools: Option<Vec<ClientTool>>,
    },
    Agent {
        url: String,
        secret: String,
        history_items: Option<usize>,
        timeout_secs: Option<u64>,
    },
}

/// The responders of one version of the file.
struct Routes {
    default: Arc<dyn Responder>,
    workflows: HashMap<String, Arc<dyn Responder>>,
}

/// The responder that hands each operation to the responder of its session's workflow.
pub struct WorkflowRouter {
    path: PathBuf,
    defaults: WorkflowDefaults,
    /// Swapped whole on reload; a running turn holds what its responder needs, so it is untouched.
    routes: RwLock<Arc<Routes>>,
}

impl WorkflowRouter {
    /// Reads the file at `path`; any error in it names the file and the entry.
    pub fn load(path: PathBuf, defaults: WorkflowDefaults) -> Result<WorkflowRouter, String> {
        let routes = read(&path, &defaults)?;
        Ok(WorkflowRouter { path, defaults, routes: RwLock::new(Arc::new(routes)) })
    }

    /// Reads the file again and routes new operations by it; a bad file keeps the current routes.
    pub fn reload(&self) -> Result<(), String> {
        match read(&self.path, &self.defaults) {
            Ok(routes) => {
                let count = routes.workflows.len();
                *self.routes.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(routes);
                tracing::info!(path = %self.path.display(), workflows = count, "workflows reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot reload the workflows file; keeping the previous one");
                Err(error)
            }
        }
    }

    fn routes(&self) -> Arc<Routes> {
        // The lock only guards swapping one `Arc` for another, which cannot leave it half done.
        self.routes.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The responder of a turn: its session's workflow's, else the default.
    fn pick(&self, turn: &TurnContext) -> Arc<dyn Responder> {
        self.pick_for(turn.session.as_deref())
    }

    fn pick_for(&self, session: Option<&ActiveSession>) -> Arc<dyn Responder> {
        let routes = self.routes();
        let workflow = session.map(|session| session.settings.workflow.id.as_str());
        match workflow.and_then(|id| routes.workflows.get(id)) {
            Some(responder) => responder.clone(),
            None => routes.default.clone(),
        }
    }
}

fn read(path: &PathBuf, defaults: &WorkflowDefaults) -> Result<Routes, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the workflows file {shown}: {e}"))?;
    let file: WorkflowsFile =
        toml::from_str(&text).map_err(|e| format!("the workflows file {shown} is invalid: {e}"))?;
    let default = match file.default {
        Some(entry) => build("default", entry, defaults)?,
        None => defaults.responder.clone(),
    };
    let mut workflows = HashMap::new();
    for (id, entry) in file.workflows {
        let responder = build(&id, entry, defaults).map_err(|e| format!("the workflows file {shown}: {e}"))?;
        workflows.insert(id, responder);
    }
    Ok(Routes { default, workflows })
}

/// Makes the responder of one entry.
fn build(id: &str, entry: Entry, defaults: &WorkflowDefaults) -> Result<Arc<dyn Responder>, String> {
    Ok(match entry {
        Entry::Echo {} => Arc::new(EchoResponder::new()),
        Entry::Model { model, instructions, api, hosted_tools, reasoning_summary, mcp_servers, client_tools } => {
            let Some(mut settings) = defaults.model.clone() else {
                return Err(format!(
                    "workflow `{id}` uses the model responder, but no model is configured (CHATKIT_MODEL or OPENAI_API_KEY)"
                ));
            };
            if let Some(model) = model {
                settings.allowed_models = vec![model.clone()];
                settings.title_model = model.clone();
                settings.default_model = model;
            }
            if let Some(instructions) = instructions {
                settings.system_prompt = instructions;
            }
            if let Some(api) = api {
                settings.api = api;
            }
            if let Some(tools) = client_tools {
                settings.client_tools = check_client_tools(&format!("workflow `{id}`: `client_tools`"), tools)?;
            }
            if let Some(tools) = hosted_tools {
                settings.hosted_tools = check_hosted_tools(&format!("workflow `{id}`: `hosted_tools`"), tools)?;
            }
            if let Some(level) = reasoning_summary {
                if !REASONING_SUMMARIES.contains(&level.as_str()) {
                    return Err(format!(
                        "workflow `{id}`: `reasoning_summary` must be one of {}; got `{level}`",
                        REASONING_SUMMARIES.join(", ")
                    ));
                }
                settings.reasoning_summary = Some(level);
            }
            if settings.api == ModelApi::Chat && !settings.hosted_tools.is_empty() {
                return Err(format!(
                    "workflow `{id}`: hosted tools need `api = \"responses\"` (`hosted_tools = []` offers none)"
                ));
            }
            // Every configured MCP server by default; `mcp_servers = []` offers none.
            let mcp = match (&defaults.mcp, mcp_servers) {
                (Some(registry), names) => {
                    Some(registry.view(names.as_deref()).map_err(|e| format!("workflow `{id}`: `mcp_servers`: {e}"))?)
                }
                (None, Some(names)) if !names.is_empty() => {
                    return Err(format!(
                        "workflow `{id}` names MCP servers ({}), but none are configured (CHATKIT_MCP_SERVERS)",
                        names.join(", ")
                    ))
                }
                (None, _) => None,
            };
            if let Some(registry) = &defaults.mcp {
                for tool in &settings.client_tools {
                    let owner = registry
                        .server_names()
                        .into_iter()
                        .find(|server| tool.name.starts_with(&format!("{server}{}", super::mcp::NAMESPACE_SEPARATOR)));
                    if let Some(server) = owner {
                        return Err(format!(
                            "workflow `{id}`: the client tool `{}` starts with the prefix of MCP server `{server}`'s tools; rename it",
                            tool.name
                        ));
                    }
                }
            }
            Arc::new(OpenAiResponder::with_mcp(settings, mcp).map_err(|e| format!("workflow `{id}`: {e}"))?)
        }
        Entry::Agent { url, secret, history_items, timeout_secs } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("workflow `{id}`: `url` must be an http:// or https:// URL; got `{url}`"));
            }
            let timeout = timeout_secs.map_or(defaults.agent_timeout, |secs| Duration::from_secs(secs.max(1)));
            let history = history_items.unwrap_or(defaults.agent_history_items).max(1);
            let mut settings = AgentSettings::new(url, &Secret::new(secret), history, timeout)
                .map_err(|e| format!("workflow `{id}`: {e}"))?;
            settings.name = id.to_string();
            Arc::new(AgentResponder::new(settings).map_err(|e| format!("workflow `{id}`: {e}"))?)
        }
    })
}

#[async_trait]
impl Responder for WorkflowRouter {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn serves_workflow(&self, id: &str) -> bool {
        self.routes().workflows.contains_key(id)
    }

    fn for_session(&self, session: Option<&ActiveSession>) -> Option<Arc<dyn Responder>> {
        Some(self.pick_for(session))
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        self.pick(&turn).respond(turn, input)
    }

    fn action(&self, turn: TurnContext, action: Action, sender: Option<ThreadItem>) -> EventStream {
        self.pick(&turn).action(turn, action, sender)
    }

    async fn sync_action(
        &self,
        turn: TurnContext,
        action: Action,
        sender: Option<ThreadItem>,
    ) -> Result<SyncCustomActionResponse, ResponderError> {
        self.pick(&turn).sync_action(turn, action, sender).await
    }

    /// The engine sends feedback and dictation to `for_session`'s pick; called here, without a
    /// session, the default entry answers them.
    async fn add_feedback(
        &self,
        user: &UserId,
        thread_id: &str,
        item_ids: &[String],
        kind: FeedbackKind,
    ) -> Result<(), ResponderError> {
        let responder = self.routes().default.clone();
        responder.add_feedback(user, thread_id, item_ids, kind).await
    }

    async fn transcribe(&self, user: &UserId, audio: AudioInput) -> Result<TranscriptionResult, ResponderError> {
        let responder = self.routes().default.clone();
        responder.transcribe(user, audio).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> WorkflowDefaults {
        WorkflowDefaults {
            responder: Arc::new(EchoResponder::new()),
            model: None,
            mcp: None,
            agent_history_items: 20,
            agent_timeout: Duration::from_secs(30),
        }
    }

    fn load(text: &str) -> Result<WorkflowRouter, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        WorkflowRouter::load(file.path().to_path_buf(), defaults())
    }

    #[test]
    fn entries_are_checked_and_named_in_errors() {
        let router = load(
            "[default]\nresponder = \"echo\"\n[workflows.wf_a]\nresponder = \"agent\"\nurl = \"http://127.0.0.1:9/a\"\nsecret = \"whsec_MDEy\"\n",
        )
        .unwrap();
        assert!(router.serves_workflow("wf_a") && !router.serves_workflow("wf_b"));
        let error = load("[workflows.wf_m]\nresponder = \"model\"\n").err().unwrap();
        assert!(error.contains("wf_m") && error.contains("no model is configured"), "{error}");
        let error = load("[workflows.wf_x]\nresponder = \"agent\"\nurl = \"ftp://a\"\nsecret = \"whsec_MDEy\"\n")
            .err()
            .unwrap();
        assert!(error.contains("wf_x") && error.contains("http://"), "{error}");
        let error = load("[workflows.wf_y]\nresponder = \"echo\"\nurl = \"http://a\"\n").err().unwrap();
        assert!(error.contains("url"), "an unknown key is refused: {error}");
        let error = load("[workflows.wf_z]\nresponder = \"telepathy\"\n").err().unwrap();
        assert!(error.contains("telepathy"), "{error}");
    }

    #[tokio::test]
    async fn model_entries_name_configured_mcp_servers_only() {
        let model = ModelSettings {
            api_key: None,
            base_url: "http://127.0.0.1:9/v1".into(),
            default_model: "m".into(),
            allowed_models: vec!["m".into()],
            system_prompt: "s".into(),
            history_items: 10,
            titles: false,
            title_model: "m".into(),
            client_tools: vec![],
            timeout: Duration::from_secs(1),
            retries: 0,
            retry_backoff: Duration::from_millis(1),
            transcribe_model: "t".into(),
            api: ModelApi::Chat,
            hosted_tools: vec![],
            reasoning_summary: None,
        };
        // Nothing listens on port 9: the servers are down, which must not matter to loading the file.
        let servers = crate::responder::McpSettings::parse_servers(
            r#"[{"name": "math", "url": "http://127.0.0.1:9/mcp"}, {"name": "web", "url": "http://127.0.0.1:9/mcp"}]"#,
        )
        .unwrap();
        let registry = McpRegistry::start(crate::responder::McpSettings {
            servers,
            tool_timeout: Duration::from_secs(1),
            max_tool_rounds: 1,
            reconnect_backoff: Duration::from_secs(60),
        })
        .await;
        let with = |mcp: Option<Arc<McpRegistry>>, text: &str| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            let defaults = WorkflowDefaults { model: Some(model.clone()), mcp, ..defaults() };
            WorkflowRouter::load(file.path().to_path_buf(), defaults).map(|_| ())
        };
        let entry = |servers: &str| format!("[workflows.wf_m]\nresponder = \"model\"\n{servers}");
        for ok in ["", "mcp_servers = [\"web\"]\n", "mcp_servers = []\n"] {
            with(Some(registry.clone()), &entry(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let error = with(Some(registry.clone()), &entry("mcp_servers = [\"math\", \"mail\"]\n")).unwrap_err();
        assert!(error.contains("wf_m") && error.contains("`mail`") && error.contains("math, web"), "{error}");
        let error = with(None, &entry("mcp_servers = [\"math\"]\n")).unwrap_err();
        assert!(error.contains("CHATKIT_MCP_SERVERS"), "{error}");
        with(None, &entry("")).unwrap();
        // A workflow's own client tool may not look like a server's tool.
        let error = with(Some(registry.clone()), &entry("client_tools = [{name = \"math__add\"}]\n")).unwrap_err();
        assert!(error.contains("wf_m") && error.contains("`math__add`") && error.contains("`math`"), "{error}");
        with(Some(registry.clone()), &entry("client_tools = [{name = \"mathematics\"}]\n")).unwrap();
    }
}
