//! `V1Json`, the JSON body of a `/v1` request: read within the body limit and
//! parsed into its published type, or refused with a 400 that names what the
//! body should have been and what is wrong with it.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::state_of;
use crate::http::{read_body, ApiError};

/// A body type of the `/v1` API.
pub(super) trait V1Body: DeserializeOwned + 'static {
    /// What the body is, for the answer to one that does not parse:
    /// `invalid <WHAT>: <what the parser found>`.
    const WHAT: &'static str;
}

/// A parsed `/v1` body. Taken after the `AdminKey`, so a refused key never
/// reads the body.
pub(super) struct V1Json<T>(pub T);

impl<T: V1Body> FromRequest for V1Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let request = request.clone();
        let payload = payload.take();
        Box::pin(async move {
            let limit = state_of(&request)?.max_body_bytes;
            let body = read_body(&request, payload, limit).await?;
            serde_json::from_slice(&body)
                .map(V1Json)
                .map_err(|e| ApiError::bad_request(format!("invalid {}: {e}", T::WHAT)))
        })
    }
}
