//! JSON errors (docs/design.md §5): `{"error": {"code", "message", "details"}}` with the right status,
//! and extractors whose rejections use the same shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`not_found`, `forbidden`, …).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Extra structured details.
    pub details: Option<serde_json::Value>,
}

/// The error body, as documented in OpenAPI.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inner error object.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: String,
    /// Details.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// The same error, about one field of the request body (`details.field`), so a form can
    /// show it beside that field.
    pub fn at_field(mut self, field: &str) -> Self {
        self.details = Some(serde_json::json!({ "field": field }));
        self
    }
    /// 500, without leaking internals beyond the message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_string(), message: self.message, details: self.details },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<bams_catalog::CatalogError> for ApiError {
    fn from(e: bams_catalog::CatalogError) -> Self {
        use bams_catalog::CatalogError as C;
        match e {
            C::NotFound(m) => Self::not_found(format!("{m} not found")),
            C::Conflict(m) => Self::conflict(m),
            C::Invalid(m) => Self::bad_request(m),
            C::Unauthorized(m) => Self::unauthorized(m),
            C::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            C::Db(e) => {
                tracing::error!(error = %e, "catalog error");
                Self::internal("catalog error")
            }
        }
    }
}

impl From<bams_store::Error> for ApiError {
    fn from(e: bams_store::Error) -> Self {
        use bams_store::ErrorKind as K;
        let msg = e.to_string();
        match e.kind() {
            K::NotFound => Self::not_found(msg),
            K::InvalidInput | K::WrongPassword => Self::bad_request(msg),
            K::Conflict => Self::conflict(msg),
            K::Corrupt => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", msg),
            K::Transient => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg),
            K::Cancelled => Self::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled", msg),
            K::Io | K::Other => Self::internal(msg),
        }
    }
}

impl From<bams_director::RepoPoolError> for ApiError {
    fn from(e: bams_director::RepoPoolError) -> Self {
        use bams_director::RepoPoolError as R;
        match e {
            R::Catalog(c) => c.into(),
            R::Store(s) => s.into(),
            R::Invalid(m) => Self::bad_request(m),
            R::Io(m) => Self::internal(m),
        }
    }
}

impl From<bams_images::ImageError> for ApiError {
    fn from(e: bams_images::ImageError) -> Self {
        use bams_images::ImageError as I;
        match e {
            I::Catalog(c) => c.into(),
            I::Repo(r) => r.into(),
            I::Store(s) => s.into(),
            I::Invalid(m) => Self::bad_request(m),
            I::NotFound(m) => Self::not_found(format!("{m} not found")),
            I::Conflict(m) => Self::conflict(m),
            I::Unauthorized(m) => Self::unauthorized(m),
            I::Internal(m) => Self::internal(m),
        }
    }
}

impl From<bams_appliance::ApplianceError> for ApiError {
    fn from(e: bams_appliance::ApplianceError) -> Self {
        use bams_appliance::runner::RunError as R;
        use bams_appliance::ApplianceError as D;
        match e {
            D::Invalid(m) => Self::bad_request(m),
            D::Conflict(m) => Self::conflict(m),
            D::NotFound(m) => Self::not_found(format!("{m} not found")),
            D::Unsupported(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unsupported", m),
            // A managed daemon or tool that is missing: 503 with what is missing.
            D::Command(r) if r.unavailable().is_some() => {
                let mut err =
                    Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", r.unavailable().unwrap_or_default());
                if let R::Failed { cmd, stderr, .. } = &r {
                    err.details = Some(serde_json::json!({"command": cmd, "stderr": stderr}));
                }
                err
            }
            D::Command(R::Failed { cmd, status, stderr }) => {
                // The OS said no: 502 with what it said, so the operator sees the real cause.
                let mut err = Self::new(StatusCode::BAD_GATEWAY, "command_failed", format!("{cmd} failed"));
                err.details = Some(serde_json::json!({"command": cmd, "exit_status": status, "stderr": stderr}));
                err
            }
            D::Command(other) => Self::new(StatusCode::BAD_GATEWAY, "command_failed", other.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "invalid_request" };
        Self::new(status, code, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("task failed: {e}"))
    }
}

/// `Json` whose rejections are JSON errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Path` whose rejections are JSON errors.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `Query` whose rejections are JSON errors.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
