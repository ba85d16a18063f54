//! The store's error type. Every error maps to exactly one errno (see [`StoreError::errno`]),
//! and I/O errors keep their `io::Error` so the errno survives added context.

use std::fmt;
use std::io;

/// An error from a store operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O call failed; `context` names the operation and path.
    Io {
        context: String,
        source: io::Error,
    },
    /// The store's files are damaged.
    Corrupted(String),
    /// The directory is not a genfs store (or one of another format version).
    NotAStore(String),
    /// The store's files could be changed by someone the daemon must not trust (issue 12).
    Unsafe(String),
    /// The index lost what the journal no longer holds: no tool of genfs can rebuild it; the
    /// message says what can be done.
    IndexLost(String),
    /// A previous journal sync failed: the store refuses writes until remounted (G5).
    ReadOnlyAfterIoFailure,
    /// The store was opened read-only.
    ReadOnly,
    NotFound,
    Exists,
    NotEmpty,
    NotDir,
    IsDir,
    NameTooLong,
    InvalidName,
    InvalidArgument,
    FileTooBig,
    NoAttribute,
    AttributeTooBig,
    Stale,
    NotPermitted,
    /// The caller lacks a permission (EACCES; NotPermitted is EPERM).
    PermissionDenied,
    Busy,
    CrossDevice,
    /// An operation or flag genfs does not offer (EOPNOTSUPP).
    NotSupported,
    /// An ioctl genfs does not answer (ENOTTY).
    NotTty,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Wraps an `io::Error` with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    /// The errno the kernel should see for this error; EIO for anything without one.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::Corrupted(_) => libc::EIO,
            StoreError::NotAStore(_) => libc::EINVAL,
            StoreError::Unsafe(_) => libc::EPERM,
            StoreError::IndexLost(_) => libc::EIO,
            StoreError::ReadOnlyAfterIoFailure | StoreError::ReadOnly => libc::EROFS,
            StoreError::NotFound => libc::ENOENT,
            StoreError::Exists => libc::EEXIST,
            StoreError::NotEmpty => libc::ENOTEMPTY,
            StoreError::NotDir => libc::ENOTDIR,
            StoreError::IsDir => libc::EISDIR,
            StoreError::NameTooLong => libc::ENAMETOOLONG,
            StoreError::InvalidName | StoreError::InvalidArgument => libc::EINVAL,
            StoreError::FileTooBig => libc::EFBIG,
            StoreError::NoAttribute => libc::ENODATA,
            StoreError::AttributeTooBig => libc::E2BIG,
            StoreError::Stale => libc::ESTALE,
            StoreError::NotPermitted => libc::EPERM,
            StoreError::PermissionDenied => libc::EACCES,
            StoreError::Busy => libc::EBUSY,
            StoreError::CrossDevice => libc::EXDEV,
            StoreError::NotSupported => libc::EOPNOTSUPP,
            StoreError::NotTty => libc::ENOTTY,
        }
    }

    /// True for outcomes a caller expects in normal use (logged at trace level, not error).
    pub fn is_expected(&self) -> bool {
        !matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Corrupted(_)
                | StoreError::NotAStore(_)
                | StoreError::Unsafe(_)
                | StoreError::IndexLost(_)
                | StoreError::ReadOnlyAfterIoFailure
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { context, source } => write!(f, "{context}: {source}"),
            StoreError::Corrupted(what) => write!(f, "store is damaged: {what} (run `genfs fsck`)"),
            StoreError::NotAStore(what) | StoreError::Unsafe(what) | StoreError::IndexLost(what) => {
                write!(f, "{what}")
            }
            StoreError::ReadOnlyAfterIoFailure => {
                write!(f, "store is read-only after a failed journal sync; remount it to recover")
            }
            StoreError::ReadOnly => write!(f, "store is mounted read-only"),
            other => {
                let err = io::Error::from_raw_os_error(other.errno());
                write!(f, "{err}")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table_has_one_value_per_arm() {
        let cases = [
            (StoreError::NotFound, libc::ENOENT),
            (StoreError::Exists, libc::EEXIST),
            (StoreError::NotEmpty, libc::ENOTEMPTY),
            (StoreError::NameTooLong, libc::ENAMETOOLONG),
            (StoreError::AttributeTooBig, libc::E2BIG),
            (StoreError::FileTooBig, libc::EFBIG),
            (StoreError::ReadOnlyAfterIoFailure, libc::EROFS),
            (StoreError::io("x", io::Error::from_raw_os_error(libc::ENOSPC)), libc::ENOSPC),
            (StoreError::io("x", io::Error::other("no errno")), libc::EIO),
        ];
        for (err, errno) in cases {
            assert_eq!(err.errno(), errno, "{err:?}");
        }
    }
}
