//! Machine-readable failure reasons carried by `BackupFailed.reason`. They are part of
//! the contract: alert rules match on them, so never rename one.

/// The job request was not valid JSON or lacked a required field.
pub const MALFORMED_REQUEST: &str = "malformed_request";
/// The job request was larger than the scheduler accepts.
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// The request named a source that is not configured.
pub const UNKNOWN_SOURCE: &str = "unknown_source";
/// The request named a source with characters outside `[a-z0-9_-]`.
pub const INVALID_SOURCE_NAME: &str = "invalid_source_name";
/// A protobuf message on a work subject could not be decoded.
pub const MALFORMED_MESSAGE: &str = "malformed_message";
/// The database refused the credentials.
pub const AUTH_FAILED: &str = "auth_failed";
/// The source's password env var or file is missing or unreadable.
pub const CREDENTIALS_MISSING: &str = "credentials_missing";
/// The database server could not be reached.
pub const UNREACHABLE: &str = "unreachable";
/// The database named by the source does not exist.
pub const DATABASE_NOT_FOUND: &str = "database_not_found";
/// The backup role lacks a privilege.
pub const PERMISSION_DENIED: &str = "permission_denied";
/// The dump tool is not installed or cannot run.
pub const DUMP_TOOL_MISSING: &str = "dump_tool_missing";
/// The dump tool failed for another reason (its message is included).
pub const DUMP_FAILED: &str = "dump_failed";
/// A backup of the source was already running; the job was skipped.
pub const ALREADY_RUNNING: &str = "already_running";
/// The server killed the dump's cursor (killCursors, a restart or a failover):
/// the dump is retried.
pub const CURSOR_KILLED: &str = "cursor_killed";
/// The job ran past its deadline.
pub const TIMEOUT: &str = "timeout";
/// The spool could not be written or read.
pub const SPOOL_ERROR: &str = "spool_error";
/// The dump files announced for a job are not in this uploader's spool.
pub const SPOOL_MISSING: &str = "spool_missing";
/// A file's checksum differed from the one the dumper recorded.
pub const CHECKSUM_MISMATCH: &str = "checksum_mismatch";
/// The object store failed.
pub const STORAGE_ERROR: &str = "storage_error";
/// The engine of a source is not supported by this worker.
pub const UNSUPPORTED_ENGINE: &str = "unsupported_engine";
/// The job was retried as often as allowed.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// An unexpected internal error (a bug: please report it).
pub const INTERNAL: &str = "internal";
/// A notification channel could not be reached or refused the message.
pub const NOTIFICATION_FAILED: &str = "notification_failed";
/// The only dump tool found is older than the database server.
pub const DUMP_TOOL_TOO_OLD: &str = "dump_tool_too_old";
/// The spool's disk is full.
pub const SPOOL_FULL: &str = "spool_full";
/// Continuous capture lost changes: its resume point is no longer in the server's
/// history (the oplog rolled over, or capture was down too long).
pub const HISTORY_LOST: &str = "history_lost";
/// The server cannot serve change streams (a standalone server): continuous
/// capture is impossible.
pub const NO_CHANGE_STREAMS: &str = "no_change_streams";

/// A physical PostgreSQL source's server is not set up for WAL archiving
/// (`wal_level = minimal`, `archive_mode = off`): the message names the setting.
pub const ARCHIVING_NOT_CONFIGURED: &str = "archiving_not_configured";
/// `ferry wal-push` could not store a WAL file (PostgreSQL retries it).
pub const WAL_ARCHIVE_FAILED: &str = "wal_archive_failed";
