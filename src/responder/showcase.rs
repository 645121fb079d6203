//! The echo responder's showcase turns: `/markdown`, `/cite`, `/workflow`, `/image` and
//! `/live-widget` stream the turn content a chat page renders (Markdown with a link, a code block
//! and markup that must be neutralized; citations; a workflow whose tasks change status; a
//! generated image; a widget whose text streams and whose badge is replaced), so that a
//! front-end team sees every shape without a model.

use serde_json::{json, Value};

use super::echo::assistant_message;
use crate::ids::{new_id, IdKind};
use crate::protocol::{
    Annotation, AnnotationTag, AssistantMessageContent, GeneratedImage, ItemBody, ItemUpdate, Source, Task, ThreadItem,
    ThreadStreamEvent, Workflow,
};

/// What `/markdown` answers: a link, inline code, a fenced block, and markup a page must not run.
pub const MARKDOWN: &str = "Here is **Markdown** with a [link to the docs](https://example.com/docs), some `inline code` and a block:\n\n```rust\nfn main() {\n    println!(\"hello\");\n}\n```\n\nA script tag, which must not run: <script>window.__owned = true</script>\n\nAn image with a handler, which must not fire: <img src=\"x\" onerror=\"window.__owned = true\">\n";

/// What `/cite` answers; its sources are cited after each sentence.
pub const CITED: &str = "The gateway speaks the ChatKit protocol. Threads are kept in SQLite by default.";

/// A 24×24 PNG, as generated images arrive: a `data:` URL.
const IMAGE: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABgAAAAYCAIAAABvFaqvAAAEBUlEQVR42g3MIc9HQADA4ffj/KMomSCYdMkEwaRLJgi/SZdMEEy6ZIJg0iUTBJMuiqKP8no+wPP3wzpYF+tjQ6zAJtgMK7ElFqzCttgeq7ETdsEa7I49sRZ7Yx/si/37cTlcLpfPFXIJroQr45JcJRdciqvl6rk018S1cBmunevkslw318P1cn3R4XC4HD5HyCE4Eo6MQ3KUHHAojpaj59AcE8fCYTh2jpPDctwcD8fL8UWbw+ay+Wwhm2BL2DI2yVaywabYWraeTbNNbAubYdvZTjbLdrM9bC/bFxkH42J8TIgRmASTYSSmxIBRmBbTYzRmwiwYg9kxJ8ZibsyDeTFftDqsLqvPGrIK1oQ1Y5WsJSusirVl7Vk168S6sBrWnfVktaw368P6sn7R7DC7zD5zyCyYE+aMWTKXzDAr5pa5Z9bME/PCbJh35pPZMt/MD/PL/EWjw+gy+owho2BMGDNGyVgywqgYW8aeUTNOjAujYdwZT0bLeDM+jC/jF2kH7aJ9dIgW6ASdoSW6RINW6BbdozV6Qi9og97RJ9qib/SDftFfNDgMLoPPEDIIhoQhY5AMJQMMiqFl6Bk0w8SwMBiGneFksAw3w8PwMnxR59C5dD5dSCfoErqMTtKVdNApupaup9N0E91CZ+h2upPO0t10D91L90WNQ+PS+DQhjaBJaDIaSVPSQKNoWpqeRtNMNAuNodlpThpLc9M8NC/NFykH5aJ8VIgSqASVoSSqRIFSqBbVozRqQi0og9pRJ8qibtSDelFfVDvULrVPHVIL6oQ6o5bUJTXUirql7qk19US9UBvqnfqkttQ39UP9Un9R5VC5VD5VSCWoEqqMSlKVVFApqpaqp9JUE9VCZah2qpPKUt1UD9VL9UWFQ+FS+BQhhaBIKDIKSVFSQKEoWoqeQlNMFAuFodgpTgpLcVM8FC/FF0kH6SJ9ZIgUyASZISWyRIJUyBbZIzVyQi5Ig9yRJ9Iib+SDfJFflDvkLrlPHpIL8oQ8I5fkJTnkirwl78k1+US+kBvynfwkt+Q3+UP+kn9R6pC6pD5pSCpIE9KMVJKWpJAq0pa0J9WkE+lCakh30pPUkt6kD+lL+kWxQ+wS+8QhsSBOiDNiSVwSQ6yIW+KeWBNPxAuxId6JT2JLfBM/xC/xFwkH4SJ8RIgQiASRISSiRIBQiBbRIzRiQiwIg9gRJ8IibsSDeBFfFDlELpFPFBIJooQoI5JEJRFEiqgl6ok00US0EBminegkskQ30UP0En1R4BC4BD5BSCAIEoKMQBKUBBAogpagJ9AEE8FCYAh2gpPAEtwED8FL8EWeg+fi+XghnsBL8DI8iVfigafwWrweT+NNeAuewdvxTjyLd+M9eC/eP+d1Xe4OhmAzAAAAAElFTkSuQmCC";

/// The turn a showcase command streams, or `None` for any other text.
pub fn showcase(command: &str, thread_id: &str) -> Option<Vec<ThreadStreamEvent>> {
    match command {
        "/markdown" => Some(assistant_message(thread_id, MARKDOWN)),
        "/cite" => Some(cited(thread_id)),
        "/workflow" => Some(workflow(thread_id)),
        "/image" => Some(image(thread_id)),
        "/live-widget" => Some(live_widget(thread_id)),
        _ => None,
    }
}

/// An answer citing a web page after its first sentence and a file after its second, each
/// annotation announced as it is found, as the reference streams them.
fn cited(thread_id: &str) -> Vec<ThreadStreamEvent> {
    let first_stop = CITED.find(". ").map_or(CITED.len(), |at| at + 1);
    let annotations: Vec<Annotation> = [
        (json!({"type": "url", "title": "ChatKit server protocol", "url": "https://example.com/chatkit"}), first_stop),
        (json!({"type": "file", "title": "Storage notes", "filename": "storage.md"}), CITED.len()),
    ]
    .into_iter()
    .map(|(source, index)| Annotation {
        kind: AnnotationTag::Tag,
        source: from_json::<Source>(source),
        index: Some(index as i64),
    })
    .collect();
    let mut events = assistant_message(thread_id, CITED);
    let item_id = match events.first() {
        Some(ThreadStreamEvent::ItemAdded { item }) => item.id.clone(),
        _ => return events,
    };
    let mut content = AssistantMessageContent::text(CITED);
    content.annotations = annotations.clone();
    // The annotations come before the part is done, and the done part and item carry them all.
    let done_part = events.len() - 2;
    for (annotation_index, annotation) in annotations.into_iter().enumerate() {
        let update = ItemUpdate::AnnotationAdded { content_index: 0, annotation_index, annotation };
        events
            .insert(done_part + annotation_index, ThreadStreamEvent::ItemUpdated { item_id: item_id.clone(), update });
    }
    for event in events.iter_mut() {
        match event {
            ThreadStreamEvent::ItemUpdated { update: ItemUpdate::ContentPartDone { content: part, .. }, .. } => {
                *part = content.clone()
            }
            ThreadStreamEvent::ItemDone { item } => {
                item.body = ItemBody::AssistantMessage { content: vec![content.clone()] }
            }
            _ => {}
        }
    }
    events
}

/// A workflow that thinks, searches and drafts, each task loading and then complete, followed by
/// the answer.
fn workflow(thread_id: &str) -> Vec<ThreadStreamEvent> {
    let tasks: Vec<Task> = [
        json!({"type": "thought", "title": "Reading the question", "content": "The user wants to see a **workflow**."}),
        json!({"type": "web_search", "title": "Searching", "title_query": "chatkit workflows",
               "queries": ["chatkit workflows"],
               "sources": [{"type": "url", "title": "Workflows", "url": "https://example.com/workflows"}]}),
        json!({"type": "custom", "title": "Drafting the answer", "content": "Three tasks, then the answer."}),
    ]
    .into_iter()
    .map(from_json::<Task>)
    .collect();
    let item_id = new_id(IdKind::Workflow);
    let item = |tasks: Vec<Task>, summary: Option<Value>, expanded: bool| {
        let workflow: Workflow =
            from_json(json!({"type": "custom", "tasks": tasks, "summary": summary, "expanded": expanded}));
        ThreadItem::new(item_id.clone(), thread_id.to_string(), ItemBody::Workflow { workflow })
    };
    let mut events = vec![ThreadStreamEvent::ItemAdded { item: item(Vec::new(), None, true) }];
    for (task_index, task) in tasks.iter().enumerate() {
        let update = ItemUpdate::WorkflowTaskAdded { task_index, task: with_status(task, "loading") };
        events.push(ThreadStreamEvent::ItemUpdated { item_id: item_id.clone(), update });
        let update = ItemUpdate::WorkflowTaskUpdated { task_index, task: with_status(task, "complete") };
        events.push(ThreadStreamEvent::ItemUpdated { item_id: item_id.clone(), update });
    }
    let done: Vec<Task> = tasks.iter().map(|task| with_status(task, "complete")).collect();
    events.push(ThreadStreamEvent::ItemDone { item: item(done, Some(json!({"duration": 2})), false) });
    events.extend(assistant_message(thread_id, "echo: the workflow is done"));
    events
}

/// A generated image: added empty, then half done, then finished.
fn image(thread_id: &str) -> Vec<ThreadStreamEvent> {
    let item_id = new_id(IdKind::Message);
    let image = GeneratedImage { id: new_id(IdKind::Attachment), url: IMAGE.to_string() };
    let empty = ThreadItem::new(item_id.clone(), thread_id.to_string(), ItemBody::GeneratedImage { image: None });
    let mut done = empty.clone();
    done.body = ItemBody::GeneratedImage { image: Some(image.clone()) };
    vec![
        ThreadStreamEvent::ItemAdded { item: empty },
        ThreadStreamEvent::ItemUpdated {
            item_id,
            update: ItemUpdate::GeneratedImageUpdated { image, progress: Some(0.5) },
        },
        ThreadStreamEvent::ItemDone { item: done },
    ]
}

/// What `/live-widget`'s status text streams, delta by delta.
pub const LIVE_STATUS: [&str; 3] = ["Reading the store, ", "asking the fan-out, ", "all good."];

/// A widget that updates as it streams: its status text arrives in deltas, then its badge is
/// replaced, as a server's `stream_widget` sends a changing widget.
fn live_widget(thread_id: &str) -> Vec<ThreadStreamEvent> {
    let card = |status: &str, badge: Value| {
        json!({"type": "Card", "children": [
            {"type": "Title", "value": "Checking the gateway", "size": "sm"},
            {"type": "Text", "id": "status", "value": status, "streaming": true},
            badge
        ]})
    };
    let badge = |label: &str, color: &str| json!({"type": "Badge", "id": "state", "label": label, "color": color});
    let item_id = new_id(IdKind::Message);
    let item = |widget: Value| {
        let body = ItemBody::Widget { widget, copy_text: Some("Checking the gateway".into()) };
        ThreadItem::new(item_id.clone(), thread_id.to_string(), body)
    };
    let mut events = vec![ThreadStreamEvent::ItemAdded { item: item(card("", badge("working", "info"))) }];
    for (index, delta) in LIVE_STATUS.iter().enumerate() {
        let done = index + 1 == LIVE_STATUS.len();
        let update = ItemUpdate::WidgetTextDelta { component_id: "status".into(), delta: delta.to_string(), done };
        events.push(ThreadStreamEvent::ItemUpdated { item_id: item_id.clone(), update });
    }
    let update =
        ItemUpdate::WidgetComponentUpdated { component_id: "state".into(), component: badge("ready", "success") };
    events.push(ThreadStreamEvent::ItemUpdated { item_id: item_id.clone(), update });
    events.push(ThreadStreamEvent::ItemDone { item: item(card(&LIVE_STATUS.concat(), badge("ready", "success"))) });
    events
}

/// A task with its status indicator set.
fn with_status(task: &Task, status: &str) -> Task {
    let mut value = serde_json::to_value(task).unwrap_or_default();
    value["status_indicator"] = json!(status);
    from_json(value)
}

/// A protocol value from JSON this file writes; a mistake here is a bug in this file, caught by its tests.
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the showcase's JSON matches the protocol types")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_showcase_turn_is_built() {
        for command in ["/markdown", "/cite", "/workflow", "/image", "/live-widget"] {
            let events = showcase(command, "thr_1").expect(command);
            assert!(matches!(events.last(), Some(ThreadStreamEvent::ItemDone { .. })), "{command}");
        }
        assert!(showcase("/nothing", "thr_1").is_none());
    }

    #[test]
    fn citations_point_after_their_sentences() {
        let events = showcase("/cite", "thr_1").unwrap();
        let Some(ThreadStreamEvent::ItemDone { item }) = events.last() else { panic!("done last") };
        let ItemBody::AssistantMessage { content } = &item.body else { panic!("a message") };
        let indexes: Vec<i64> = content[0].annotations.iter().filter_map(|a| a.index).collect();
        assert_eq!(indexes, vec![40, CITED.len() as i64]);
        assert_eq!(&CITED[..40], "The gateway speaks the ChatKit protocol.");
    }
}
