//! The model responder: answers through OpenAI's Responses API or any
//! OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, llama.cpp,
//! LM Studio) with `async-openai`, streaming the answer as ChatKit events the
//! way the reference's `stream_agent_response` streams an Agents SDK run.

mod input;
mod responses;
mod responses_input;
mod responses_stream;
mod settings;
mod stream;
mod traced;

use std::sync::Arc;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::audio::{AudioInput as UpstreamAudio, CreateTranscriptionRequestArgs};
use async_openai::Client;
use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{AudioInput, EventStream, RespondInput, Responder, ResponderError, TurnContext};
use crate::ids::UserId;
use crate::protocol::{ItemBody, ThreadItem, TranscriptionResult, UserMessage};

pub(super) use settings::{check_client_tools, check_hosted_tools};
pub use settings::{parse_hosted_tools, ClientTool, ModelApi, ModelSettings, REASONING_SUMMARIES};
use stream::{Chunk, Translator};
use traced::{ModelCall, TracedTransport};
use tracing::Instrument;

use super::mcp::{McpTools, ToolSpec, ToolWorkflow};

use crate::telemetry::metrics::METRICS;

/// The media types ChatKit.js records dictation in.
pub const DICTATION_TYPES: [&str; 3] = ["audio/webm", "audio/ogg", "audio/mp4"];

/// The longest wait for a title.
const TITLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the title call asks for.
const TITLE_PROMPT: &str = "Write a title of 3 to 6 words for the conversation below. \
Answer with the title only: no quotes, no trailing punctuation.";

/// What an answer produces: events to stream, and at the end the answer's text (for the title).
enum Produced {
    /// Boxed: an event is large, and most of what goes by is events.
    Event(Box<crate::protocol::ThreadStreamEvent>),
    Text(String),
}

/// What one model round produces, on either API: events, then `F`, what its finished response asks of the turn.
enum RoundOutput<F> {
    Event(Box<crate::protocol::ThreadStreamEvent>),
    Finished(F),
}

/// Relays one round's events and its failure, closing the workflow of the tool calls before it first: the answer
/// follows that workflow, as in the reference, and a failure after tool calls were shown leaves it in the thread.
fn relay_round<'a, F: 'a>(
    round: impl futures_util::Stream<Item = Result<RoundOutput<F>, ResponderError>> + 'a,
    workflow: &'a mut ToolWorkflow,
) -> impl futures_util::Stream<Item = Result<RoundOutput<F>, ResponderError>> + 'a {
    async_stream::try_stream! {
        futures_util::pin_mut!(round);
        while let Some(output) = round.next().await {
            if let Ok(RoundOutput::Finished(finished)) = output {
                yield RoundOutput::Finished(finished);
                continue;
            }
            if let Some(done) = workflow.end() {
                yield RoundOutput::Event(Box::new(done));
            }
            yield output?;
        }
    }
}

pub struct OpenAiResponder {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<OpenAIConfig>,
    settings: ModelSettings,
    /// The MCP servers' tools this responder offers, if any.
    mcp: Option<McpTools>,
}

/// What the model is told in the last tool message of a turn's last allowed round of server tool calls.
const TOOL_LIMIT_NOTE: &str = "This turn has used all the rounds of tool calls it may make. \
Answer the user now with what you have, without calling tools.";

impl OpenAiResponder {
    pub fn new(settings: ModelSettings) -> Result<Self, String> {
        Self::with_mcp(settings, None)
    }

    /// A responder that also offers the tools of MCP servers and runs the model's calls of them.
    pub fn with_mcp(settings: ModelSettings, mcp: Option<McpTools>) -> Result<Self, String> {
        crate::tls::install_provider();
        let mut config = OpenAIConfig::new().with_api_base(settings.base_url.trim_end_matches('/'));
        if let Some(key) = &settings.api_key {
            config = config.with_api_key(key.expose());
        }
        let http = upstream_http::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the model service: {e}"))?;
        // The plain transport (plus trace context): async-openai's default stack retries 429 and
        // 5xx answers by itself, behind `CHATKIT_MODEL_RETRIES` and the timeout.
        let client = Client::with_config(config).with_http_service(TracedTransport::new(http));
        Ok(OpenAiResponder { inner: Arc::new(Inner { client, settings, mcp }) })
    }
}

/// Maps a recorded stream as a turn does, for `benches/model_mapping.rs` only: each event is parsed from its
/// JSON text (as it arrives in an SSE `data:` line) and translated to ChatKit events, through the Responses
/// translator when `responses`, else the Chat Completions one; answers how many ChatKit events it made.
#[doc(hidden)]
pub fn map_recorded_stream(
    settings: &ModelSettings,
    responses: bool,
    events: &[String],
) -> Result<usize, ResponderError> {
    let thread_id = "thr_bench".to_string();
    let mut made = 0;
    if responses {
        let mut translator = responses_stream::ResponseTranslator::new(thread_id, None);
        for event in events {
            let event: Value = serde_json::from_str(event).map_err(|e| ResponderError::Internal(e.to_string()))?;
            made += translator.event(&event)?.len();
        }
        made += translator.finish(&settings.default_model)?.events.len();
    } else {
        let mut translator = Translator::new(thread_id, settings.clone());
        for chunk in events {
            let chunk: Chunk = serde_json::from_str(chunk).map_err(|e| ResponderError::Internal(e.to_string()))?;
            made += translator.chunk(chunk)?.len();
        }
        made += translator.finish(&settings.default_model, |_| false)?.events.len();
    }
    Ok(made)
}

/// Why a model call failed, in terms of what the user is told.
#[derive(Debug)]
enum Failure {
    /// Could not connect or the connection broke before an answer: retryable here.
    Connect(String),
    Timeout,
    Status {
        status: u16,
        message: String,
    },
    /// The answer broke off or was malformed after it began.
    Broken(String),
    /// An error status whose body is not an OpenAI error object (a proxy's page, or a compatible
    /// server's own shape such as LM Studio's `{"error": "..."}`): `async-openai` keeps the body, not
    /// the status.
    Unreadable(String),
}

impl Failure {
    fn from_openai(error: OpenAIError) -> Failure {
        match error {
            OpenAIError::ApiError(response) => {
                Failure::Status { status: response.status_code.as_u16(), message: response.api_error.message }
            }
            OpenAIError::Reqwest(error) if error.is_timeout() => Failure::Timeout,
            OpenAIError::Reqwest(error) if error.is_connect() || error.is_request() => {
                Failure::Connect(error.to_string())
            }
            OpenAIError::StreamError(error) => Failure::Connect(error.to_string()),
            other => Failure::Broken(other.to_string()),
        }
    }

    /// A failure to open the stream. Only the body of an error status is parsed then, so a body that
    /// does not parse is an error the service answered, not a malformed stream.
    fn from_opening(error: OpenAIError) -> Failure {
        match error {
            OpenAIError::JSONDeserialize(_, body) => {
                // vLLM's own shape keeps the status: `{"object": "error", "message", "type", "code": 404}`.
                let value: Value = serde_json::from_str(&body).unwrap_or_default();
                match (value["code"].as_u64().and_then(|code| u16::try_from(code).ok()), value["message"].as_str()) {
                    (Some(status @ 400..=599), Some(message)) => {
                        Failure::Status { status, message: message.to_string() }
                    }
                    _ => Failure::Unreadable(body),
                }
            }
            other => Failure::from_openai(other),
        }
    }

    /// The error event the user sees: retryable for rate limits, server
    /// errors and timeouts, not for requests the service refuses.
    fn into_error(self, model: &str) -> ResponderError {
        let kind = match &self {
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Status { status: 429, .. } => "rate_limited",
            Failure::Status { status, .. } if *status >= 500 => "server",
            Failure::Status { status: 401 | 403, .. } => "auth",
            Failure::Status { status: 404, .. } => "not_found",
            Failure::Status { .. } => "rejected",
            Failure::Broken(_) => "broken",
            Failure::Unreadable(_) => "unreadable",
        };
        METRICS.model_errors.with_label_values(&[kind]).inc();
        let (message, allow_retry) = match self {
            Failure::Connect(detail) => {
                tracing::warn!(%detail, "cannot reach the model service");
                ("Could not reach the model service. Try again in a moment.".to_string(), true)
            }
            Failure::Timeout => ("The model service did not answer in time. Try again.".to_string(), true),
            Failure::Status { status: 429, .. } => {
                ("The model service is busy (rate limited). Try again in a moment.".to_string(), true)
            }
            Failure::Status { status, message } if status >= 500 => {
                tracing::warn!(status, %message, "model service error");
                (format!("The model service failed (HTTP {status}). Try again."), true)
            }
            Failure::Status { status: status @ (401 | 403), message } => {
                // The upstream message may quote part of the key: keep it in the log only.
                tracing::error!(status, %message, "the model service refused the gateway's credentials");
                ("The model service refused the gateway's credentials.".to_string(), false)
            }
            Failure::Status { status: 404, message } => {
                tracing::warn!(%message, model, "model not found upstream");
                (format!("The model `{model}` is not available on the model service."), false)
            }
            Failure::Status { status, message } => {
                (format!("The model service rejected the request (HTTP {status}): {message}"), false)
            }
            Failure::Broken(detail) => {
                tracing::warn!(%detail, "the model's answer broke off");
                ("The model's answer was cut off. Try again.".to_string(), true)
            }
            Failure::Unreadable(body) => {
                // The body may quote part of the key, as a 401's does: keep it in the log only.
                let body: String = body.chars().take(500).collect();
                tracing::warn!(%body, "the model service answered an error the gateway cannot read");
                ("The model service refused the request.".to_string(), false)
            }
        };
        ResponderError::Custom { message, allow_retry }
    }
}

impl Inner {
    /// Opens a stream (a completion's, or a response's) and reads its first event, retrying
    /// connection failures with backoff; nothing is retried once an event came.
    async fn open<T>(
        &self,
        api: ModelApi,
        request: &Value,
    ) -> Result<(async_openai::types::stream::StreamResponse<T>, Option<T>), Failure>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let mut attempt = 0;
        loop {
            let model = request["model"].as_str().unwrap_or_default();
            METRICS.model_calls.with_label_values(&[model]).inc();
            let result = async {
                let opening = async {
                    match api {
                        ModelApi::Chat => self.client.chat().create_stream_byot(request).await,
                        ModelApi::Responses => self.client.responses().create_stream_byot(request).await,
                    }
                };
                let opened =
                    tokio::time::timeout(self.settings.timeout, opening).await.map_err(|_| Failure::Timeout)?;
                let mut stream = opened.map_err(Failure::from_opening)?;
                let first = match tokio::time::timeout(self.settings.timeout, stream.next()).await {
                    Err(_) => return Err(Failure::Timeout),
                    Ok(None) => None,
                    Ok(Some(Err(error))) => return Err(Failure::from_openai(error)),
                    Ok(Some(Ok(event))) => Some(event),
                };
                Ok((stream, first))
            }
            .await;
            match result {
                Err(Failure::Connect(detail)) if attempt < self.settings.retries => {
                    let pause = self.settings.retry_backoff * 2u32.saturating_pow(attempt);
                    tracing::info!(%detail, attempt, ?pause, "retrying the model call");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The next event of an open stream, after the first: a connection failure now is a broken answer.
    async fn next_event<T>(
        &self,
        upstream: &mut async_openai::types::stream::StreamResponse<T>,
        model: &str,
    ) -> Result<Option<T>, ResponderError> {
        match tokio::time::timeout(self.settings.timeout, upstream.next()).await {
            Err(_) => Err(Failure::Timeout.into_error(model)),
            Ok(None) => Ok(None),
            Ok(Some(Ok(event))) => Ok(Some(event)),
            Ok(Some(Err(error))) => {
                let failure = match Failure::from_openai(error) {
                    Failure::Connect(detail) => Failure::Broken(detail),
                    other => other,
                };
                Err(failure.into_error(model))
            }
        }
    }

    /// Answers through Chat Completions: the thread as messages, the completion's chunks as events. One model
    /// request per round: a round that calls server (MCP) tools runs them, shows them as tasks of one workflow, and
    /// asks again with their results, at most `max_tool_rounds` times.
    fn chat_answer(
        self: Arc<Self>,
        turn: TurnContext,
        items: Vec<ThreadItem>,
        model: String,
        system: String,
        tool_choice: Option<String>,
    ) -> impl futures_util::Stream<Item = Result<Produced, ResponderError>> {
        async_stream::try_stream! {
            let mut messages = vec![json!({"role": "system", "content": system})];
            let images = input::load_images(&turn, &items).await?;
            messages.extend(input::to_messages_with(&items, &images));
            let mcp = self.mcp.clone();
            let max_rounds = mcp.as_ref().map_or(0, McpTools::max_tool_rounds);
            let mut workflow = ToolWorkflow::new(turn.thread.id());
            let mut rounds = 0;
            let mut tool_choice = tool_choice;
            let finished = loop {
                let request = self.request(&model, &messages, tool_choice.take().as_deref(), rounds < max_rounds);
                let finished = {
                    let round = relay_round(self.chat_round(&turn, &model, &request, mcp.as_ref()), &mut workflow);
                    futures_util::pin_mut!(round);
                    let mut finished = None;
                    while let Some(output) = round.next().await {
                        match output? {
                            RoundOutput::Event(event) => yield Produced::Event(event),
                            RoundOutput::Finished(done) => finished = Some(done),
                        }
                    }
                    finished.ok_or_else(|| ResponderError::Internal("a round ended unfinished".into()))?
                };
                let Some(mcp) = mcp.as_ref().filter(|_| !finished.server_calls.is_empty()) else {
                    break finished;
                };
                if rounds >= max_rounds {
                    // Offered no server tools, the model called one anyway. The calls shown so far stay.
                    if let Some(done) = workflow.end() {
                        yield Produced::Event(Box::new(done));
                    }
                    Err(ResponderError::Custom {
                        message: format!("The model kept calling tools past the limit of {max_rounds} rounds in one turn."),
                        allow_retry: false,
                    })?;
                }
                rounds += 1;
                if !finished.events.is_empty() {
                    if let Some(done) = workflow.end() {
                        yield Produced::Event(Box::new(done));
                    }
                }
                for event in finished.events {
                    yield Produced::Event(Box::new(event));
                }
                let calls: Vec<Value> =
                    finished.server_calls.iter().chain(&finished.skipped_calls).map(|call| call.to_json()).collect();
                let content = if finished.text.is_empty() { Value::Null } else { Value::String(finished.text.clone()) };
                messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
                for call in &finished.server_calls {
                    let title = mcp.title(&call.name);
                    let (task_index, started) = workflow.start(&title);
                    yield Produced::Event(Box::new(started));
                    let outcome = mcp.call(&call.name, &call.arguments).await;
                    if let Some(updated) = workflow.finish(task_index, &title, &outcome) {
                        yield Produced::Event(Box::new(updated));
                    }
                    messages.push(json!({"role": "tool", "tool_call_id": call.id, "content": outcome.model_text()}));
                }
                for call in &finished.skipped_calls {
                    let note = format!(
                        "Not run: `{}` was called together with server tools. Call it again on its own if it is still needed.",
                        call.name
                    );
                    messages.push(json!({"role": "tool", "tool_call_id": call.id, "content": note}));
                }
                if rounds >= max_rounds {
                    if let Some(last) = messages.last_mut() {
                        let content = format!("{}\n\n{TOOL_LIMIT_NOTE}", last["content"].as_str().unwrap_or_default());
                        last["content"] = Value::String(content);
                    }
                }
            };
            if !finished.events.is_empty() {
                if let Some(done) = workflow.end() {
                    yield Produced::Event(Box::new(done));
                }
            }
            for event in finished.events {
                yield Produced::Event(Box::new(event));
            }
            // A workflow the answer did not close (no text, e.g. a client tool call ended the turn) closes last.
            if let Some(done) = workflow.end() {
                yield Produced::Event(Box::new(done));
            }
            yield Produced::Text(finished.text);
        }
    }

    /// One Chat Completions request streamed: its events, then what the finished completion asks of the turn.
    fn chat_round<'a>(
        &'a self,
        turn: &'a TurnContext,
        model: &'a str,
        request: &'a Value,
        mcp: Option<&'a McpTools>,
    ) -> impl futures_util::Stream<Item = Result<RoundOutput<stream::Finished>, ResponderError>> + 'a {
        async_stream::try_stream! {
            let mut call = ModelCall::start(ModelApi::Chat, model);
            let opened = self.open::<Chunk>(ModelApi::Chat, request).instrument(call.span.clone()).await;
            let (mut upstream, first) = opened.map_err(|f| { call.failed(); f.into_error(model) })?;
            call.first_event(None);
            let mut translator = Translator::new(turn.thread.id(), self.settings.clone());
            let mut next = first;
            while let Some(chunk) = next.take() {
                if let Some(usage) = chunk.usage() {
                    METRICS.model_tokens.with_label_values(&[model, "prompt"]).inc_by(usage.0);
                    METRICS.model_tokens.with_label_values(&[model, "completion"]).inc_by(usage.1);
                    call.usage(usage.0, usage.1);
                }
                for event in translator.chunk(chunk)? {
                    yield RoundOutput::Event(Box::new(event));
                }
                // From here on nothing is retried: the user has seen output.
                next = self.next_event(&mut upstream, model).await.inspect_err(|_| call.failed())?;
            }
            // The stream is done; dropping it closes the upstream connection.
            drop(upstream);
            let finished = translator.finish(model, |name| mcp.is_some_and(|mcp| mcp.owns(name)))?;
            yield RoundOutput::Finished(finished);
        }
    }

    /// The newest `history_items` items of the thread, oldest first.
    async fn history(&self, turn: &TurnContext) -> Result<Vec<ThreadItem>, ResponderError> {
        turn.recent_items(self.settings.history_items).await
    }

    fn system_prompt(&self, locale: Option<&str>) -> String {
        match locale {
            Some(locale) => format!(
                "{}\n\nThe user's preferred language is `{locale}`. Answer in that language unless the user writes in another.",
                self.settings.system_prompt
            ),
            None => self.settings.system_prompt.clone(),
        }
    }

    /// The request for a turn: model, messages and tools (the server tools only while `server_tools`).
    fn request(&self, model: &str, messages: &[Value], tool_choice: Option<&str>, server_tools: bool) -> Value {
        // Usage comes in a last chunk, for the token metrics.
        let mut request = json!({
            "model": model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut tools = settings::tools_json(&self.settings.client_tools);
        if let Some(mcp) = self.mcp.as_ref().filter(|_| server_tools) {
            tools.extend(mcp.tools().iter().map(ToolSpec::chat_completions_json));
        }
        if !tools.is_empty() {
            request["tools"] = Value::Array(tools);
            if let Some(name) = tool_choice {
                request["tool_choice"] = json!({"type": "function", "function": {"name": name}});
            }
        }
        request
    }

    /// Asks for a short title, through the API turns go through; `None` (logged) when the call fails.
    async fn title(&self, first_message: &str, answer: &str) -> Option<String> {
        let model = &self.settings.title_model;
        let conversation = format!("User: {first_message}\nAssistant: {answer}");
        // The first turn's stream stays open until the title is there: keep the wait short.
        let limit = self.settings.timeout.min(TITLE_TIMEOUT);
        METRICS.model_calls.with_label_values(&[model]).inc();
        let call = async {
            match self.settings.api {
                ModelApi::Chat => {
                    let request = json!({
                        "model": model,
                        "stream": false,
                        "messages": [
                            {"role": "system", "content": TITLE_PROMPT},
                            {"role": "user", "content": conversation},
                        ],
                    });
                    self.client.chat().create_byot::<_, Value>(request).await
                }
                ModelApi::Responses => {
                    let request = json!({
                        "model": model,
                        "instructions": TITLE_PROMPT,
                        "input": conversation,
                        "store": false,
                    });
                    self.client.responses().create_byot::<_, Value>(request).await
                }
            }
        };
        let response = match tokio::time::timeout(limit, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(%error, "title generation failed");
                return None;
            }
            Err(_) => {
                tracing::warn!("title generation timed out");
                return None;
            }
        };
        let text = match self.settings.api {
            ModelApi::Chat => response["choices"][0]["message"]["content"].as_str()?.to_string(),
            ModelApi::Responses => responses::output_text(&response),
        };
        let title = clean_title(&text);
        (!title.is_empty()).then_some(title)
    }
}

/// A title as the model wrote it, without quotes, trailing punctuation or extra lines.
fn clean_title(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or_default();
    let trimmed = line.trim_matches(|c: char| c == '"' || c == '\'' || c == '“' || c == '”' || c == '*');
    let trimmed = trimmed.trim_end_matches(['.', '!', '?', ':', ';', ',']).trim();
    trimmed.chars().take(80).collect()
}

/// The user message that holds this turn's inference options: the input
/// itself, or the newest user message before a tool output or retry.
fn options_message<'a>(items: &'a [ThreadItem], input: &'a RespondInput) -> Option<&'a UserMessage> {
    if let ItemBody::UserMessage(message) = &input.item().body {
        return Some(message);
    }
    items.iter().rev().find_map(|item| match &item.body {
        ItemBody::UserMessage(message) => Some(message),
        _ => None,
    })
}

#[async_trait]
impl Responder for OpenAiResponder {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        let inner = self.inner.clone();
        Box::pin(async_stream::try_stream! {
            let settings = &inner.settings;
            let items = inner.history(&turn).await?;
            let options = options_message(&items, &input).map(|m| m.inference_options.clone()).unwrap_or_default();
            let model = match options.model.as_deref().filter(|m| !m.is_empty()) {
                None => settings.default_model.clone(),
                Some(model) if settings.allowed_models.iter().any(|allowed| allowed == model) => model.to_string(),
                Some(model) => Err(ResponderError::Custom {
                    message: format!(
                        "The model `{model}` is not available here. Choose one of: {}.",
                        settings.allowed_models.join(", ")
                    ),
                    allow_retry: false,
                })?,
            };
            // A chosen tool is forced for the message that chose it only: forced again once its output came back,
            // the model would call it again, and again (the Agents SDK resets the choice for this reason).
            let chosen = match &input {
                RespondInput::UserMessage(_) | RespondInput::Retry(_) => options.tool_choice.as_ref(),
                RespondInput::ClientToolOutput(_) | RespondInput::StructuredInput(_) => None,
            };
            let tool_choice = match chosen.map(|choice| choice.id.as_str()) {
                None => None,
                Some(name) if settings.tool(name).is_some() => Some(name.to_string()),
                Some(name) => {
                    let declared: Vec<&str> = settings.client_tools.iter().map(|t| t.name.as_str()).collect();
                    Err(ResponderError::Custom {
                        message: if declared.is_empty() {
                            format!("The tool `{name}` is not available here: no tools are configured.")
                        } else {
                            format!("The tool `{name}` is not available here. Choose one of: {}.", declared.join(", "))
                        },
                        allow_retry: false,
                    })?
                }
            };
            let mut system = inner.system_prompt(turn.locale.as_deref());
            let variables = turn.session.as_ref().and_then(|s| s.settings.workflow.state_variables.as_ref());
            if let Some(variables) = variables.filter(|v| !v.is_empty()) {
                // The session's workflow state reaches the model as context.
                system.push_str(&format!("\n\nSession state variables: {}", Value::Object(variables.clone())));
            }
            let mut answer: futures_util::stream::BoxStream<'static, Result<Produced, ResponderError>> = match settings.api {
                ModelApi::Chat => Box::pin(inner.clone().chat_answer(turn.clone(), items.clone(), model.clone(), system, tool_choice)),
                ModelApi::Responses => {
                    Box::pin(inner.clone().responses_answer(turn.clone(), items.clone(), model.clone(), system, tool_choice))
                }
            };
            let mut text = String::new();
            while let Some(produced) = answer.next().await {
                match produced? {
                    Produced::Event(event) => yield *event,
                    Produced::Text(answered) => text = answered,
                }
            }
            let session_titles = turn
                .session
                .as_ref()
                .is_none_or(|session| session.settings.chatkit_configuration.automatic_thread_titling.enabled);
            if settings.titles && session_titles && turn.thread.title().is_none() {
                let first_message = items.iter().find_map(|item| match &item.body {
                    ItemBody::UserMessage(message) => Some(message.plain_text()),
                    _ => None,
                });
                if let Some(first_message) = first_message {
                    if let Some(title) = inner.title(&first_message, &text).await {
                        // The engine saves it and announces `thread.updated`.
                        turn.thread.set_title(title);
                    }
                }
            }
        })
    }

    async fn transcribe(&self, _user: &UserId, audio: AudioInput) -> Result<TranscriptionResult, ResponderError> {
        let media_type = audio.media_type().to_ascii_lowercase();
        let extension = match media_type.as_str() {
            "audio/webm" => "webm",
            "audio/ogg" => "ogg",
            "audio/mp4" => "mp4",
            other => {
                return Err(ResponderError::BadRequest(format!(
                    "input.transcribe accepts {}; got `{other}`",
                    DICTATION_TYPES.join(", ")
                )))
            }
        };
        let request = CreateTranscriptionRequestArgs::default()
            .file(UpstreamAudio::from_bytes(format!("dictation.{extension}"), audio.data.clone()))
            .model(self.inner.settings.transcribe_model.clone())
            .build()
            .map_err(|e| ResponderError::Internal(format!("cannot build the transcription request: {e}")))?;
        let audio_api = self.inner.client.audio();
        let transcriptions = audio_api.transcription();
        let model = &self.inner.settings.transcribe_model;
        METRICS.model_calls.with_label_values(&[model]).inc();
        // Read loosely: some compatible servers answer only `{"text"}`.
        let call = transcriptions.create_byot::<_, Value>(request);
        match tokio::time::timeout(self.inner.settings.timeout, call).await {
            Err(_) => Err(Failure::Timeout.into_error(model)),
            Ok(Err(error)) => Err(Failure::from_openai(error).into_error(model)),
            Ok(Ok(response)) => match response["text"].as_str() {
                Some(text) => Ok(TranscriptionResult { text: text.to_string() }),
                None => Err(Failure::Broken("the transcription answer has no `text`".into()).into_error(model)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_lose_quotes_punctuation_and_extra_lines() {
        assert_eq!(clean_title("\"Planning a Trip to Paris.\"\n\nMore"), "Planning a Trip to Paris");
        assert_eq!(clean_title("  **Rust Borrow Checker Basics**  "), "Rust Borrow Checker Basics");
        assert_eq!(clean_title("\n\n"), "");
    }
}
