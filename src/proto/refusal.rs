//! An ERROR of ours and why: refusing a request (option negotiation, path
//! resolution, limits) or ending a transfer under way (disk, file changed,
//! shutdown). The code and message go on the wire; the cause goes to the
//! counters and the logs.

use super::wire::ErrorCode;

/// What kind of reason a refusal has, for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// No such file (ERROR 1).
    NotFound,
    /// Not allowed: outside the root, not a regular file, permissions,
    /// uploads disabled (ERROR 2).
    Access,
    /// A per-client limit (ERROR 0).
    Limit,
    /// No session slot or descriptor free (ERROR 0).
    Busy,
    /// The request is not well-formed (ERROR 4).
    Malformed,
    /// An option cannot be honoured (ERROR 8).
    Option,
    /// The upload does not fit, or the disk is full (ERROR 3).
    Disk,
    /// Anything else the server could not do (ERROR 0).
    Internal,
    /// The file sent shrank or changed under its map (ERROR 0).
    FileChanged,
    /// An upload whose size differs from the tsize it announced (ERROR 0).
    SizeMismatch,
    /// The server is shutting down (ERROR 0).
    Shutdown,
}

impl Cause {
    /// The word for this cause in logs, JSON and metric labels (a contract:
    /// see README "Transfer logs" and docs/metrics.md).
    pub fn label(self) -> &'static str {
        match self {
            Cause::NotFound => "not_found",
            Cause::Access => "access",
            Cause::Limit => "limit",
            Cause::Busy => "busy",
            Cause::Malformed => "malformed",
            Cause::Option => "option",
            Cause::Disk => "disk",
            Cause::Internal => "internal",
            Cause::FileChanged => "file_changed",
            Cause::SizeMismatch => "size_mismatch",
            Cause::Shutdown => "shutdown",
        }
    }
}

/// The ERROR a refused request gets, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: &'static str,
    pub cause: Cause,
}

impl Refusal {
    pub const fn new(code: ErrorCode, message: &'static str, cause: Cause) -> Refusal {
        Refusal {
            code,
            message,
            cause,
        }
    }

    pub const NOT_FOUND: Refusal =
        Refusal::new(ErrorCode::FileNotFound, "File not found", Cause::NotFound);
    pub const ACCESS: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Access violation",
        Cause::Access,
    );
    /// A `..` above the root, or a symlink out of it.
    pub const OUTSIDE_ROOT: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Outside the served directory",
        Cause::Access,
    );
    /// A relative name where only absolute ones are served (tftpd-hpa's
    /// words for it, without -s).
    pub const NOT_ABSOLUTE: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Only absolute filenames allowed",
        Cause::Access,
    );
    pub const IS_DIRECTORY: Refusal =
        Refusal::new(ErrorCode::AccessViolation, "Is a directory", Cause::Access);
    pub const NOT_REGULAR: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Not a regular file",
        Cause::Access,
    );
    pub const NAME_TOO_LONG: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "File name too long",
        Cause::Access,
    );
    pub const EXISTS: Refusal =
        Refusal::new(ErrorCode::FileExists, "File already exists", Cause::Access);
    pub const OUTSIDE_UPLOAD_DIR: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Uploads are accepted only in the upload directory",
        Cause::Access,
    );
    pub const BEING_WRITTEN: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "File is being written by another transfer",
        Cause::Busy,
    );
    pub const SIZE_MISMATCH: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "Received size differs from tsize",
        Cause::SizeMismatch,
    );
    pub const UPLOADS_DISABLED: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Uploads are disabled",
        Cause::Access,
    );
    pub const BUSY: Refusal =
        Refusal::new(ErrorCode::NotDefined, "Server busy, try again", Cause::Busy);
    pub const CLIENT_LIMIT: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "Too many transfers from this address",
        Cause::Limit,
    );
    pub const DISK_FULL: Refusal = Refusal::new(
        ErrorCode::DiskFull,
        "Disk full or allocation exceeded",
        Cause::Disk,
    );
    /// The file system refused (modes), or a file without the o+r bit
    /// and no `--permissive`.
    pub const PERMISSION_DENIED: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Permission denied",
        Cause::Access,
    );
    pub const CANNOT_READ: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Cannot read file",
        Cause::Access,
    );
    pub const CANNOT_CREATE: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Cannot create file",
        Cause::Access,
    );
    pub const NETASCII_TOO_LARGE: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "File too large for netascii; use octet",
        Cause::Limit,
    );
    pub const FILE_CHANGED: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "File changed during transfer",
        Cause::FileChanged,
    );
    pub const SHUTTING_DOWN: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "Server shutting down",
        Cause::Shutdown,
    );
    pub const OVERSIZED_DATA: Refusal = Refusal::new(
        ErrorCode::IllegalOperation,
        "DATA larger than the negotiated blksize",
        Cause::Malformed,
    );
    pub const BAD_OACK: Refusal = Refusal::new(ErrorCode::OptionRefused, "Bad OACK", Cause::Option);
    /// A session ended without a reason of its own (a bug, or teardown).
    pub const INTERNAL: Refusal =
        Refusal::new(ErrorCode::NotDefined, "Internal error", Cause::Internal);
    /// A remap rule with the `a` flag matched (tftpd-hpa's text; the
    /// rule's own message, if it has one, goes on the wire instead).
    pub const REMAP_DENIED: Refusal =
        Refusal::new(ErrorCode::AccessViolation, "Access denied", Cause::Access);
    /// The remap rules hit their step bound (a loop in the map file).
    pub const REMAP_FAILURE: Refusal = Refusal::new(
        ErrorCode::AccessViolation,
        "Remap table failure",
        Cause::Access,
    );
    /// Every port of `--port-range` is taken by other transfers.
    pub const PORT_RANGE_FULL: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "No free transfer port, try again",
        Cause::Busy,
    );
    pub const NO_TRANSFER_PORT: Refusal = Refusal::new(
        ErrorCode::NotDefined,
        "Cannot open a transfer port",
        Cause::Internal,
    );
}
