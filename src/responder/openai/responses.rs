//! A turn through the Responses API: the request (instructions, the thread as input items, client
//! function tools and hosted tools), then rounds of one streamed response each, mapped to ChatKit
//! events by `responses_stream`. A round that ends with a client tool call ends the turn with the
//! pending call; the loop is where tools the gateway runs itself will feed their outputs back.

use std::sync::Arc;

use futures_util::Stream;
use serde_json::{json, Value};

use super::responses_stream::{client_tool_call, refusal_error, FunctionCall, ResponseTranslator};
use super::{responses_input, settings, Inner, ModelApi, Produced};
use crate::protocol::ThreadItem;
use crate::responder::{ResponderError, TurnContext};
use crate::telemetry::metrics::METRICS;

/// The most responses one turn asks for. Only client tools exist today, and a client call ends the
/// turn, so one round is all a turn takes; tools the gateway runs itself will take more.
const MAX_ROUNDS: usize = 1;

/// What the function calls of a finished round ask of the turn.
enum NextStep {
    /// No call: the answer is complete.
    Done,
    /// A call to a client tool: the turn ends with it pending, for the browser to answer.
    Client(FunctionCall),
    /// Calls to tools the gateway would run itself (none are offered yet): run them, append each
    /// `function_call` and its `function_call_output` to the input, and ask again.
    Server(Vec<FunctionCall>),
}

/// Sorts a round's calls. A turn ends with one pending client call, as in the reference (the client
/// answers the newest pending call); further client calls of the same round are dropped (logged).
fn next_step(settings: &settings::ModelSettings, calls: Vec<FunctionCall>) -> NextStep {
    let (client, server): (Vec<FunctionCall>, Vec<FunctionCall>) =
        calls.into_iter().partition(|call| settings.tool(&call.name).is_some());
    if !server.is_empty() {
        return NextStep::Server(server);
    }
    let mut client = client.into_iter();
    let Some(first) = client.next() else { return NextStep::Done };
    let extra: Vec<String> = client.map(|call| call.name).collect();
    if !extra.is_empty() {
        tracing::warn!(?extra, "the model called several client tools at once; only the first goes to the client");
    }
    NextStep::Client(first)
}

/// The text of a non-streamed response: its `output_text` parts, in order.
pub(super) fn output_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().into_iter().flatten().filter(|item| item["type"] == "message") {
        for part in item["content"].as_array().into_iter().flatten() {
            if part["type"] == "output_text" {
                text.push_str(part["text"].as_str().unwrap_or_default());
            }
        }
    }
    text
}

impl Inner {
    /// The request of one round.
    fn response_request(&self, model: &str, instructions: &str, input: &[Value], tool_choice: Option<&str>) -> Value {
        // The thread store is the history: nothing is kept upstream, and `previous_response_id` is not used.
        let mut request = json!({
            "model": model,
            "instructions": instructions,
            "input": input,
            "stream": true,
            "store": false,
        });
        let mut tools = settings::response_tools_json(&self.settings.client_tools);
        tools.extend(self.settings.hosted_tools.iter().cloned());
        if !tools.is_empty() {
            request["tools"] = Value::Array(tools);
        }
        if let Some(name) = tool_choice {
            request["tool_choice"] = json!({"type": "function", "name": name});
        }
        if let Some(summary) = &self.settings.reasoning_summary {
            request["reasoning"] = json!({"summary": summary});
        }
        request
    }

    /// The `partial_images` the image generation tool asks for, which turns partial images into progress.
    fn partial_images(&self) -> Option<u64> {
        self.settings
            .hosted_tools
            .iter()
            .find(|tool| tool["type"] == "image_generation")
            .and_then(|tool| tool["partial_images"].as_u64())
    }

    /// Answers through the Responses API.
    pub(super) fn responses_answer(
        self: Arc<Self>,
        turn: TurnContext,
        items: Vec<ThreadItem>,
        model: String,
        instructions: String,
        tool_choice: Option<String>,
    ) -> impl Stream<Item = Result<Produced, ResponderError>> {
        async_stream::try_stream! {
            let files = responses_input::load_files(&turn, &items).await?;
            let input = responses_input::to_input(&items, &files);
            let thread_id = turn.thread.id();
            let mut text = String::new();
            for round in 0..MAX_ROUNDS {
                // A forced tool is forced in the first round only, or the model would call it again and again.
                let forced = if round == 0 { tool_choice.as_deref() } else { None };
                let request = self.response_request(&model, &instructions, &input, forced);
                let (mut upstream, first) =
                    self.open::<Value>(ModelApi::Responses, &request).await.map_err(|f| f.into_error(&model))?;
                let mut translator = ResponseTranslator::new(thread_id.clone(), self.partial_images());
                let mut next = first;
                while let Some(event) = next.take() {
                    for event in translator.event(&event)? {
                        yield Produced::Event(Box::new(event));
                    }
                    // From here on nothing is retried: the user has seen output.
                    next = self.next_event(&mut upstream, &model).await?;
                }
                drop(upstream);
                if let Some((input_tokens, output_tokens)) = translator.usage() {
                    METRICS.model_tokens.with_label_values(&[&model, "prompt"]).inc_by(input_tokens);
                    METRICS.model_tokens.with_label_values(&[&model, "completion"]).inc_by(output_tokens);
                }
                let finished = translator.finish(&model)?;
                for event in finished.events {
                    yield Produced::Event(Box::new(event));
                }
                text.push_str(&finished.text);
                if finished.refused {
                    Err(refusal_error())?;
                }
                match next_step(&self.settings, finished.calls) {
                    NextStep::Done => break,
                    NextStep::Client(call) => {
                        // The turn ends with the pending call; the client answers it with
                        // `threads.add_client_tool_output`, and the model continues then.
                        yield Produced::Event(Box::new(client_tool_call(&thread_id, call)?));
                        break;
                    }
                    // The hook for tools the gateway runs itself: none are offered, so a call to one is
                    // a tool the model made up.
                    NextStep::Server(calls) => {
                        let names: Vec<String> = calls.into_iter().map(|call| format!("`{}`", call.name)).collect();
                        Err(ResponderError::Custom {
                            message: format!("The model called a tool this gateway does not offer: {}.", names.join(", ")),
                            allow_retry: true,
                        })?;
                    }
                }
            }
            yield Produced::Text(text);
        }
    }
}
