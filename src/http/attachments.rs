//! Two-phase upload of attachment bytes, and serving them back for previews.

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Deserialize;

use super::{read_body, ApiError, State};
use crate::engine::Upload;

/// The capability a link carries: who owns the attachment, and its secret.
#[derive(Deserialize)]
pub struct Capability {
    owner: String,
    token: String,
}

/// Accepts `multipart/form-data` with a `file` field (what ChatKit.js sends)
/// or the raw bytes as the body.
pub async fn upload(
    request: HttpRequest,
    path: web::Path<String>,
    capability: web::Query<Capability>,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let limit = state.max_upload_bytes;
    let content_type = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let upload = if content_type.as_deref().is_some_and(|value| value.starts_with("multipart/form-data")) {
        file_field(Multipart::new(request.headers(), payload), limit).await?
    } else {
        Upload { bytes: read_body(&request, payload, limit).await?, mime_type: content_type }
    };
    let attachment =
        state.engine.upload_attachment(&path.into_inner(), &capability.owner, &capability.token, upload).await?;
    Ok(HttpResponse::Ok().json(attachment))
}

/// The `file` field's bytes and media type.
async fn file_field(mut multipart: Multipart, limit: usize) -> Result<Upload, ApiError> {
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
        if field.name() != Some("file") {
            continue;
        }
        let mime_type = field.content_type().map(ToString::to_string);
        let mut bytes = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(format!("upload exceeds the limit of {limit} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok(Upload { bytes: bytes.freeze(), mime_type });
    }
    Err(ApiError::bad_request("multipart body has no `file` field"))
}

pub async fn content(
    path: web::Path<String>,
    capability: web::Query<Capability>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let content = state.engine.attachment_content(&path.into_inner(), &capability.owner, &capability.token).await?;
    Ok(HttpResponse::Ok().content_type(content.mime_type).body(content.bytes))
}
