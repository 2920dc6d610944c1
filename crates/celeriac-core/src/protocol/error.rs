//! Why a message cannot be read ([`DecodeError`], [`DecodeErrorKind`]) and why a signature
//! cannot be sent ([`SignatureError`]).

/// Why a message is not a task message celeriac can run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// The task id, when the headers had one (so a FAILURE can be stored for it).
    pub task_id: Option<String>,
    /// The task name, when the headers had one.
    pub task_name: Option<String>,
}

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// A serializer other than JSON; pickle lands here and is never executed.
    #[error("refusing to deserialize untrusted content of type {short} ({content_type})")]
    ContentDisallowed {
        /// The MIME type.
        content_type: String,
        /// Celery's short name for it (`pickle`, `yaml`, `msgpack`).
        short: String,
    },
    /// A `compression` header celeriac does not decompress.
    #[error("unsupported compression `{0}`")]
    UnsupportedCompression(String),
    /// The body is not valid JSON (or not UTF-8).
    #[error("can't decode message body: {0}")]
    InvalidJson(String),
    /// The body is JSON but not `[args, kwargs, embed]`.
    #[error("message body has the wrong shape: {0}")]
    BodyShape(String),
    /// A required header (`task` or `id`) is absent.
    #[error("message has no `{0}` header")]
    MissingHeader(&'static str),
    /// A header has a value of the wrong type or an unparseable time.
    #[error("header `{name}` is invalid: {reason}")]
    BadHeader {
        /// The header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// An error of `kind` with no task id or name known.
    pub fn new(kind: DecodeErrorKind) -> Self {
        Self {
            kind,
            task_id: None,
            task_name: None,
        }
    }

    /// Celery's exception class name for this error, used in the FAILURE record.
    pub fn exc_type(&self) -> &'static str {
        match self.kind {
            DecodeErrorKind::ContentDisallowed { .. } => "ContentDisallowed",
            DecodeErrorKind::InvalidJson(_) | DecodeErrorKind::UnsupportedCompression(_) => {
                "DecodeError"
            }
            _ => "InvalidTaskError",
        }
    }

    /// The Python module of [`exc_type`](Self::exc_type).
    pub fn exc_module(&self) -> &'static str {
        match self.kind {
            DecodeErrorKind::ContentDisallowed { .. } => "kombu.exceptions",
            DecodeErrorKind::InvalidJson(_) | DecodeErrorKind::UnsupportedCompression(_) => {
                "kombu.exceptions"
            }
            _ => crate::state::CELERY_EXCEPTIONS,
        }
    }
}

/// Why a signature could not be turned into a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot send `{task}`: {reason}")]
pub struct SignatureError {
    /// The task name.
    pub task: String,
    /// What is wrong.
    pub reason: String,
}
