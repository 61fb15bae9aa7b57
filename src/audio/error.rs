//! The one error type of the audio module. Every variant names what failed and, where there is
//! something to do about it, what to do; [`Error::kind`] sorts them for exit codes.

use std::io;
use std::path::PathBuf;

/// What went wrong moving audio.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named device does not exist, or cannot be opened in the wanted direction and format.
    /// `pipe-audio devices` lists what exists.
    #[error("audio device: {0}")]
    Device(String),
    /// A format, sample encoding, rate or channel layout this module does not read or write.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The input ended before its own header said it would (a cut-off download or copy).
    #[error("truncated input: {0}")]
    Truncated(String),
    /// The input is not what it claims to be: bad magic, bad checksum, inconsistent header.
    #[error("corrupt input: {0}")]
    Corrupt(String),
    /// Reading or writing a file (or stdin/stdout) failed; `path` is `-` for the standard streams.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file, or `-`.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The Opus codec refused an operation (bad parameters, or a packet it cannot decode).
    #[error("opus: {0}")]
    Codec(String),
}

/// Coarse classes of [`Error`], one exit code each in `pipe-audio`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// [`Error::Device`].
    Device,
    /// [`Error::Unsupported`].
    Unsupported,
    /// [`Error::Truncated`] or [`Error::Corrupt`] (or a codec error on input).
    BadInput,
    /// [`Error::Io`] other than a broken pipe.
    Io,
    /// The reader of our output went away (`| head`): not a failure.
    BrokenPipe,
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Device(_) => ErrorKind::Device,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Truncated(_) | Error::Corrupt(_) | Error::Codec(_) => ErrorKind::BadInput,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe => {
                ErrorKind::BrokenPipe
            }
            Error::Io { .. } => ErrorKind::Io,
        }
    }
}

#[cfg(feature = "calls")]
impl From<opus::Error> for Error {
    fn from(e: opus::Error) -> Error {
        Error::Codec(e.to_string())
    }
}

/// The module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
