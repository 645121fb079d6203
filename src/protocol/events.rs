//! Stream events a turn sends, and the item updates they carry.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Annotation, AssistantMessageContent, GeneratedImage, Task, Thread, ThreadItem};

/// One event of a turn stream, framed as `data: <json>` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ThreadStreamEvent {
    #[serde(rename = "thread.created")]
    ThreadCreated { thread: Thread },
    #[serde(rename = "thread.updated")]
    ThreadUpdated { thread: Thread },
    #[serde(rename = "thread.item.added")]
    ItemAdded { item: ThreadItem },
    #[serde(rename = "thread.item.updated")]
    ItemUpdated { item_id: String, update: ItemUpdate },
    #[serde(rename = "thread.item.done")]
    ItemDone { item: ThreadItem },
    #[serde(rename = "thread.item.removed")]
    ItemRemoved { item_id: String },
    #[serde(rename = "thread.item.replaced")]
    ItemReplaced { item: ThreadItem },
    #[serde(rename = "stream_options")]
    StreamOptions { stream_options: StreamOptions },
    #[serde(rename = "progress_update")]
    ProgressUpdate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        icon: Option<String>,
        text: String,
    },
    #[serde(rename = "client_effect")]
    ClientEffect {
        name: String,
        #[serde(default)]
        data: Map<String, Value>,
    },
    #[serde(rename = "error")]
    Error(ErrorEvent),
    #[serde(rename = "notice")]
    Notice {
        level: NoticeLevel,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
}

impl ThreadStreamEvent {
    /// A `stream.error` event, the reference's answer to an unexpected failure.
    pub fn stream_error(allow_retry: bool) -> Self {
        ThreadStreamEvent::Error(ErrorEvent { code: ErrorEvent::STREAM_ERROR.into(), message: None, allow_retry })
    }

    /// An error event with a user-facing message.
    pub fn custom_error(message: impl Into<String>, allow_retry: bool) -> Self {
        ThreadStreamEvent::Error(ErrorEvent {
            code: ErrorEvent::CUSTOM.into(),
            message: Some(message.into()),
            allow_retry,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    pub allow_cancel: bool,
}

/// An error shown to the user in place of (or after part of) a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// `stream.error`, `custom`, or a newer code; the set is open.
    #[serde(default = "ErrorEvent::custom_code")]
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub allow_retry: bool,
}

impl ErrorEvent {
    pub const STREAM_ERROR: &'static str = "stream.error";
    pub const CUSTOM: &'static str = "custom";

    fn custom_code() -> String {
        Self::CUSTOM.to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeLevel {
    Info,
    Warning,
    Danger,
}

/// An incremental change to an item that is still streaming.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ItemUpdate {
    #[serde(rename = "assistant_message.content_part.added")]
    ContentPartAdded { content_index: usize, content: AssistantMessageContent },
    #[serde(rename = "assistant_message.content_part.text_delta")]
    TextDelta { content_index: usize, delta: String },
    #[serde(rename = "assistant_message.content_part.annotation_added")]
    AnnotationAdded { content_index: usize, annotation_index: usize, annotation: Annotation },
    #[serde(rename = "assistant_message.content_part.done")]
    ContentPartDone { content_index: usize, content: AssistantMessageContent },
    #[serde(rename = "widget.streaming_text.value_delta")]
    WidgetTextDelta { component_id: String, delta: String, done: bool },
    #[serde(rename = "widget.root.updated")]
    WidgetRootUpdated { widget: Value },
    #[serde(rename = "widget.component.updated")]
    WidgetComponentUpdated { component_id: String, component: Value },
    #[serde(rename = "workflow.task.added")]
    WorkflowTaskAdded { task_index: usize, task: Task },
    #[serde(rename = "workflow.task.updated")]
    WorkflowTaskUpdated { task_index: usize, task: Task },
    #[serde(rename = "generated_image.updated")]
    GeneratedImageUpdated {
        image: GeneratedImage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<f64>,
    },
}
