//! One module per command, each with one entry point, `run`, taking the validated
//! configuration and the command's parsed arguments and returning the exit code.
//!
//! Which commands touch NATS, and how:
//! - `list`, `verify`, `restore`, `pitr status`, `wal-push`, `wal-fetch`, `keys` read only
//!   the store and never connect;
//! - `status`, `sources list`, `retention plan` (for a registry source) attach
//!   read-only ([`ferry_runtime::Runtime::attach`]): nothing is declared, so a NATS
//!   user that may only read runs them;
//! - `up`, `backup`, `sources add|remove|pause|resume`, `retention apply`, `keep`
//!   write, and connect as the workers do, declaring the streams and buckets.

pub mod backup;
pub mod keep;
pub mod keys;
pub mod list;
pub mod pitr;
pub mod restore;
pub mod retention;
pub mod sources;
pub mod status;
pub mod up;
pub mod verify;
pub mod wal;
