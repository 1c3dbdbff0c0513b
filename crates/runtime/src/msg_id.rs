//! Every JetStream message id Ferry publishes with, in one place.
//!
//! The stream's duplicate window drops a message whose id it has seen, so an id must
//! name the logical message, never the attempt: a redelivered handler, a second
//! replica or a restarted process that publishes the same fact again must build the
//! same id, and two different facts must never share one. Changing a format here
//! lets a fact published by an old release and again by a new one through twice.

use ferry_proto::v1::Stage;

/// A scheduled job: every scheduler replica derives it from the source and the
/// instant it fires for (RFC 3339, seconds), so one job is queued per instant.
pub fn scheduled(source: &str, instant: &str) -> String {
    format!("{source}/{instant}")
}

/// A manual job: its job id, chosen by the caller or the scheduler, so a retried
/// request is one job.
pub fn manual(job_id: &str) -> String {
    job_id.to_string()
}

/// The `requested` event that accompanies the job published with `job_msg_id`.
pub fn requested(job_msg_id: &str) -> String {
    format!("{job_msg_id}/requested")
}

/// `DumpFileReady` of one file of a job.
pub fn file_ready(job_id: &str, file: &str) -> String {
    format!("{job_id}/file/{file}")
}

/// `DumpCompleted` of a job.
pub fn dumped(job_id: &str) -> String {
    format!("{job_id}/dumped")
}

/// `BackupUploaded` of a job.
pub fn uploaded(job_id: &str) -> String {
    format!("{job_id}/uploaded")
}

/// `RetentionApplied` of a run for one source (a job's, or a sweep's).
pub fn retention(job_id: &str, source: &str) -> String {
    format!("{job_id}/retention/{source}")
}

/// The final `BackupFailed` of a job at one stage.
pub fn failed(job_id: &str, stage: Stage) -> String {
    format!("{job_id}/failed/{}", stage.name())
}

/// The `BackupFailed` reporting a message that did not decode, by its place in the
/// stream (it has no job id to speak of).
pub fn malformed(stage: Stage, stream_sequence: u64) -> String {
    format!("malformed/{}/{stream_sequence}", stage.name())
}

/// `SegmentStored` of one segment: its record's key, which names the source and
/// the span.
pub fn segment(record_key: &str) -> String {
    format!("segment/{record_key}")
}

/// `CaptureGap` of one gap: its record's key.
pub fn gap(record_key: &str) -> String {
    format!("gap/{record_key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_the_formats_earlier_releases_published() {
        assert_eq!(
            scheduled("orders", "2026-11-21T02:00:00Z"),
            "orders/2026-11-21T02:00:00Z"
        );
        assert_eq!(requested("j1"), "j1/requested");
        assert_eq!(file_ready("j1", "toc.dat.zst"), "j1/file/toc.dat.zst");
        assert_eq!(dumped("j1"), "j1/dumped");
        assert_eq!(uploaded("j1"), "j1/uploaded");
        assert_eq!(retention("j1", "orders"), "j1/retention/orders");
        assert_eq!(failed("j1", Stage::Dumper), "j1/failed/dumper");
        assert_eq!(malformed(Stage::Uploader, 7), "malformed/uploader/7");
    }
}
