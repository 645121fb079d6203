//! The `workflow` item that shows a turn's server tool calls, as the reference's agent context streams
//! one: added with its first task, each later task added to it, each task updated when its call ends,
//! and the item done (closed, with its duration) before the answer's message, which persists it.

use std::time::Instant;

use super::ToolOutcome;
use crate::ids::{new_id, IdKind};
use crate::protocol::{
    ItemBody, ItemUpdate, StatusIndicator, Task, ThreadItem, ThreadStreamEvent, Workflow, WorkflowKind, WorkflowSummary,
};

/// The open workflow of a turn, if a tool was called yet.
pub struct ToolWorkflow {
    thread_id: String,
    open: Option<Open>,
}

struct Open {
    /// The item as first sent; its body is rebuilt from `workflow` whenever it is sent again.
    item: ThreadItem,
    workflow: Workflow,
    started: Instant,
}

impl Open {
    fn item(&self) -> ThreadItem {
        let mut item = self.item.clone();
        item.body = ItemBody::Workflow { workflow: self.workflow.clone() };
        item
    }
}

impl ToolWorkflow {
    pub fn new(thread_id: String) -> Self {
        ToolWorkflow { thread_id, open: None }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// A task for a call that starts now, shown loading: the workflow item itself for the first call
    /// (`thread.item.added`), a `workflow.task.added` update for the next. Answers the task's index.
    pub fn start(&mut self, title: &str) -> (usize, ThreadStreamEvent) {
        let task = custom_task(title, StatusIndicator::Loading, None);
        match &mut self.open {
            Some(open) => {
                open.workflow.tasks.push(task.clone());
                let task_index = open.workflow.tasks.len() - 1;
                let event = ThreadStreamEvent::ItemUpdated {
                    item_id: open.item.id.clone(),
                    update: ItemUpdate::WorkflowTaskAdded { task_index, task },
                };
                (task_index, event)
            }
            None => {
                let workflow =
                    Workflow { kind: WorkflowKind::Custom, tasks: vec![task], summary: None, expanded: false };
                let body = ItemBody::Workflow { workflow: workflow.clone() };
                let item = ThreadItem::new(new_id(IdKind::Workflow), self.thread_id.clone(), body);
                let event = ThreadStreamEvent::ItemAdded { item: item.clone() };
                self.open = Some(Open { item, workflow, started: Instant::now() });
                (0, event)
            }
        }
    }

    /// The task of a call that ended: complete, and a failure said in its content.
    pub fn finish(&mut self, task_index: usize, title: &str, outcome: &ToolOutcome) -> Option<ThreadStreamEvent> {
        let open = self.open.as_mut()?;
        let content = match outcome {
            ToolOutcome::Answered(_) => None,
            ToolOutcome::Failed(reason) => Some(format!("Failed: {reason}")),
        };
        let task = custom_task(title, StatusIndicator::Complete, content);
        let slot = open.workflow.tasks.get_mut(task_index)?;
        *slot = task.clone();
        Some(ThreadStreamEvent::ItemUpdated {
            item_id: open.item.id.clone(),
            update: ItemUpdate::WorkflowTaskUpdated { task_index, task },
        })
    }

    /// Closes the workflow (collapsed, its duration as the summary) with `thread.item.done`, which the
    /// engine persists; `None` when no tool was called.
    pub fn end(&mut self) -> Option<ThreadStreamEvent> {
        let mut open = self.open.take()?;
        let seconds = i64::try_from(open.started.elapsed().as_secs()).unwrap_or(i64::MAX);
        open.workflow.summary.get_or_insert(WorkflowSummary::Duration { duration: seconds });
        open.workflow.expanded = false;
        Some(ThreadStreamEvent::ItemDone { item: open.item() })
    }
}

fn custom_task(title: &str, status_indicator: StatusIndicator, content: Option<String>) -> Task {
    Task::Custom { status_indicator, title: Some(title.to_string()), icon: None, content }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(event: &ThreadStreamEvent) -> serde_json::Value {
        serde_json::to_value(event).unwrap()
    }

    #[test]
    fn tasks_load_complete_and_the_workflow_closes() {
        let mut workflow = ToolWorkflow::new("thr_1".into());
        assert!(workflow.end().is_none(), "no call, no workflow");
        let (first, added) = workflow.start("Add");
        let added = json(&added);
        assert_eq!((first, added["type"].as_str()), (0, Some("thread.item.added")));
        assert_eq!(added["item"]["type"], "workflow");
        assert_eq!(added["item"]["workflow"]["tasks"][0]["status_indicator"], "loading");
        assert_eq!(added["item"]["workflow"]["tasks"][0]["title"], "Add");
        let done = json(&workflow.finish(first, "Add", &ToolOutcome::Answered("3".into())).unwrap());
        assert_eq!(done["update"]["type"], "workflow.task.updated");
        assert_eq!(done["update"]["task"]["status_indicator"], "complete");
        assert!(done["update"]["task"].get("content").is_none());
        let (second, more) = workflow.start("Boom");
        assert_eq!((second, json(&more)["update"]["type"].as_str()), (1, Some("workflow.task.added")));
        let failed = json(&workflow.finish(second, "Boom", &ToolOutcome::Failed("it broke".into())).unwrap());
        assert_eq!(failed["update"]["task"]["content"], "Failed: it broke");
        let item = json(&workflow.end().unwrap());
        assert_eq!(item["type"], "thread.item.done");
        assert_eq!(item["item"]["workflow"]["tasks"].as_array().unwrap().len(), 2);
        assert_eq!(item["item"]["workflow"]["summary"]["duration"], 0);
        assert_eq!(item["item"]["workflow"]["expanded"], false);
        assert!(!workflow.is_open());
    }
}
