//! Items that were added but are not done yet, kept current so that a
//! cancelled or failed turn can persist what the user already saw, and so
//! that a viewer joining mid-turn starts from them as they stand.

use serde_json::Value;

use crate::protocol::{AssistantMessageContent, ItemBody, ItemUpdate, ThreadItem};

/// Streamed-but-unfinished items in the order they were added.
#[derive(Debug, Default)]
pub struct PendingItems {
    items: Vec<ThreadItem>,
}

impl PendingItems {
    /// The items as they stand, in the order they were added.
    pub fn items(&self) -> &[ThreadItem] {
        &self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn add(&mut self, item: ThreadItem) {
        self.remove(&item.id);
        self.items.push(item);
    }

    pub fn remove(&mut self, item_id: &str) {
        self.items.retain(|item| item.id != item_id);
    }

    /// Applies an update to the item it names: message parts, workflow
    /// tasks, widget updates and image progress. (A cancelled turn keeps only
    /// its messages, as the reference does; the rest serves the snapshot a
    /// viewer joining mid-turn starts from.)
    pub fn apply(&mut self, item_id: &str, update: &ItemUpdate) {
        let Some(item) = self.items.iter_mut().find(|item| item.id == item_id) else { return };
        match (&mut item.body, update) {
            (ItemBody::AssistantMessage { content }, update) => apply_to_message(content, update),
            (ItemBody::Workflow { workflow }, ItemUpdate::WorkflowTaskAdded { task, .. }) => {
                workflow.tasks.push(task.clone())
            }
            (ItemBody::Workflow { workflow }, ItemUpdate::WorkflowTaskUpdated { task_index, task }) => {
                if let Some(slot) = workflow.tasks.get_mut(*task_index) {
                    *slot = task.clone();
                }
            }
            (ItemBody::Widget { widget, .. }, update) => apply_to_widget(widget, update),
            (ItemBody::GeneratedImage { image }, ItemUpdate::GeneratedImageUpdated { image: latest, .. }) => {
                *image = Some(latest.clone())
            }
            _ => {}
        }
    }

    /// Assistant messages with some non-blank text: what a cancelled turn keeps.
    pub fn non_empty_messages(&self) -> impl Iterator<Item = &ThreadItem> {
        self.items.iter().filter(|item| match &item.body {
            ItemBody::AssistantMessage { content } => content.iter().any(|part| !part.text.trim().is_empty()),
            _ => false,
        })
    }
}

fn apply_to_message(content: &mut Vec<AssistantMessageContent>, update: &ItemUpdate) {
    let index = match update {
        ItemUpdate::ContentPartAdded { content_index, .. }
        | ItemUpdate::TextDelta { content_index, .. }
        | ItemUpdate::AnnotationAdded { content_index, .. }
        | ItemUpdate::ContentPartDone { content_index, .. } => *content_index,
        _ => return,
    };
    // Updates may name a part that was never added; pad, as the reference does.
    while content.len() <= index {
        content.push(AssistantMessageContent::text(""));
    }
    match update {
        ItemUpdate::ContentPartAdded { content: part, .. } | ItemUpdate::ContentPartDone { content: part, .. } => {
            content[index] = part.clone()
        }
        ItemUpdate::TextDelta { delta, .. } => content[index].text.push_str(delta),
        ItemUpdate::AnnotationAdded { annotation_index, annotation, .. } => {
            let annotations = &mut content[index].annotations;
            let at = (*annotation_index).min(annotations.len());
            annotations.insert(at, annotation.clone());
        }
        _ => {}
    }
}

/// A widget update applied to the widget's tree, as ChatKit.js applies it: the root replaced,
/// a component (found by its `id` anywhere in the tree) replaced, or text streamed into one.
fn apply_to_widget(widget: &mut Value, update: &ItemUpdate) {
    match update {
        ItemUpdate::WidgetRootUpdated { widget: root } => *widget = root.clone(),
        ItemUpdate::WidgetComponentUpdated { component_id, component } => {
            if let Some(found) = component_by_id(widget, component_id) {
                *found = component.clone();
            }
        }
        ItemUpdate::WidgetTextDelta { component_id, delta, .. } => {
            if let Some(found) = component_by_id(widget, component_id) {
                let value = found["value"].as_str().unwrap_or_default();
                found["value"] = Value::String(format!("{value}{delta}"));
            }
        }
        _ => {}
    }
}

/// The component whose `id` is `id`, at any depth of a widget tree.
fn component_by_id<'a>(node: &'a mut Value, id: &str) -> Option<&'a mut Value> {
    if node.get("id").and_then(Value::as_str) == Some(id) {
        return Some(node);
    }
    match node {
        Value::Object(fields) => fields.values_mut().find_map(|child| component_by_id(child, id)),
        Value::Array(children) => children.iter_mut().find_map(|child| component_by_id(child, id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str) -> ThreadItem {
        ThreadItem::new(id.into(), "thr_1".into(), ItemBody::AssistantMessage { content: vec![] })
    }

    #[test]
    fn deltas_accumulate_into_the_pending_message() {
        let mut pending = PendingItems::default();
        pending.add(message("msg_1"));
        assert_eq!(pending.non_empty_messages().count(), 0);
        pending.apply("msg_1", &ItemUpdate::TextDelta { content_index: 1, delta: "hel".into() });
        pending.apply("msg_1", &ItemUpdate::TextDelta { content_index: 1, delta: "lo".into() });
        let kept: Vec<_> = pending.non_empty_messages().collect();
        let ItemBody::AssistantMessage { content } = &kept[0].body else { panic!() };
        assert_eq!(content.len(), 2);
        assert_eq!(content[1].text, "hello");
        pending.remove("msg_1");
        assert_eq!(pending.non_empty_messages().count(), 0);
    }

    #[test]
    fn widget_updates_and_image_progress_keep_the_item_current() {
        let card = serde_json::json!({"type": "Card", "children": [
            {"type": "Text", "id": "status", "value": "Rea"},
            {"type": "Row", "children": [{"type": "Badge", "id": "state", "label": "working"}]}
        ]});
        let mut pending = PendingItems::default();
        pending.add(ThreadItem::new(
            "msg_1".into(),
            "thr_1".into(),
            ItemBody::Widget { widget: card, copy_text: None },
        ));
        let delta =
            |text: &str| ItemUpdate::WidgetTextDelta { component_id: "status".into(), delta: text.into(), done: false };
        pending.apply("msg_1", &delta("dy"));
        let badge = serde_json::json!({"type": "Badge", "id": "state", "label": "ready"});
        pending.apply("msg_1", &ItemUpdate::WidgetComponentUpdated { component_id: "state".into(), component: badge });
        pending.apply(
            "msg_1",
            &ItemUpdate::WidgetComponentUpdated { component_id: "nowhere".into(), component: Value::Null },
        );
        let ItemBody::Widget { widget, .. } = &pending.items()[0].body else { panic!("a widget") };
        assert_eq!(widget["children"][0]["value"], "Ready");
        assert_eq!(widget["children"][1]["children"][0]["label"], "ready", "found at any depth");
        pending.apply(
            "msg_1",
            &ItemUpdate::WidgetRootUpdated { widget: serde_json::json!({"type": "Card", "children": []}) },
        );
        let ItemBody::Widget { widget, .. } = &pending.items()[0].body else { panic!("a widget") };
        assert_eq!(widget["children"], serde_json::json!([]));

        let image = crate::protocol::GeneratedImage { id: "img_1".into(), url: "data:image/png;base64,AA".into() };
        pending.add(ThreadItem::new("msg_2".into(), "thr_1".into(), ItemBody::GeneratedImage { image: None }));
        pending.apply("msg_2", &ItemUpdate::GeneratedImageUpdated { image: image.clone(), progress: Some(0.5) });
        assert_eq!(pending.items()[1].body, ItemBody::GeneratedImage { image: Some(image) });
        assert_eq!(pending.non_empty_messages().count(), 0, "a cancelled turn still keeps only messages");
    }
}
