//! The admin key that guards the `/v1` API, and `AdminKey`, the extractor that
//! checks it. Handlers take an `AdminKey` as their first argument, so the key
//! is checked before anything else of the request is read.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest};

use super::state_of;
use crate::http::ApiError;
use crate::secret::Secret;

/// Who may call the `/v1` API.
#[derive(Clone, Debug)]
pub enum AdminAccess {
    /// Any caller: only when no key is configured and the gateway binds loopback.
    Open,
    /// Callers presenting one of these keys as a bearer token.
    Keys(Vec<Secret>),
    /// Nobody: no key configured on a non-loopback bind.
    Disabled,
}

impl AdminAccess {
    fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        match self {
            AdminAccess::Open => Ok(()),
            AdminAccess::Disabled => Err(ApiError::forbidden(
                "admin_disabled",
                "the admin API is disabled: set CHATKIT_ADMIN_KEYS to enable it",
            )),
            AdminAccess::Keys(keys) => {
                let token = request
                    .headers()
                    .get(AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .ok_or_else(|| ApiError::unauthorized("the admin API needs `Authorization: Bearer <key>`"))?;
                if keys.iter().any(|key| key.matches(token.trim())) {
                    Ok(())
                } else {
                    Err(ApiError::unauthorized("unknown admin key"))
                }
            }
        }
    }
}

/// Proof that a request may call the `/v1` API: extracted only when the
/// request presents an admin key (or the API is open).
pub(super) struct AdminKey;

impl FromRequest for AdminKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state_of(request).and_then(|state| state.admin.check(request)).map(|()| AdminKey))
    }
}
