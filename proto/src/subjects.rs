//! NATS subject, stream, consumer and bucket names: versioned, in one place.

/// JSON job requests published by hand or by `ferry backup now` (core NATS, answered
/// by a scheduler replica when the publisher asks for a reply).
pub const JOB_REQUEST: &str = "ferry.v1.jobs.request";
/// `JobRequested` messages for the dumpers (work-queue stream [`JOBS_STREAM`]).
pub const JOB_DUMP: &str = "ferry.v1.jobs.dump";
/// High-priority jobs: an express lane that a backlog of normal jobs cannot block.
pub const JOB_DUMP_HIGH: &str = "ferry.v1.jobs.dump.high";
/// Every event subject.
pub const EVENTS_ALL: &str = "ferry.v1.events.>";

/// The work-queue stream of jobs.
pub const JOBS_STREAM: &str = "FERRY_JOBS";
/// The limits stream of events, kept for days so late subscribers can replay.
pub const EVENTS_STREAM: &str = "FERRY_EVENTS";

/// KV bucket: the live sources registry.
pub const SOURCES_BUCKET: &str = "ferry-sources";
/// KV bucket: per-source leases.
pub const LOCKS_BUCKET: &str = "ferry-locks";
/// KV bucket: each running job's state between stages and replicas (its dump
/// record, the uploader's per-file bookkeeping); see `ferry_runtime::jobstate`.
pub const JOB_STATE_BUCKET: &str = "ferry-job-state";
/// KV bucket: per channel and source, the failure streak being collapsed.
pub const NOTIFY_STATE_BUCKET: &str = "ferry-notify-state";
/// KV bucket: which notifications were already sent (idempotency on redelivery).
pub const NOTIFIED_BUCKET: &str = "ferry-notified";

/// The source token used in a subject when a request named no valid source. Real
/// source names start with `[a-z0-9]`, so it cannot collide with one.
pub const INVALID_SOURCE: &str = "_invalid";

/// The kinds of event, the fourth token of `ferry.v1.events.<kind>.<source>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `JobRequested`: a job was accepted.
    Requested,
    /// `DumpFileReady`: one dump file is complete in the spool.
    FileReady,
    /// `DumpCompleted`: the dump is complete.
    Dumped,
    /// `BackupUploaded`: the backup is stored and committed by its manifest.
    Uploaded,
    /// `RetentionApplied`: retention ran for the source.
    Retention,
    /// `BackupFailed`: a stage failed the job.
    Failed,
    /// `SegmentStored`: a segment of captured changes is committed.
    Segment,
    /// `CaptureGap`: captured changes were lost.
    Gap,
    /// `WalArchived`: a batch of WAL files was archived.
    Wal,
}

impl EventKind {
    /// Every kind, for subscribers that route by subject.
    pub const ALL: [EventKind; 9] = [
        EventKind::Requested,
        EventKind::FileReady,
        EventKind::Dumped,
        EventKind::Uploaded,
        EventKind::Retention,
        EventKind::Failed,
        EventKind::Segment,
        EventKind::Gap,
        EventKind::Wal,
    ];

    /// The subject token of this kind.
    pub fn token(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::FileReady => "file_ready",
            EventKind::Dumped => "dumped",
            EventKind::Uploaded => "uploaded",
            EventKind::Retention => "retention",
            EventKind::Failed => "failed",
            EventKind::Segment => "segment",
            EventKind::Gap => "gap",
            EventKind::Wal => "wal",
        }
    }

    /// The subject of this kind of event for one source.
    pub fn subject(self, source: &str) -> String {
        format!("ferry.v1.events.{}.{}", self.token(), source_token(source))
    }

    /// The subject filter matching this kind for every source.
    pub fn filter(self) -> String {
        format!("ferry.v1.events.{}.*", self.token())
    }

    /// Parses the kind out of an event subject.
    pub fn of_subject(subject: &str) -> Option<EventKind> {
        let token = subject
            .strip_prefix("ferry.v1.events.")?
            .split('.')
            .next()?;
        EventKind::ALL.into_iter().find(|k| k.token() == token)
    }
}

/// A source name as a subject token: names outside `[a-z0-9][a-z0-9_-]*` (which
/// could break or widen a subject) become [`INVALID_SOURCE`].
pub fn source_token(source: &str) -> &str {
    if is_valid_source_name(source) {
        source
    } else {
        INVALID_SOURCE
    }
}

/// Whether `name` is a valid source name: 1–64 characters of `[a-z0-9_-]`, starting
/// with a letter or digit.
pub fn is_valid_source_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_their_kind() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::of_subject(&kind.subject("orders")), Some(kind));
        }
        assert_eq!(EventKind::of_subject("ferry.v1.jobs.dump"), None);
    }

    #[test]
    fn invalid_source_names_never_reach_a_subject() {
        assert_eq!(
            EventKind::Failed.subject("orders"),
            "ferry.v1.events.failed.orders"
        );
        for bad in [
            "",
            "Orders",
            "a.b",
            "a*",
            ">",
            "-x",
            "_x",
            "a b",
            &"x".repeat(65),
        ] {
            assert_eq!(
                EventKind::Failed.subject(bad),
                "ferry.v1.events.failed._invalid",
                "{bad:?}"
            );
        }
    }
}
