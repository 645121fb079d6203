//! Items that were added but are not done yet, kept current so that a
//! cancelled or failed turn can persist what the user already saw.

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

    /// Applies an update to an assistant message or workflow; other updates
    /// (widgets, images) are not kept, as in the reference.
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
}
