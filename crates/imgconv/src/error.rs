//! The one public error type: a stable [`ErrorKind`], a message, context and the cause.
//!
//! The message says what went wrong in the user's terms; the cause (an `io::Error`, say) stays
//! in [`std::error::Error::source`] and is not repeated in the message. Callers branch on
//! [`Error::kind`], never on the text.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::model::Format;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What class of failure an [`Error`] is. Stable: the CLI maps each kind to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A caller-supplied value is invalid (bad option, unknown format name or extension).
    InvalidArgument,
    /// The input does not exist.
    NotFound,
    /// The input exists but is not something an image can be read from (a directory, say).
    NotAFile,
    /// The output exists and overwriting was not asked for.
    AlreadyExists,
    /// Reading or writing failed at the operating-system level.
    Io,
    /// The output device or file system is full, or a file-size limit was hit.
    StorageFull,
    /// The image is malformed: a header, table or field breaks the format's rules.
    InvalidImage,
    /// The image uses a feature this build does not support (or refuses by policy).
    Unsupported,
    /// A value in the image exceeds a limit that protects memory, time or disk.
    LimitExceeded,
    /// The operation was cancelled (Ctrl-C, a signal, or a caller's cancel token).
    Cancelled,
    /// A remote service refused the credentials or the permission (wrong keys, a bad
    /// signature, access denied).
    AccessDenied,
    /// A bug in imgconv: a worker thread panicked, or an internal invariant broke. Please
    /// report it.
    Internal,
}

impl ErrorKind {
    /// A short, stable, lower-case name (used in JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::NotFound => "not-found",
            ErrorKind::NotAFile => "not-a-file",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::Io => "io",
            ErrorKind::StorageFull => "storage-full",
            ErrorKind::InvalidImage => "invalid-image",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::AccessDenied => "access-denied",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Where an error happened: any of the file, the format and the byte offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Context {
    /// The file being read or written.
    pub path: Option<PathBuf>,
    /// The image format being parsed or produced.
    pub format: Option<Format>,
    /// The byte offset (in the file or the virtual disk, as the message says).
    pub offset: Option<u64>,
}

/// imgconv's error: a kind, a message, context and an optional cause.
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Context,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            context: Context::default(),
            source: None,
        }
    }

    /// An [`ErrorKind::Io`] error (or [`ErrorKind::StorageFull`] / [`ErrorKind::NotFound`]
    /// where the OS error says so) with `message` and the cause kept as source.
    pub fn io(message: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::StorageFull
            | io::ErrorKind::FileTooLarge
            | io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Io,
        };
        Error::new(kind, message).with_source(err)
    }

    /// Shorthand for an [`ErrorKind::InvalidImage`] error at a byte offset.
    pub fn invalid_image(format: Format, offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidImage, message)
            .with_format(format)
            .with_offset(offset)
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for the [`ErrorKind::Cancelled`] error.
    pub fn cancelled() -> Self {
        Error::new(ErrorKind::Cancelled, "cancelled")
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(err));
        self
    }

    /// The error as one line followed by its causes (`message: cause: cause`), as a log line
    /// or a job's stored failure wants it.
    pub fn to_string_with_causes(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            line.push_str(": ");
            line.push_str(&c.to_string());
            cause = c.source();
        }
        line
    }

    /// The same error with `more` appended to its message (its kind, context and cause kept).
    pub fn with_note(mut self, more: &str) -> Self {
        self.message.push_str(more);
        self
    }

    /// Attach the path of the file concerned (kept if one is already set).
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        if self.context.path.is_none() {
            self.context.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Attach the format concerned (kept if one is already set).
    pub fn with_format(mut self, format: Format) -> Self {
        if self.context.format.is_none() {
            self.context.format = Some(format);
        }
        self
    }

    /// Attach the byte offset concerned (kept if one is already set).
    pub fn with_offset(mut self, offset: u64) -> Self {
        if self.context.offset.is_none() {
            self.context.offset = Some(offset);
        }
        self
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context or cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where it happened.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.context.path {
            write!(f, "{}: ", path.display())?;
        }
        f.write_str(&self.message)?;
        match (self.context.format, self.context.offset) {
            (Some(fmt), Some(off)) => write!(f, " ({fmt} at byte {off})"),
            (None, Some(off)) => write!(f, " (at byte {off})"),
            (Some(fmt), None) => write!(f, " ({fmt})"),
            (None, None) => Ok(()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("context", &self.context)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_puts_path_first_and_keeps_the_cause_out_of_the_message() {
        let err = Error::io("cannot read", io::Error::other("boom")).with_path("/x/in.raw");
        assert_eq!(err.to_string(), "/x/in.raw: cannot read");
        assert_eq!(err.source().map(|s| s.to_string()).as_deref(), Some("boom"));
    }

    #[test]
    fn io_errors_are_classified_by_their_os_kind() {
        let full = Error::io("w", io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(full.kind(), ErrorKind::StorageFull);
        let missing = Error::io("r", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn invalid_image_reports_format_and_offset() {
        let err = Error::invalid_image(Format::Raw, 512, "bad");
        assert_eq!(err.to_string(), "bad (raw at byte 512)");
        assert_eq!(err.kind(), ErrorKind::InvalidImage);
    }
}
