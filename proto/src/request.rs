//! The JSON contract of `ferry.v1.jobs.request`: what any NATS client (`nats pub`,
//! `ferry backup now`, the capture worker asking for a base backup) sends the
//! scheduler, and what it answers. Part of the contract like the protobuf events:
//! add fields, never rename one.

use serde::{Deserialize, Serialize};

/// The JSON body of a manual job request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualRequest {
    /// The source to back up.
    pub source: String,
    /// A note for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restrict to these databases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// A job id chosen by the caller (a UUID), so a retried request is one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `"normal"` (default) or `"high"`: high jobs take the dumpers' express lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<RequestPriority>,
    /// PostgreSQL: `"logical"` (a pg_dump) or `"physical"` (a base backup);
    /// default: the source's `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RequestMode>,
}

/// The kind of backup a manual PostgreSQL job takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestMode {
    /// pg_dump of each database.
    Logical,
    /// pg_basebackup of the cluster.
    Physical,
}

/// The priority of a manual job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestPriority {
    /// Queued with scheduled jobs.
    Normal,
    /// The express lane.
    High,
}

/// The JSON reply to a manual request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManualReply {
    /// Whether the job was accepted.
    pub ok: bool,
    /// The job id (also for rejected requests: it names the failure event).
    pub job_id: String,
    /// The backup id the job will produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The reason code of a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
