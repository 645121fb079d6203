//! The sessions of the `/v1` API: what `POST /v1/chatkit/sessions` takes, its
//! validation and defaults (those of the hosted service), and the
//! `chatkit.session` that create and cancel answer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::SessionObject;

/// How long a session lives when `expires_after` is not given, in seconds.
pub const DEFAULT_SESSION_SECONDS: i64 = 600;
/// The per-minute request limit when `rate_limits` is not given.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 10;
/// The largest upload the hosted service allows, in megabytes.
pub const MAX_FILE_SIZE_MB: u32 = 512;
const MAX_SESSION_SECONDS: i64 = 30 * 24 * 3600;
const MAX_STATE_KEY_CHARS: usize = 64;

/// `POST /v1/chatkit/sessions`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCreateParams {
    pub user: String,
    pub workflow: WorkflowParam,
    #[serde(default)]
    pub chatkit_configuration: ConfigurationParam,
    #[serde(default)]
    pub expires_after: Option<ExpiresAfter>,
    #[serde(default)]
    pub rate_limits: Option<RateLimitsParam>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowParam {
    pub id: String,
    #[serde(default)]
    #[schema(value_type = Option<HashMap<String, Value>>)]
    pub state_variables: Option<Map<String, Value>>,
    #[serde(default)]
    pub tracing: Option<Toggle>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationParam {
    #[serde(default)]
    pub automatic_thread_titling: Option<Toggle>,
    #[serde(default)]
    pub file_upload: Option<FileUploadParam>,
    #[serde(default)]
    pub history: Option<HistoryParam>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUploadParam {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub max_file_size: Option<u32>,
    #[serde(default)]
    pub max_files: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryParam {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub recent_threads: Option<u32>,
}

/// `expires_after`: seconds from creation, as a number or as the API's
/// `{"anchor": "created_at", "seconds": n}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExpiresAfter {
    Seconds(i64),
    Anchored { anchor: String, seconds: i64 },
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsParam {
    pub max_requests_per_1_minute: u32,
}

/// A session's settings as resolved and answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSettings {
    pub chatkit_configuration: Configuration,
    pub rate_limits: RateLimits,
    pub workflow: Workflow,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionChatKitConfiguration)]
pub struct Configuration {
    pub automatic_thread_titling: Toggle,
    pub file_upload: FileUpload,
    pub history: History,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionFileUpload)]
pub struct FileUpload {
    pub enabled: bool,
    pub max_file_size: Option<u32>,
    pub max_files: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionHistory)]
pub struct History {
    pub enabled: bool,
    pub recent_threads: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionRateLimits)]
pub struct RateLimits {
    pub max_requests_per_1_minute: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatKitWorkflow)]
pub struct Workflow {
    pub id: String,
    #[schema(value_type = Option<HashMap<String, Value>>)]
    pub state_variables: Option<Map<String, Value>>,
    pub tracing: Toggle,
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = ChatSessionStatus)]
pub enum SessionStatus {
    Active,
    Expired,
    Cancelled,
}

/// `chatkit.session`, as answered by create and cancel.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatSession {
    pub id: String,
    /// Always `chatkit.session`.
    #[schema(value_type = SessionObject)]
    pub object: &'static str,
    pub client_secret: String,
    pub expires_at: i64,
    pub max_requests_per_1_minute: u32,
    pub rate_limits: RateLimits,
    pub status: SessionStatus,
    pub user: String,
    pub workflow: Workflow,
    pub chatkit_configuration: Configuration,
}

impl SessionCreateParams {
    /// Checks the parameters and resolves defaults: the settings and the
    /// lifetime in seconds. Errors name the offending field.
    pub fn resolve(self) -> Result<(String, SessionSettings, i64), String> {
        let user = self.user.trim().to_string();
        if user.is_empty() || user.len() > 256 {
            return Err("`user` must be 1 to 256 bytes".into());
        }
        if self.workflow.id.trim().is_empty() {
            return Err("`workflow.id` must not be empty".into());
        }
        if let Some(variables) = &self.workflow.state_variables {
            for (key, value) in variables {
                if key.chars().count() > MAX_STATE_KEY_CHARS {
                    return Err(format!("`workflow.state_variables` key `{key}` is longer than 64 characters"));
                }
                if !(value.is_string() || value.is_boolean() || value.is_number()) {
                    return Err(format!("`workflow.state_variables.{key}` must be a string, a boolean or a number"));
                }
            }
        }
        let seconds = match self.expires_after {
            None => DEFAULT_SESSION_SECONDS,
            Some(ExpiresAfter::Seconds(seconds)) => seconds,
            Some(ExpiresAfter::Anchored { anchor, seconds }) => {
                if anchor != "created_at" {
                    return Err(format!("`expires_after.anchor` must be `created_at`, got `{anchor}`"));
                }
                seconds
            }
        };
        if !(1..=MAX_SESSION_SECONDS).contains(&seconds) {
            return Err(format!("`expires_after` must be 1 to {MAX_SESSION_SECONDS} seconds, got {seconds}"));
        }
        let limit = self.rate_limits.map_or(DEFAULT_REQUESTS_PER_MINUTE, |r| r.max_requests_per_1_minute);
        if limit == 0 {
            return Err("`rate_limits.max_requests_per_1_minute` must be at least 1".into());
        }
        let configuration = self.chatkit_configuration;
        let upload = configuration.file_upload;
        let max_file_size = upload.as_ref().and_then(|u| u.max_file_size);
        if let Some(size) = max_file_size {
            if !(1..=MAX_FILE_SIZE_MB).contains(&size) {
                return Err(format!(
                    "`chatkit_configuration.file_upload.max_file_size` must be 1 to {MAX_FILE_SIZE_MB} (MB)"
                ));
            }
        }
        let settings = SessionSettings {
            chatkit_configuration: Configuration {
                automatic_thread_titling: configuration.automatic_thread_titling.unwrap_or(Toggle { enabled: true }),
                file_upload: FileUpload {
                    enabled: upload.as_ref().and_then(|u| u.enabled).unwrap_or(false),
                    max_file_size: Some(max_file_size.unwrap_or(MAX_FILE_SIZE_MB)),
                    max_files: Some(upload.as_ref().and_then(|u| u.max_files).unwrap_or(10)),
                },
                history: History {
                    enabled: configuration.history.as_ref().and_then(|h| h.enabled).unwrap_or(true),
                    recent_threads: configuration.history.as_ref().and_then(|h| h.recent_threads),
                },
            },
            rate_limits: RateLimits { max_requests_per_1_minute: limit },
            workflow: Workflow {
                id: self.workflow.id,
                state_variables: Some(self.workflow.state_variables.unwrap_or_default()),
                tracing: self.workflow.tracing.unwrap_or(Toggle { enabled: true }),
                version: self.workflow.version,
            },
        };
        Ok((user, settings, seconds))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resolve(body: Value) -> Result<(String, SessionSettings, i64), String> {
        serde_json::from_value::<SessionCreateParams>(body).map_err(|e| e.to_string())?.resolve()
    }

    #[test]
    fn defaults_follow_the_hosted_service() {
        let (user, settings, seconds) = resolve(json!({"user": "u1", "workflow": {"id": "wf_1"}})).unwrap();
        assert_eq!((user.as_str(), seconds), ("u1", 600));
        assert_eq!(settings.rate_limits.max_requests_per_1_minute, 10);
        let configuration = serde_json::to_value(&settings.chatkit_configuration).unwrap();
        assert_eq!(
            configuration,
            json!({"automatic_thread_titling": {"enabled": true},
                   "file_upload": {"enabled": false, "max_file_size": 512, "max_files": 10},
                   "history": {"enabled": true, "recent_threads": null}})
        );
        assert_eq!(
            serde_json::to_value(&settings.workflow).unwrap(),
            json!({"id": "wf_1", "state_variables": {}, "tracing": {"enabled": true}, "version": null})
        );
    }

    #[test]
    fn expiry_takes_both_shapes_and_bad_fields_are_named() {
        assert_eq!(resolve(json!({"user": "u", "workflow": {"id": "w"}, "expires_after": 5})).unwrap().2, 5);
        let anchored =
            json!({"user": "u", "workflow": {"id": "w"}, "expires_after": {"anchor": "created_at", "seconds": 9}});
        assert_eq!(resolve(anchored).unwrap().2, 9);
        for (body, needle) in [
            (json!({"user": "", "workflow": {"id": "w"}}), "`user`"),
            (json!({"user": "u", "workflow": {"id": " "}}), "workflow.id"),
            (json!({"user": "u", "workflow": {"id": "w"}, "expires_after": 0}), "expires_after"),
            (json!({"user": "u", "workflow": {"id": "w"}, "expires_after": {"anchor": "now", "seconds": 3}}), "anchor"),
            (
                json!({"user": "u", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 0}}),
                "rate_limits",
            ),
            (json!({"user": "u", "workflow": {"id": "w", "state_variables": {"k": [1]}}}), "state_variables.k"),
            (
                json!({"user": "u", "workflow": {"id": "w"}, "chatkit_configuration": {"file_upload": {"max_file_size": 600}}}),
                "max_file_size",
            ),
            (json!({"user": "u", "workflow": {"id": "w"}, "surprise": 1}), "surprise"),
            (json!({"workflow": {"id": "w"}}), "user"),
        ] {
            let error = resolve(body.clone()).unwrap_err();
            assert!(error.contains(needle), "{body}: {error}");
        }
    }
}
