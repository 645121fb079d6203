//! A responder that plays a fixed script, for turns the echo responder cannot produce: hangs, panics and failures.

use async_trait::async_trait;
use chatkit_gateway::ids::{new_id, IdKind};
use chatkit_gateway::protocol::{AssistantMessageContent, ItemBody, ItemUpdate, ThreadItem, ThreadStreamEvent};
use chatkit_gateway::responder::{EventStream, RespondInput, Responder, ResponderError, TurnContext};

/// One step of a scripted response. Every step that mentions "the message" is
/// about one assistant message whose id is fresh for each turn.
#[derive(Clone, Debug)]
pub enum Step {
    /// `thread.item.added` of the (empty) assistant message.
    Added,
    /// A text delta on the message's first content part.
    Delta(&'static str),
    /// `thread.item.done` of the message, with all deltas so far as its text.
    Done,
    /// Sets the thread's title, as a model responder naming the thread would.
    SetTitle(&'static str),
    /// Panics inside the event stream.
    Panic,
    /// Ends the response with `ResponderError::Custom`.
    Fail { message: &'static str, allow_retry: bool },
    /// Never produces another event, like a model that stopped answering.
    Hang,
}

/// Plays `steps` for every respond call; other operations keep the trait's defaults.
#[derive(Clone, Debug)]
pub struct ScriptedResponder {
    pub steps: Vec<Step>,
}

impl ScriptedResponder {
    pub fn new(steps: Vec<Step>) -> Self {
        ScriptedResponder { steps }
    }
}

#[async_trait]
impl Responder for ScriptedResponder {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn respond(&self, turn: TurnContext, _input: RespondInput) -> EventStream {
        let steps = self.steps.clone();
        let thread_id = turn.thread.id();
        let item_id = new_id(IdKind::Message);
        Box::pin(async_stream::stream! {
            let message = |text: String| {
                let content = if text.is_empty() { vec![] } else { vec![AssistantMessageContent::text(text)] };
                ThreadItem::new(item_id.clone(), thread_id.clone(), ItemBody::AssistantMessage { content })
            };
            let mut text = String::new();
            for step in steps {
                match step {
                    Step::Added => yield Ok(ThreadStreamEvent::ItemAdded { item: message(String::new()) }),
                    Step::Delta(delta) => {
                        text.push_str(delta);
                        let update = ItemUpdate::TextDelta { content_index: 0, delta: delta.to_string() };
                        yield Ok(ThreadStreamEvent::ItemUpdated { item_id: item_id.clone(), update });
                    }
                    Step::Done => yield Ok(ThreadStreamEvent::ItemDone { item: message(text.clone()) }),
                    Step::SetTitle(title) => turn.thread.set_title(title),
                    Step::Panic => panic!("scripted responder panics on purpose"),
                    Step::Fail { message, allow_retry } => {
                        yield Err(ResponderError::Custom { message: message.to_string(), allow_retry });
                        return;
                    }
                    Step::Hang => futures_util::future::pending::<()>().await,
                }
            }
        })
    }
}

/// The events of one finished assistant message saying `text`: added, one delta, done.
pub fn message_events(thread_id: &str, text: &str) -> Vec<ThreadStreamEvent> {
    let id = new_id(IdKind::Message);
    let empty = ThreadItem::new(id.clone(), thread_id.to_string(), ItemBody::AssistantMessage { content: vec![] });
    let mut done = empty.clone();
    done.body = ItemBody::AssistantMessage { content: vec![AssistantMessageContent::text(text)] };
    vec![
        ThreadStreamEvent::ItemAdded { item: empty },
        ThreadStreamEvent::ItemUpdated {
            item_id: id,
            update: ItemUpdate::TextDelta { content_index: 0, delta: text.to_string() },
        },
        ThreadStreamEvent::ItemDone { item: done },
    ]
}
