//! What Ferry's MongoDB parts share: the dumper (one consistent instant), the
//! capture worker (every change between backups) and the restore (replaying them).
//!
//! - [`CollectionFilter`]: which collections a source backs up, so a dump and its
//!   capture keep the same ones;
//! - [`oplog`]: change events in oplog-entry form, the one shape replay reads;
//! - [`token`]: where a change stream's resume token stands in cluster time;
//! - [`code`]: the server error codes Ferry reacts to.

mod filter;
pub mod oplog;
pub mod token;

pub use filter::CollectionFilter;

use mongodb::error::{Error, ErrorKind};

/// Server error codes Ferry reacts to (mongo/base/error_codes.yml).
pub mod code {
    /// Unauthorized.
    pub const UNAUTHORIZED: i32 = 13;
    /// AuthenticationFailed.
    pub const AUTHENTICATION_FAILED: i32 = 18;
    /// NamespaceNotFound.
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    /// CursorNotFound: the cursor was killed or timed out on the server.
    pub const CURSOR_NOT_FOUND: i32 = 43;
    /// MaxTimeMSExpired.
    pub const MAX_TIME_EXPIRED: i32 = 50;
    /// QueryPlanKilled: e.g. the collection was dropped under the query.
    pub const QUERY_PLAN_KILLED: i32 = 175;
    /// CursorKilled.
    pub const CURSOR_KILLED: i32 = 237;
    /// ChangeStreamHistoryLost: the resume point is no longer in the oplog.
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
    /// The $changeStream stage is only supported on replica sets.
    pub const CHANGE_STREAM_NOT_REPLICA_SET: i32 = 40573;
    /// Change streams are not supported (older wording of the above).
    pub const CHANGE_STREAM_UNSUPPORTED: i32 = 40324;
}

/// The server error code, when the server answered with one.
pub fn server_code(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Whether the server refused a change stream because it cannot serve one (a
/// standalone server).
pub fn no_change_streams(e: &Error) -> bool {
    matches!(
        server_code(e),
        Some(code::CHANGE_STREAM_NOT_REPLICA_SET | code::CHANGE_STREAM_UNSUPPORTED)
    )
}

/// A source's URL is not a MongoDB URL Ferry can use.
#[derive(Debug, thiserror::Error)]
pub enum BadUrl {
    /// The driver could not parse it.
    #[error("invalid mongodb url: {0}")]
    Parse(#[source] Error),
    /// A password is configured for a URL without a user.
    #[error(
        "invalid mongodb url: a password is configured but the url names no user (mongodb://user@host/)"
    )]
    NoUser,
}

/// A client for `url`, with `password` for the user the URL names (passwords are
/// never in the URL Ferry logs or sends), named `app_name` in the server's logs.
pub async fn client(
    url: &str,
    password: Option<&str>,
    app_name: &str,
    connect_timeout: std::time::Duration,
) -> Result<mongodb::Client, BadUrl> {
    let mut opts = mongodb::options::ClientOptions::parse(url)
        .await
        .map_err(BadUrl::Parse)?;
    if let Some(password) = password {
        let credential = opts.credential.as_mut().ok_or(BadUrl::NoUser)?;
        credential.password = Some(password.to_string());
    }
    opts.app_name = Some(app_name.into());
    opts.server_selection_timeout = Some(connect_timeout);
    opts.connect_timeout = Some(connect_timeout);
    mongodb::Client::with_options(opts).map_err(BadUrl::Parse)
}

/// The server's cluster time now: the `operationTime` of a `ping` (the time of the
/// newest write it knows of). None from a standalone server, which has none.
pub async fn cluster_time_now(
    client: &mongodb::Client,
) -> Result<Option<mongodb::bson::Timestamp>, Error> {
    let reply = client
        .database("admin")
        .run_command(mongodb::bson::doc! { "ping": 1 })
        .await?;
    Ok(reply.get_timestamp("operationTime").ok())
}

/// The cluster time of the oldest change the server still holds (the first entry
/// of `local.oplog.rs`): a capture resuming before it would miss changes. None when
/// the oplog is empty; an error when it cannot be read (no privilege on `local`).
pub async fn oplog_floor(
    client: &mongodb::Client,
) -> Result<Option<mongodb::bson::Timestamp>, Error> {
    let first = client
        .database("local")
        .collection::<mongodb::bson::Document>("oplog.rs")
        .find_one(mongodb::bson::doc! {})
        .sort(mongodb::bson::doc! { "$natural": 1 })
        .projection(mongodb::bson::doc! { "ts": 1 })
        .await?;
    Ok(first.and_then(|d| d.get_timestamp("ts").ok()))
}

/// Whether the server at `url` can serve change streams (a replica set member or
/// a mongos), asked with `hello`, which needs no credentials: the URL's user, if
/// any, is left out, so this works where the password is not at hand.
pub async fn serves_change_streams(
    url: &str,
    connect_timeout: std::time::Duration,
) -> Result<bool, Error> {
    let mut opts = mongodb::options::ClientOptions::parse(url).await?;
    opts.credential = None;
    opts.app_name = Some("ferry".into());
    opts.server_selection_timeout = Some(connect_timeout);
    opts.connect_timeout = Some(connect_timeout);
    let client = mongodb::Client::with_options(opts)?;
    let hello = client
        .database("admin")
        .run_command(mongodb::bson::doc! { "hello": 1 })
        .await?;
    Ok(hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid"))
}
