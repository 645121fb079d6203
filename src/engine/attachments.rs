//! Attachments: registration, two-phase upload of the bytes, and serving them back.
//!
//! `attachments.create` answers an upload descriptor pointing at this gateway.
//! ChatKit.js then POSTs the file there (multipart, field `file`) without our
//! identity header, so upload and preview URLs are capability URLs: they carry
//! the owner and a random per-attachment token, checked against the store.
//! The bytes live in the `BlobStore`, under `attachments/<id>`, so that any
//! replica serves them; uploads no message holds expire (`sweep_uploads`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{Caller, Engine, EngineError, EngineResult};
use crate::blobs::{attachment_name, BlobError, BlobStore};
use crate::ids::UserId;
use crate::ids::{new_id, new_secret, IdKind};
use crate::protocol::{Attachment, AttachmentKind, CreateAttachmentParams, UploadDescriptor, UploadMethod};
use crate::store::Entity;

/// Keys of the attachment's integration metadata, which clients never see.
const TOKEN_KEY: &str = "access_token";
const SIZE_KEY: &str = "size";
const UPLOADED_KEY: &str = "uploaded";

/// The most expired uploads one sweep deletes, so that a pass is bounded
/// however many have piled up; the next pass takes the rest.
pub const SWEEP_BATCH: usize = 100;

/// An uploaded attachment's bytes and media type.
#[derive(Debug)]
pub struct AttachmentContent {
    pub mime_type: String,
    pub bytes: Bytes,
}

impl From<BlobError> for EngineError {
    fn from(err: BlobError) -> Self {
        match err {
            BlobError::Exists(_) => EngineError::Conflict("this upload URL has been used: the bytes are stored".into()),
            other => EngineError::Blobs(other),
        }
    }
}

/// What a client declared of an upload, and what it sent.
pub struct Upload {
    pub bytes: Bytes,
    /// The media type the upload came with (the multipart part's or the body's), if any.
    pub mime_type: Option<String>,
}

/// The owner as it appears in capability URLs: URL-safe base64 of the user id.
pub fn encode_owner(user: &UserId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(user.as_str())
}

fn decode_owner(owner: &str) -> Option<UserId> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(owner).ok()?;
    String::from_utf8(bytes).ok().map(UserId)
}

fn is_plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn metadata_str<'a>(attachment: &'a Attachment, key: &str) -> Option<&'a str> {
    attachment.metadata.as_ref()?.get(key)?.as_str()
}

impl Engine {
    pub(super) async fn create_attachment(
        &self,
        user: &UserId,
        params: CreateAttachmentParams,
        caller: &Caller,
    ) -> EngineResult<Attachment> {
        if params.name.trim().is_empty() {
            return Err(EngineError::BadRequest("params.name must not be empty".into()));
        }
        if params.mime_type.trim().is_empty() {
            return Err(EngineError::BadRequest("params.mime_type must not be empty".into()));
        }
        let size = u64::try_from(params.size)
            .map_err(|_| EngineError::BadRequest(format!("params.size must not be negative, got {}", params.size)))?;
        if size > self.settings.max_upload_bytes {
            return Err(EngineError::PayloadTooLarge(format!(
                "attachment of {size} bytes exceeds the limit of {} bytes",
                self.settings.max_upload_bytes
            )));
        }
        if let Some(session) = &caller.session {
            let upload = &session.settings.chatkit_configuration.file_upload;
            if !upload.enabled {
                return Err(EngineError::Forbidden("file uploads are disabled for this session".into()));
            }
            if let Some(max_mb) = upload.max_file_size {
                if size > u64::from(max_mb) * 1024 * 1024 {
                    return Err(EngineError::PayloadTooLarge(format!(
                        "attachment of {size} bytes exceeds this session's limit of {max_mb} MB"
                    )));
                }
            }
            if !self.sessions.admit_upload(session).await {
                return Err(EngineError::Forbidden(format!(
                    "this session may upload at most {} files",
                    upload.max_files.unwrap_or_default()
                )));
            }
        }
        let id = new_id(IdKind::Attachment);
        let token = new_secret();
        let base = format!("{}/chatkit/attachments/{id}", self.settings.public_url.trim_end_matches('/'),);
        let query = format!("owner={}&token={token}", encode_owner(user));
        let kind = if params.mime_type.starts_with("image/") {
            AttachmentKind::Image { preview_url: format!("{base}/content?{query}") }
        } else {
            AttachmentKind::File {}
        };
        let mut metadata = Map::new();
        metadata.insert(TOKEN_KEY.into(), Value::String(token));
        metadata.insert(SIZE_KEY.into(), Value::from(size));
        metadata.insert(UPLOADED_KEY.into(), Value::Bool(false));
        let attachment = Attachment {
            id,
            name: params.name,
            mime_type: params.mime_type,
            upload_descriptor: Some(UploadDescriptor {
                url: format!("{base}/upload?{query}"),
                method: UploadMethod::Post,
                headers: Default::default(),
            }),
            thread_id: None,
            metadata: Some(metadata),
            kind,
        };
        self.store.save_attachment(user, &attachment).await?;
        Ok(attachment.for_client())
    }

    pub(super) async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> EngineResult<()> {
        self.store.load_attachment(user, attachment_id).await?;
        if is_plain_id(attachment_id) {
            self.blobs.delete(&attachment_name(attachment_id)).await?;
        }
        self.store.delete_attachment(user, attachment_id).await?;
        Ok(())
    }

    /// Deletes the attachments a deleted thread's messages held, bytes first,
    /// so that a failure leaves a record that can be deleted again.
    pub(super) async fn delete_thread_attachments(&self, user: &UserId, ids: &[String]) -> EngineResult<()> {
        for id in ids.iter().filter(|id| is_plain_id(id)) {
            self.blobs.delete(&attachment_name(id)).await?;
            match self.store.delete_attachment(user, id).await {
                Ok(()) | Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// One pass of the upload sweeper: deletes up to `SWEEP_BATCH` uploads no
    /// message holds that are older than `ttl`, record first (only while still
    /// unattached), then bytes. Answers how many it deleted. Several replicas may
    /// sweep at once: each upload is deleted by one of them.
    pub async fn sweep_uploads(&self, ttl: Duration) -> EngineResult<usize> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let before = crate::store::unix_now().saturating_sub(ttl);
        let mut deleted = 0;
        for (user, id) in self.store.stale_uploads(before, SWEEP_BATCH).await? {
            if self.store.expire_upload(&user, &id).await? {
                if is_plain_id(&id) {
                    self.blobs.delete(&attachment_name(&id)).await?;
                }
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The blob store, for the turn's responder (attachments it hands the model).
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// Finds the attachment a capability URL names, or answers 404 for any
    /// mismatch so that a wrong token reveals nothing.
    async fn authorize(&self, attachment_id: &str, owner: &str, token: &str) -> EngineResult<(UserId, Attachment)> {
        let not_found = || EngineError::NotFound { entity: Entity::Attachment, id: attachment_id.to_string() };
        if !is_plain_id(attachment_id) {
            return Err(not_found());
        }
        let user = decode_owner(owner).ok_or_else(not_found)?;
        let attachment = self.store.load_attachment(&user, attachment_id).await?;
        match metadata_str(&attachment, TOKEN_KEY) {
            Some(expected) if constant_time_eq(expected.as_bytes(), token.as_bytes()) => Ok((user, attachment)),
            _ => Err(not_found()),
        }
    }

    /// Stores the bytes of a two-phase upload and marks the attachment uploaded.
    /// The URL works once: the size must be the one `attachments.create`
    /// declared, and the media type (when the upload names one) the declared one,
    /// both checked before anything is stored; bytes already stored answer 409.
    pub async fn upload_attachment(
        &self,
        attachment_id: &str,
        owner: &str,
        token: &str,
        upload: Upload,
    ) -> EngineResult<Attachment> {
        let (user, mut attachment) = self.authorize(attachment_id, owner, token).await?;
        if is_uploaded(&attachment) {
            return Err(EngineError::Conflict(format!("attachment `{attachment_id}` has already been uploaded")));
        }
        let bytes = upload.bytes;
        if bytes.len() as u64 > self.settings.max_upload_bytes {
            return Err(EngineError::PayloadTooLarge(format!(
                "upload of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                self.settings.max_upload_bytes
            )));
        }
        let declared = attachment.metadata.as_ref().and_then(|m| m.get(SIZE_KEY)).and_then(Value::as_u64);
        if let Some(declared) = declared.filter(|declared| *declared != bytes.len() as u64) {
            return Err(EngineError::BadRequest(format!(
                "upload of {} bytes differs from the size of {declared} bytes declared in attachments.create",
                bytes.len()
            )));
        }
        if let Some(sent) = upload.mime_type.as_deref().map(media_type).filter(|sent| is_specific(sent)) {
            if !sent.eq_ignore_ascii_case(media_type(&attachment.mime_type)) {
                return Err(EngineError::BadRequest(format!(
                    "upload of type `{sent}` differs from the type `{}` declared in attachments.create",
                    attachment.mime_type
                )));
            }
        }
        self.blobs.put(&attachment_name(attachment_id), bytes).await?;
        attachment.upload_descriptor = None;
        let metadata = attachment.metadata.get_or_insert_with(Map::new);
        metadata.insert(UPLOADED_KEY.into(), Value::Bool(true));
        self.store.save_attachment(&user, &attachment).await?;
        Ok(attachment.for_client())
    }

    /// The bytes of an uploaded attachment, for preview URLs.
    pub async fn attachment_content(
        &self,
        attachment_id: &str,
        owner: &str,
        token: &str,
    ) -> EngineResult<AttachmentContent> {
        let (_, attachment) = self.authorize(attachment_id, owner, token).await?;
        if !is_uploaded(&attachment) {
            return Err(EngineError::Conflict(format!("attachment `{attachment_id}` has not been uploaded yet")));
        }
        let not_found = || EngineError::NotFound { entity: Entity::Attachment, id: attachment_id.to_string() };
        let bytes = self.blobs.get(&attachment_name(attachment_id)).await?.ok_or_else(not_found)?;
        Ok(AttachmentContent { mime_type: attachment.mime_type, bytes })
    }
}

fn is_uploaded(attachment: &Attachment) -> bool {
    attachment.metadata.as_ref().and_then(|m| m.get(UPLOADED_KEY)).and_then(Value::as_bool) == Some(true)
}

/// A media type without its parameters (`text/plain; charset=utf-8` is `text/plain`).
fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}

/// Whether an upload's media type says what the file is: browsers send
/// `application/octet-stream` (or nothing) for a type they do not know.
fn is_specific(media_type: &str) -> bool {
    !media_type.is_empty() && !media_type.eq_ignore_ascii_case("application/octet-stream")
}

/// Compares secrets without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_through_urls() {
        let user = UserId("alice@example.com/ü".into());
        assert_eq!(decode_owner(&encode_owner(&user)), Some(user));
        assert_eq!(decode_owner("!!"), None);
    }

    #[test]
    fn only_plain_ids_reach_the_filesystem() {
        assert!(is_plain_id("atc_0123abcd"));
        assert!(!is_plain_id("../etc/passwd"));
        assert!(!is_plain_id(""));
    }

    #[test]
    fn media_types_lose_their_parameters() {
        assert_eq!(media_type("text/plain; charset=utf-8"), "text/plain");
        assert!(is_specific("image/png"));
        assert!(!is_specific("application/octet-stream"));
        assert!(!is_specific(""));
    }

    #[test]
    fn compares_secrets() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
