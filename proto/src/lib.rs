//! Ferry's contract: the protobuf messages in `proto/ferry/v1/`, the NATS subject
//! names, and the machine-readable failure reasons.
//!
//! The Rust code in `src/gen/` is generated with `protox` + `prost-build` and checked
//! in, so no build needs `protoc`; the `generated_code_is_fresh` test fails when it is
//! stale (`FERRY_REGENERATE=1 cargo test -p ferry-proto` rewrites it).

pub mod reason;
pub mod request;
pub mod subjects;

/// Version 1 of the contract.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!("gen/ferry.v1.rs");
}

pub use prost::Message;
pub use prost_types::Timestamp;

use v1::{
    BackupFailed, BackupUploaded, DumpCompleted, DumpFileReady, JobRequested, RetentionApplied,
};

/// Every message of a job names the job and its source; the runtime relies on this to
/// report a failure of any message it handles.
pub trait JobMessage {
    /// The job this message belongs to.
    fn job_id(&self) -> &str;
    /// The source being backed up.
    fn source(&self) -> &str;
    /// The backup the job produces, when already known.
    fn backup_id(&self) -> &str {
        ""
    }
}

macro_rules! job_message {
    ($($ty:ty => $backup:tt),* $(,)?) => {$(
        impl JobMessage for $ty {
            fn job_id(&self) -> &str { &self.job_id }
            fn source(&self) -> &str { &self.source }
            job_message!(@backup $backup);
        }
    )*};
    (@backup yes) => { fn backup_id(&self) -> &str { &self.backup_id } };
    (@backup no) => {};
}

job_message! {
    JobRequested => yes,
    DumpFileReady => yes,
    DumpCompleted => yes,
    BackupUploaded => yes,
    BackupFailed => yes,
    RetentionApplied => no,
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    to_timestamp(chrono::Utc::now())
}

/// Converts a UTC time to a protobuf timestamp.
pub fn to_timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp to UTC time; `None` when out of range.
pub fn from_timestamp(t: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

impl v1::Stage {
    /// The lowercase name used in logs, metrics and notifications.
    pub fn name(self) -> &'static str {
        match self {
            v1::Stage::Unspecified => "unspecified",
            v1::Stage::Scheduler => "scheduler",
            v1::Stage::Dumper => "dumper",
            v1::Stage::Uploader => "uploader",
            v1::Stage::Retention => "retention",
            v1::Stage::Notifier => "notifier",
            v1::Stage::Capture => "capture",
            v1::Stage::Archive => "archive",
        }
    }
}

impl v1::Engine {
    /// The name used in configuration (`engine = "postgres"`).
    pub fn name(self) -> &'static str {
        match self {
            v1::Engine::Unspecified => "unspecified",
            v1::Engine::Postgres => "postgres",
            v1::Engine::Mongodb => "mongodb",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Regenerates the Rust code from the .proto files and compares it with the
    /// checked-in copy, so a changed schema cannot ship with stale code.
    #[test]
    fn generated_code_is_fresh() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = tempfile::tempdir().unwrap();
        let fds = protox::compile(["ferry/v1/events.proto"], [root]).expect("proto files compile");
        prost_build::Config::new()
            .out_dir(out.path())
            .compile_fds(fds)
            .expect("prost-build generates code");
        let fresh = std::fs::read_to_string(out.path().join("ferry.v1.rs")).unwrap();
        let checked_in_path = root.join("src/gen/ferry.v1.rs");
        if std::env::var_os("FERRY_REGENERATE").is_some() {
            std::fs::create_dir_all(checked_in_path.parent().unwrap()).unwrap();
            std::fs::write(&checked_in_path, &fresh).unwrap();
        }
        let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
        assert!(
            fresh == checked_in,
            "proto/src/gen/ferry.v1.rs is stale: run `FERRY_REGENERATE=1 cargo test -p ferry-proto` and commit the result"
        );
    }
}
