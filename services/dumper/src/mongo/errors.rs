//! MongoDB driver errors mapped to `BackupFailed` reason codes and messages that say
//! what to do.

use ferry_proto::reason;
use ferry_runtime::HandlerError;
use mongodb::error::{Error, ErrorKind};

pub use ferry_mongo::{code, server_code};

/// Whether the error says the cursor is gone (killed, timed out, or its collection
/// dropped), which is worth checking against the collection's existence.
pub fn cursor_lost(e: &Error) -> bool {
    matches!(
        server_code(e),
        Some(
            code::CURSOR_NOT_FOUND
                | code::CURSOR_KILLED
                | code::QUERY_PLAN_KILLED
                | code::NAMESPACE_NOT_FOUND
        )
    )
}

/// Maps an error of `what` (e.g. "reading shop.orders") on source `source`.
pub fn classify(source: &str, what: &str, e: &Error) -> HandlerError {
    let detail = format!("{source}: {what} failed: {e}");
    match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => HandlerError::permanent(
            reason::AUTH_FAILED,
            format!(
                "{detail}; check the user in the source url (and authSource) and its password_env or password_file"
            ),
        ),
        ErrorKind::Command(c) if c.code == code::AUTHENTICATION_FAILED => HandlerError::permanent(
            reason::AUTH_FAILED,
            format!(
                "{detail}; check the user in the source url (and authSource) and its password_env or password_file"
            ),
        ),
        ErrorKind::Command(c) if c.code == code::UNAUTHORIZED => HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!(
                "{detail}; grant the backup user the `backup` role (or `read` on that database)"
            ),
        ),
        ErrorKind::Command(c)
            if matches!(
                c.code,
                code::CURSOR_NOT_FOUND | code::CURSOR_KILLED | code::QUERY_PLAN_KILLED
            ) =>
        {
            HandlerError::retryable(
                reason::CURSOR_KILLED,
                format!(
                    "{detail}; the server killed the dump's cursor (killCursors, a restart, a failover or an idle timeout); the job is retried"
                ),
            )
        }
        ErrorKind::Command(c) if c.code == code::MAX_TIME_EXPIRED => HandlerError::permanent(
            reason::TIMEOUT,
            format!("{detail}; the server ran out of time: raise sources.timeout"),
        ),
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => HandlerError::retryable(
            reason::UNREACHABLE,
            format!("{detail}; check that the server is up and reachable from the dumper"),
        ),
        ErrorKind::InvalidArgument { .. } | ErrorKind::InvalidTlsConfig { .. } => {
            HandlerError::permanent(
                reason::DUMP_FAILED,
                format!("{detail}; check the source's url"),
            )
        }
        _ => HandlerError::retryable(reason::DUMP_FAILED, detail),
    }
}

/// The spool could not be written.
pub fn spool(source: &str, what: &str, e: &std::io::Error) -> HandlerError {
    HandlerError::retryable(
        reason::SPOOL_ERROR,
        format!(
            "{source}: writing {what} into the spool failed: {e}; check the spool's free space"
        ),
    )
}
