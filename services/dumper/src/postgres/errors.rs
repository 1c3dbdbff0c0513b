//! Turning what PostgreSQL, pg_dump and the spool say into reason codes and
//! messages that tell the operator what to do.

use ferry_proto::reason;
use ferry_runtime::HandlerError;
use tokio_postgres::error::SqlState;

/// Maps pg_dump's (or pg_dumpall's) stderr to a reason code and an actionable message.
pub fn classify_tool_error(tool: &str, source: &str, db: &str, stderr: &str) -> HandlerError {
    let lower = stderr.to_lowercase();
    let detail = format!("{tool} of {source}/{db} failed: {stderr}");
    if lower.contains("password authentication failed") || lower.contains("no password supplied") {
        HandlerError::permanent(
            reason::AUTH_FAILED,
            format!("{detail}; check the source's password_env or password_file"),
        )
    } else if let Some(object) = denied_object(stderr) {
        HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!(
                "the backup role may not read {object} in database {db}: grant it SELECT on {object} (or the pg_read_all_data role), or leave it out with exclude_tables; {detail}"
            ),
        )
    } else if lower.contains("permission denied") {
        HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!("{detail}; grant the backup role the privilege named (or pg_read_all_data)"),
        )
    } else if lower.contains("database") && lower.contains("does not exist") {
        HandlerError::permanent(
            reason::DATABASE_NOT_FOUND,
            format!("{detail}; check the database name"),
        )
    } else if lower.contains("no space left") {
        spool_full(&detail)
    } else if lower.contains("could not connect")
        || lower.contains("connection refused")
        || lower.contains("could not translate host")
    {
        HandlerError::retryable(
            reason::UNREACHABLE,
            format!("{detail}; check that the server is up and reachable from the dumper"),
        )
    } else {
        HandlerError::retryable(reason::DUMP_FAILED, detail)
    }
}

/// "permission denied for table secrets" → "table secrets".
fn denied_object(stderr: &str) -> Option<String> {
    let lower = stderr.to_lowercase();
    let at = lower.find("permission denied for ")? + "permission denied for ".len();
    let rest = &stderr[at..];
    let mut words = rest.split_whitespace();
    let kind = words.next()?;
    let name = words.next()?.trim_end_matches([',', '.', ';']);
    Some(format!("{kind} {name}"))
}

/// The spool's disk filled up.
pub fn spool_full(detail: &str) -> HandlerError {
    HandlerError::retryable(
        reason::SPOOL_FULL,
        format!(
            "the spool's disk is full ({detail}); free space under spool.path, give it a larger volume, or lower dumper.concurrency"
        ),
    )
}

/// Maps an error writing the spool to `spool_full` or `spool_error`.
pub fn spool_io(what: &str, e: &std::io::Error) -> HandlerError {
    // ENOSPC, and EFBIG for a file-size limit: both mean "no room for the dump".
    if matches!(e.raw_os_error(), Some(28) | Some(27))
        || e.kind() == std::io::ErrorKind::StorageFull
    {
        spool_full(&format!("{what}: {e}"))
    } else {
        HandlerError::retryable(reason::SPOOL_ERROR, format!("{what}: {e}"))
    }
}

/// Maps a failed connection to the reason the operator can act on.
pub fn classify_connect_error(source: &str, db: &str, e: &tokio_postgres::Error) -> HandlerError {
    match e.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            HandlerError::permanent(
                reason::AUTH_FAILED,
                format!(
                    "{source}: the server refused the credentials for database {db} ({e}); check the user in the source url and its password_env or password_file"
                ),
            )
        }
        Some(code) if *code == SqlState::UNDEFINED_DATABASE => HandlerError::permanent(
            reason::DATABASE_NOT_FOUND,
            format!(
                "{source}: database {db} does not exist on the server; check the source's url or databases"
            ),
        ),
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!(
                "{source}: not allowed to connect to {db} ({e}); grant CONNECT to the backup role"
            ),
        ),
        _ => HandlerError::retryable(
            reason::UNREACHABLE,
            format!(
                "{source}: cannot reach the server for database {db} ({e}); check that it is up and reachable from the dumper"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_errors_map_to_reasons() {
        let cases = [
            (
                "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"x\"",
                reason::AUTH_FAILED,
            ),
            (
                "pg_dump: error: query failed: ERROR:  permission denied for table secrets",
                reason::PERMISSION_DENIED,
            ),
            (
                "pg_dump: error: connection to server failed: FATAL:  database \"nope\" does not exist",
                reason::DATABASE_NOT_FOUND,
            ),
            (
                "pg_dump: error: could not write to file: No space left on device",
                reason::SPOOL_FULL,
            ),
            (
                "pg_dump: error: connection to server at \"10.0.0.1\", port 5432 failed: Connection refused",
                reason::UNREACHABLE,
            ),
            ("pg_dump: error: something else", reason::DUMP_FAILED),
        ];
        for (stderr, expected) in cases {
            assert_eq!(
                classify_tool_error("pg_dump", "s", "d", stderr).reason(),
                expected,
                "{stderr}"
            );
        }
    }

    #[test]
    fn permission_errors_name_the_table() {
        let e = classify_tool_error(
            "pg_dump",
            "s",
            "shop",
            "pg_dump: error: query failed: ERROR:  permission denied for table secrets\npg_dump: detail: Query was: LOCK TABLE public.secrets",
        );
        assert!(
            e.message()
                .contains("may not read table secrets in database shop"),
            "{}",
            e.message()
        );
    }
}
