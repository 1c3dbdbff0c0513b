//! The PostgreSQL part of a manifest: what the dump recorded, so a restore can be
//! checked against it (server and tool versions, sizes, row estimates per table).

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
    /// Every database dumped.
    pub databases: Vec<PostgresDatabaseManifest>,
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
