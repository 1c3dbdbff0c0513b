//! The PostgreSQL part of a manifest: what the dump recorded, so a restore can be
//! checked against it (server and tool versions, sizes, row estimates per table),
//! and for a physical base backup its place in the WAL.

use chrono::{DateTime, Utc};
use ferry_proto::v1::PostgresDetails;
use serde::{Deserialize, Serialize};

/// `manifest.postgres`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresManifest {
    /// The server's version, e.g. `15.19`.
    pub server_version: String,
    /// The pg_dump used, e.g. `pg_dump (PostgreSQL) 15.19`.
    pub pg_dump_version: String,
    /// Whether the backup holds `globals.sql` (roles and tablespaces).
    #[serde(default)]
    pub globals: bool,
    /// Every database dumped (for a physical backup: the databases the cluster
    /// held, for information; the backup holds the whole cluster).
    pub databases: Vec<PostgresDatabaseManifest>,
    /// Set for a physical base backup (`mode = "physical"`): `base.tar` is the
    /// cluster's data directory as pg_basebackup wrote it, without WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalManifest>,
}

/// Where a physical base backup sits in the WAL archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalManifest {
    /// The backup's start (its checkpoint's redo point): replay begins here.
    pub start_lsn: String,
    /// The backup's end: the data directory is consistent once replay passes it.
    pub stop_lsn: String,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// The server's clock once the backup ended: the earliest instant it restores
    /// to.
    pub consistent_at: DateTime<Utc>,
    /// pg_control's system identifier.
    pub system_identifier: String,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
}

/// One dumped database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresDatabaseManifest {
    /// The database's name (also the top directory of its files).
    pub name: String,
    /// `pg_database_size()` when the dump started.
    pub size_bytes: u64,
    /// Every table, with the planner's row estimate.
    pub tables: Vec<PostgresTableManifest>,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresTableManifest {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// `pg_class.reltuples` at dump time (0 when never analysed).
    pub rows_estimate: u64,
}

impl From<&PostgresDetails> for PostgresManifest {
    fn from(d: &PostgresDetails) -> Self {
        PostgresManifest {
            server_version: d.server_version.clone(),
            pg_dump_version: d.pg_dump_version.clone(),
            globals: d.globals,
            physical: d.physical.as_ref().map(|p| PhysicalManifest {
                start_lsn: p.start_lsn.clone(),
                stop_lsn: p.stop_lsn.clone(),
                timeline: p.timeline,
                consistent_at: p
                    .consistent_at
                    .as_ref()
                    .and_then(ferry_proto::from_timestamp)
                    .unwrap_or_default(),
                system_identifier: p.system_identifier.clone(),
                wal_segment_size: p.wal_segment_size,
            }),
            databases: d
                .databases
                .iter()
                .map(|db| PostgresDatabaseManifest {
                    name: db.name.clone(),
                    size_bytes: db.size_bytes,
                    tables: db
                        .tables
                        .iter()
                        .map(|t| PostgresTableManifest {
                            schema: t.schema.clone(),
                            name: t.name.clone(),
                            rows_estimate: t.rows_estimate,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
