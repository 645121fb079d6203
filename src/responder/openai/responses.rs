//! A turn through the Responses API: the request (instructions, the thread as input items, client
//! function tools, MCP server tools and hosted tools), then rounds of one streamed response each, mapped to
//! ChatKit events by `responses_stream`. A round that ends with a client tool call ends the turn with the
//! pending call; one that calls MCP tools runs them (shown as tasks of a workflow), appends each
//! `function_call` and its `function_call_output` to the input and asks again, within the tool-round limit.

use std::sync::Arc;

use futures_util::Stream;
use serde_json::{json, Value};

use super::responses_stream::{client_tool_call, refusal_error, Finished, FunctionCall, ResponseTranslator};
use super::traced::ModelCall;
use super::{relay_round, responses_input, settings, Inner, ModelApi, Produced, RoundOutput, TOOL_LIMIT_NOTE};
use crate::protocol::ThreadItem;
use crate::responder::mcp::{McpTools, ToolSpec, ToolWorkflow};
use crate::responder::{ResponderError, TurnContext};
use crate::telemetry::metrics::METRICS;
use tracing::Instrument;

/// What the function calls of a finished round ask of the turn.
enum NextStep {
    /// No call: the answer is complete.
    Done,
    /// A call to a client tool: the turn ends with it pending, for the browser to answer.
    Client(FunctionCall),
    /// Calls to tools the gateway runs itself (MCP) or that nobody offers: run them, append each
    /// `function_call` and its `function_call_output` to the input, and ask again. A client call of the
    /// same round is not run; the model is told to call it again on its own.
    Server { server: Vec<FunctionCall>, skipped: Vec<FunctionCall> },
}

/// Sorts a round's calls. A turn ends with one pending client call, as in the reference (the client
/// answers the newest pending call); further client calls of the same round are dropped (logged).
fn next_step(settings: &settings::ModelSettings, calls: Vec<FunctionCall>) -> NextStep {
    let (client, server): (Vec<FunctionCall>, Vec<FunctionCall>) =
        calls.into_iter().partition(|call| settings.tool(&call.name).is_some());
    if !server.is_empty() {
        return NextStep::Server { server, skipped: client };
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
    /// The request of one round; MCP tools are offered only while `server_tools`.
    fn response_request(
        &self,
        model: &str,
        instructions: &str,
        input: &[Value],
        tool_choice: Option<&str>,
        server_tools: bool,
    ) -> Value {
        // The thread store is the history: nothing is kept upstream, and `previous_response_id` is not used.
        let mut request = json!({
            "model": model,
            "instructions": instructions,
            "input": input,
            "stream": true,
            "store": false,
        });
        let mut tools = settings::response_tools_json(&self.settings.client_tools);
        if let Some(mcp) = self.mcp.as_ref().filter(|_| server_tools) {
            tools.extend(mcp.tools().iter().map(ToolSpec::responses_json));
        }
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
            let mut input = responses_input::to_input(&items, &files);
            let thread_id = turn.thread.id();
            let mcp = self.mcp.clone();
            let max_rounds = mcp.as_ref().map_or(0, McpTools::max_tool_rounds);
            let mut workflow = ToolWorkflow::new(thread_id.clone());
            let mut text = String::new();
            let mut rounds = 0;
            loop {
                // A forced tool is forced in the first round only, or the model would call it again and again.
                let forced = if rounds == 0 { tool_choice.as_deref() } else { None };
                let request = self.response_request(&model, &instructions, &input, forced, rounds < max_rounds);
                let finished = {
                    let round = relay_round(self.response_round(&thread_id, &model, &request), &mut workflow);
                    futures_util::pin_mut!(round);
                    let mut finished = None;
                    while let Some(output) = futures_util::StreamExt::next(&mut round).await {
                        match output? {
                            RoundOutput::Event(event) => yield Produced::Event(event),
                            RoundOutput::Finished(done) => finished = Some(done),
                        }
                    }
                    finished.ok_or_else(|| ResponderError::Internal("a round ended unfinished".into()))?
                };
                if !finished.events.is_empty() {
                    if let Some(done) = workflow.end() {
                        yield Produced::Event(Box::new(done));
                    }
                }
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
                        if let Some(done) = workflow.end() {
                            yield Produced::Event(Box::new(done));
                        }
                        yield Produced::Event(Box::new(client_tool_call(&thread_id, call)?));
                        break;
                    }
                    NextStep::Server { server, skipped } => {
                        let unknown: Vec<String> = server
                            .iter()
                            .filter(|call| !mcp.as_ref().is_some_and(|mcp| mcp.owns(&call.name)))
                            .map(|call| format!("`{}`", call.name))
                            .collect();
                        let mcp = match mcp.as_ref() {
                            Some(mcp) if unknown.is_empty() && rounds < max_rounds => mcp,
                            _ => {
                                if let Some(done) = workflow.end() {
                                    yield Produced::Event(Box::new(done));
                                }
                                let message = if unknown.is_empty() {
                                    // Offered no server tools in the last round, the model called one anyway.
                                    format!("The model kept calling tools past the limit of {max_rounds} rounds in one turn.")
                                } else {
                                    format!("The model called a tool this gateway does not offer: {}.", unknown.join(", "))
                                };
                                Err(ResponderError::Custom { message, allow_retry: !unknown.is_empty() })?;
                                unreachable!("the error above ends the stream");
                            }
                        };
                        rounds += 1;
                        if !finished.text.is_empty() {
                            input.push(json!({"role": "assistant", "content": finished.text}));
                        }
                        for call in &server {
                            let title = mcp.title(&call.name);
                            let (task_index, started) = workflow.start(&title);
                            yield Produced::Event(Box::new(started));
                            let outcome = mcp.call(&call.name, &call.arguments).await;
                            if let Some(updated) = workflow.finish(task_index, &title, &outcome) {
                                yield Produced::Event(Box::new(updated));
                            }
                            input.push(function_call_json(call));
                            input.push(json!({"type": "function_call_output", "call_id": call.call_id, "output": outcome.model_text()}));
                        }
                        for call in &skipped {
                            let note = format!(
                                "Not run: `{}` was called together with server tools. Call it again on its own if it is still needed.",
                                call.name
                            );
                            input.push(function_call_json(call));
                            input.push(json!({"type": "function_call_output", "call_id": call.call_id, "output": note}));
                        }
                        if rounds >= max_rounds {
                            if let Some(last) = input.last_mut() {
                                let output = format!("{}\n\n{TOOL_LIMIT_NOTE}", last["output"].as_str().unwrap_or_default());
                                last["output"] = Value::String(output);
                            }
                        }
                    }
                }
            }
            // A workflow the answer did not close (no text) closes last.
            if let Some(done) = workflow.end() {
                yield Produced::Event(Box::new(done));
            }
            yield Produced::Text(text);
        }
    }

    /// One response streamed: its events, then what the completed response asks of the turn.
    fn response_round<'a>(
        &'a self,
        thread_id: &'a str,
        model: &'a str,
        request: &'a Value,
    ) -> impl Stream<Item = Result<RoundOutput<Finished>, ResponderError>> + 'a {
        async_stream::try_stream! {
            let mut call = ModelCall::start(ModelApi::Responses, model);
            let opened = self.open::<Value>(ModelApi::Responses, request).instrument(call.span.clone()).await;
            let (mut upstream, first) = opened.map_err(|f| { call.failed(); f.into_error(model) })?;
            call.first_event(None);
            let mut translator = ResponseTranslator::new(thread_id.to_string(), self.partial_images());
            let mut next = first;
            while let Some(event) = next.take() {
                for event in translator.event(&event)? {
                    yield RoundOutput::Event(Box::new(event));
                }
                // From here on nothing is retried: the user has seen output.
                next = self.next_event(&mut upstream, model).await.inspect_err(|_| call.failed())?;
            }
            drop(upstream);
            if let Some((input_tokens, output_tokens)) = translator.usage() {
                METRICS.model_tokens.with_label_values(&[model, "prompt"]).inc_by(input_tokens);
                METRICS.model_tokens.with_label_values(&[model, "completion"]).inc_by(output_tokens);
                call.usage(input_tokens, output_tokens);
            }
            yield RoundOutput::Finished(translator.finish(model)?);
        }
    }
}

/// A function call as an input item of the next request.
fn function_call_json(call: &FunctionCall) -> Value {
    json!({"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments})
}
