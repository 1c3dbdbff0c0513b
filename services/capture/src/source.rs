//! One source's capture, for as long as this replica holds its lease.
//!
//! Segments hold the changes in `(start, end]`, and each `end` is a **fence**: a
//! cluster time read from the server when the segment is cut, up to which every
//! change has been read. Cutting at a fence rather than at the last event means a
//! segment never splits changes that share a cluster time (a transaction's), a
//! quiet server's window still advances as its cluster time does (mongod writes a
//! no-op every 10 s), and the next segment starts exactly where this one ends.
//!
//! Knowing every change up to the fence has been read: an event after the fence
//! arrived (it is carried into the next segment), or an empty reply came whose
//! resume token stands at or after the fence (mongod's post-batch token), or an
//! empty reply to a request sent [`SETTLE`] after the fence was read (a server
//! whose token proves nothing, SecantusDB's, see [`ferry_mongo::token::watermark`];
//! the wait covers a write that has its cluster time but is not yet visible to
//! change streams).
//!
//! The stream's future is never dropped half-way: stopping (shutdown, the lease
//! lost) is checked between replies, each at most [`AWAIT`] long, so no event the
//! driver has taken from the server can be lost between two segments.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_mongo::CollectionFilter;
use ferry_mongo::oplog::to_oplog;
use ferry_proto::reason;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::SegmentStored;
use ferry_runtime::config::SourceConfig;
use ferry_runtime::lease::Lease;
use ferry_runtime::secrets::{SecretSource, read_secret};
use ferry_runtime::{Outgoing, Runtime, msg_id};
use ferry_storage::pitr::{Link, RecordKind, SegmentRecord, segment_key};
use ferry_storage::{Catalog, ObjectStore};
use futures::{FutureExt, StreamExt};
use mongodb::Client;
use mongodb::bson::{RawDocumentBuf, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::ReadConcern;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::gap::to_proto;
use crate::segment::{self, SegmentWriter};
use crate::{CaptureError, CaptureMetrics};

/// How long one getMore waits for new events: short, so a stop or a due cut is
/// noticed quickly.
pub const AWAIT: Duration = Duration::from_millis(300);

/// See the module documentation: how long after reading a fence an empty reply
/// proves every change up to it was read, when the token cannot tell.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How long connecting and selecting the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Stream = ChangeStream<RawDocumentBuf>;

/// One source's capture.
pub struct SourceCapture {
    pub(crate) rt: Runtime,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) source: SourceConfig,
    pub(crate) work_dir: PathBuf,
    /// This replica, in segment records.
    pub(crate) node: String,
    pub(crate) metrics: CaptureMetrics,
}

/// Where capture stands: every change up to `at` is committed.
struct Position {
    at: Timestamp,
    /// The resume token at `at`, when a committed segment recorded one.
    token: Option<ResumeToken>,
    /// The last committed segment, which the next one links to.
    prev: Option<Link>,
}

/// Why a segment is being cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// `segment_span` passed.
    Span,
    /// `segment_max` reached.
    Size,
    /// The capture is stopping.
    Final,
    /// A base backup's consistent point: every base backup starts a segment, so
    /// restores from it read no change it already holds.
    Base(Timestamp),
}

impl SourceCapture {
    fn name(&self) -> &str {
        &self.source.name
    }

    fn server(&self, what: &str) -> impl Fn(mongodb::error::Error) -> CaptureError + '_ {
        let what = what.to_string();
        move |cause| CaptureError::Server {
            source_name: self.source.name.clone(),
            what: what.clone(),
            cause: Box::new(cause),
        }
    }

    /// Captures until `stop` (committing what it has) or the lease is lost
    /// (committing nothing: another replica may be capturing).
    pub async fn run(&self, lease: &Lease, stop: CancellationToken) -> Result<(), CaptureError> {
        std::fs::create_dir_all(&self.work_dir).map_err(|cause| CaptureError::WorkDir {
            source_name: self.name().to_string(),
            path: format!("{} (capture.work_dir)", self.work_dir.display()),
            cause,
        })?;
        let password = self.password()?;
        let client = ferry_mongo::client(
            &self.source.url,
            password.as_ref().map(|p| p.expose_secret()),
            "ferry-capture",
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(|e| CaptureError::Source {
            source_name: self.name().to_string(),
            message: e.to_string(),
        })?;
        let filter =
            CollectionFilter::new(&self.source.collections, &self.source.exclude_collections)
                .map_err(|message| CaptureError::Source {
                    source_name: self.name().to_string(),
                    message,
                })?;
        let mut position = self.resume_point(&client).await?;
        let mut stream = match self.open(&client, &position).await {
            Ok(s) => s,
            Err(e) if ferry_mongo::no_change_streams(&e) => {
                return Err(CaptureError::NoChangeStreams(self.name().to_string()));
            }
            Err(e) if ferry_mongo::server_code(&e) == Some(ferry_mongo::code::CHANGE_STREAM_HISTORY_LOST) => {
                position = self
                    .lost(&client, &position, "the server no longer holds the change stream's resume point (ChangeStreamHistoryLost)")
                    .await?;
                self.open(&client, &position)
                    .await
                    .map_err(self.server("opening the change stream"))?
            }
            // A token the server does not take (the source's databases changed,
            // so the stream's kind did): resume by cluster time, which every kind
            // of stream takes.
            Err(e) if position.token.is_some() && ferry_mongo::server_code(&e).is_some() => {
                tracing::warn!(source = %self.name(), error = %e, "the server refused the resume token; resuming by cluster time");
                position.token = None;
                self.open(&client, &position)
                    .await
                    .map_err(self.server("opening the change stream"))?
            }
            Err(e) => return Err(self.server("opening the change stream (the capture user needs the changeStream and find privileges on the source's databases)")(e)),
        };
        self.metrics.record_start(
            self.name(),
            f64::from(position.at.time),
            self.source.pitr.segment_span.as_secs_f64(),
        );

        let span = self.source.pitr.segment_span;
        let max = self.source.pitr.segment_max.0;
        let mut segment = SegmentWriter::create(&self.work_dir, self.name())?;
        // The resume token after the newest event in the open segment.
        let mut last_token: Option<ResumeToken> = None;
        let mut opened = Instant::now();
        let mut unreplayable = std::collections::BTreeSet::new();
        // The source's completed dumps: their consistent points become boundaries.
        let mut dumped = self
            .rt
            .nats
            .subscribe(EventKind::Dumped.subject(self.name()))
            .await
            .map_err(|e| CaptureError::Source {
                source_name: self.name().to_string(),
                message: format!("subscribing to its dump events: {e}"),
            })?;
        let mut boundary: Option<Timestamp> = None;
        loop {
            if lease.lost.is_cancelled() {
                return Err(CaptureError::LeaseLost(self.name().to_string()));
            }
            // Polled between replies, never awaited: no event of the stream waits.
            while let Some(Some(message)) = dumped.next().now_or_never() {
                if let Some(end) = consistent_point(&message.payload)
                    && end > position.at
                {
                    boundary = Some(boundary.map_or(end, |b| b.min(end)));
                }
            }
            let cut = if stop.is_cancelled() {
                Some(Cut::Final)
            } else if let Some(end) = boundary.take() {
                Some(Cut::Base(end))
            } else if segment.raw_size >= max {
                Some(Cut::Size)
            } else if opened.elapsed() >= span {
                Some(Cut::Span)
            } else {
                None
            };
            if let Some(cut) = cut {
                let (next, rest, carried) = self
                    .cut(
                        &client,
                        &mut stream,
                        segment,
                        &position,
                        last_token.take(),
                        &filter,
                        cut,
                    )
                    .await?;
                position = next;
                segment = rest;
                last_token = carried;
                opened = Instant::now();
                if cut == Cut::Final {
                    return Ok(());
                }
                continue;
            }
            let Some(event) = stream
                .next_if_any()
                .await
                .map_err(self.server("reading the change stream"))?
            else {
                if !stream.is_alive() {
                    // Invalidated (a database-level stream whose database was
                    // dropped): commit through the drop, then a new stream after it.
                    tracing::info!(source = %self.name(), "the change stream was invalidated (its database dropped?); opening a new one after it");
                    let (next, rest, _) = self
                        .cut(
                            &client,
                            &mut stream,
                            segment,
                            &position,
                            last_token.take(),
                            &filter,
                            Cut::Span,
                        )
                        .await?;
                    position = next;
                    position.token = None;
                    segment = rest;
                    opened = Instant::now();
                    tokio::time::sleep(AWAIT).await;
                    stream = self
                        .open(&client, &position)
                        .await
                        .map_err(self.server("reopening the change stream"))?;
                }
                continue;
            };
            let ts = event_time(&event, self.name())?;
            if ts <= position.at {
                // Already committed (a stream opened at a time, not a token, starts
                // at the commit's own cluster time).
                continue;
            }
            self.append(&mut segment, &event, ts, &filter, &mut unreplayable)?;
            last_token = event_token(&event);
        }
    }

    fn append(
        &self,
        segment: &mut SegmentWriter,
        event: &RawDocumentBuf,
        ts: Timestamp,
        filter: &CollectionFilter,
        unreplayable: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), CaptureError> {
        let before = unreplayable.len();
        for entry in to_oplog(event, ts, filter, unreplayable) {
            segment.append(entry.as_bytes(), ts)?;
        }
        if unreplayable.len() > before {
            tracing::warn!(
                source = %self.name(),
                kinds = ?unreplayable,
                "a change capture cannot replay (an index or a collection's options) is kept as a no-op"
            );
        }
        Ok(())
    }

    /// Reads up to a fence (the server's cluster time now, or a base backup's
    /// consistent point), commits the segment as `(position.at, fence]`, and
    /// returns the new position, the next segment (holding what came after the
    /// fence) and the resume token of its newest event.
    #[allow(clippy::too_many_arguments)]
    async fn cut(
        &self,
        client: &Client,
        stream: &mut Stream,
        mut segment: SegmentWriter,
        position: &Position,
        mut last_token: Option<ResumeToken>,
        filter: &CollectionFilter,
        cut: Cut,
    ) -> Result<(Position, SegmentWriter, Option<ResumeToken>), CaptureError> {
        let fence = match cut {
            Cut::Base(at) => at,
            _ => ferry_mongo::cluster_time_now(client)
                .await
                .map_err(self.server("reading the cluster time"))?
                .ok_or_else(|| CaptureError::NoChangeStreams(self.name().to_string()))?,
        };
        let fenced_at = Instant::now();
        let mut carry = None;
        let mut unreplayable = std::collections::BTreeSet::new();
        loop {
            let sent = Instant::now();
            match stream
                .next_if_any()
                .await
                .map_err(self.server("reading the change stream"))?
            {
                Some(event) => {
                    let ts = event_time(&event, self.name())?;
                    if ts <= position.at {
                        continue;
                    }
                    if ts > fence {
                        carry = Some((event, ts));
                        break;
                    }
                    self.append(&mut segment, &event, ts, filter, &mut unreplayable)?;
                    last_token = event_token(&event);
                }
                // A dead stream (invalidated) brings nothing more.
                None if !stream.is_alive() => break,
                None => {
                    let token_past = stream
                        .resume_token()
                        .and_then(|t| ferry_mongo::token::watermark(&t))
                        .is_some_and(|t| t >= fence);
                    if token_past || sent.duration_since(fenced_at) >= SETTLE {
                        break;
                    }
                }
            }
        }
        // A base backup's point: what was read past it goes to the next segment,
        // whose events' tokens are the ones known; the part committed now resumes
        // by its cluster time.
        let tail = match cut {
            Cut::Base(_) => Some(segment.split_after(fence)?),
            _ => None,
        };
        let tail_has = tail.as_ref().is_some_and(|t| t.operations > 0);
        let head_token = if tail_has {
            None
        } else {
            last_token.clone().or_else(|| position.token.clone())
        };
        let mut rest = match tail {
            Some(t) => t,
            None => SegmentWriter::create(&self.work_dir, self.name())?,
        };
        let mut rest_token = if tail_has { last_token } else { None };
        if let Some((event, ts)) = carry {
            self.append(&mut rest, &event, ts, filter, &mut unreplayable)?;
            rest_token = event_token(&event);
        }
        if fence <= position.at {
            // Nothing happened on the server since the last commit: nothing to
            // commit (and on a final cut, nothing lost).
            return Ok((
                Position {
                    at: position.at,
                    token: head_token,
                    prev: position.prev.clone(),
                },
                rest,
                rest_token,
            ));
        }
        let span = tracing::info_span!(
            "capture segment",
            source = %self.name(),
            start = %segment::cluster_time(position.at),
            end = %segment::cluster_time(fence),
            cut = ?cut,
        );
        let record = async {
            let sealed = segment.seal(self.store.as_ref()).await?;
            let catalog = Catalog::new(self.store.as_ref());
            let token = head_token.clone();
            let record = segment::commit(
                &catalog,
                self.name(),
                position.at,
                fence,
                sealed,
                position.prev.clone(),
                token.as_ref().and_then(ferry_mongo::token::to_hex),
                &self.node,
            )
            .await?;
            self.announce(&record).await?;
            Ok::<_, CaptureError>(record)
        }
        .instrument(span)
        .await?;
        self.metrics
            .record_segment(self.name(), record.operations, f64::from(record.end.t));
        tracing::debug!(source = %self.name(), start = %record.start, end = %record.end, operations = record.operations, "segment committed");
        Ok((
            Position {
                at: fence,
                token: head_token,
                prev: Some(Link {
                    end: record.end,
                    sha256: record.sha256.clone(),
                }),
            },
            rest,
            rest_token,
        ))
    }

    /// Publishes `SegmentStored`.
    async fn announce(&self, record: &SegmentRecord) -> Result<(), CaptureError> {
        let key = segment_key(&record.source, record.start, record.end);
        let ct = |c: ferry_storage::pitr::ClusterTime| Timestamp {
            time: c.t,
            increment: c.i,
        };
        let event = SegmentStored {
            source: record.source.clone(),
            occurred_at: Some(ferry_proto::now()),
            start: Some(to_proto(ct(record.start))),
            end: Some(to_proto(ct(record.end))),
            operations: record.operations,
            record_key: key.clone(),
            object: record.object.clone(),
            size: record.size,
            linked: record.prev.is_some(),
        };
        self.rt
            .publisher
            .publish(&Outgoing::event(
                EventKind::Segment,
                &record.source,
                &event,
                msg_id::segment(&key),
            ))
            .await
            .map_err(|cause| CaptureError::Publish {
                source_name: record.source.clone(),
                what: format!("the segment event of {key}"),
                cause: Box::new(cause),
            })
    }

    /// Where to resume: after the newest committed record (a segment, or a gap),
    /// provided the server still holds that point; else a gap up to now. A source
    /// never captured starts now, and asks for a base backup to start its window.
    async fn resume_point(&self, client: &Client) -> Result<Position, CaptureError> {
        let catalog = Catalog::new(self.store.as_ref());
        let records =
            catalog
                .pitr_records(self.name())
                .await
                .map_err(|cause| CaptureError::Store {
                    source_name: self.name().to_string(),
                    what: "listing the committed segments".into(),
                    cause: Box::new(cause),
                })?;
        let newest = records
            .iter()
            .max_by_key(|r| (r.end, r.kind == RecordKind::Segment));
        let position = match newest {
            None => {
                let now = self.now(client).await?;
                tracing::info!(source = %self.name(), from = %segment::cluster_time(now), "no changes captured before: the window starts now");
                let key = format!(
                    "capture-start/{}/{}",
                    self.name(),
                    segment::cluster_time(now).key_form()
                );
                self.request_base_backup(&key, "capture started").await;
                return Ok(Position {
                    at: now,
                    token: None,
                    prev: None,
                });
            }
            Some(r) if r.kind == RecordKind::Gap => Position {
                at: Timestamp {
                    time: r.end.t,
                    increment: r.end.i,
                },
                token: None,
                prev: None,
            },
            Some(r) => {
                let record = catalog
                    .read_segment(&r.key())
                    .await
                    .map_err(|cause| CaptureError::Catalog {
                        source_name: self.name().to_string(),
                        what: format!("reading the last segment record {}", r.key()),
                        cause: Box::new(cause),
                    })?
                    .ok_or_else(|| CaptureError::Source {
                        source_name: self.name().to_string(),
                        message: format!("the last segment record {} vanished while capture started; it starts again", r.key()),
                    })?;
                Position {
                    at: Timestamp {
                        time: record.end.t,
                        increment: record.end.i,
                    },
                    token: record
                        .resume_token
                        .as_deref()
                        .and_then(ferry_mongo::token::from_hex),
                    prev: Some(Link {
                        end: record.end,
                        sha256: record.sha256.clone(),
                    }),
                }
            }
        };
        // The server must still hold every change after the resume point: a stream
        // opened before its oldest entry would start at that entry, silently
        // skipping the rest (SecantusDB does; mongod says ChangeStreamHistoryLost).
        match ferry_mongo::oplog_floor(client).await {
            Ok(Some(floor)) if floor > position.at => {
                let cause = format!(
                    "the server's oldest change is at {}, after the resume point {}: the oplog rolled over while capture was not running",
                    segment::cluster_time(floor),
                    segment::cluster_time(position.at)
                );
                self.lost(client, &position, &cause).await
            }
            Ok(_) => Ok(position),
            Err(e) => {
                tracing::warn!(
                    source = %self.name(),
                    error = %e,
                    "cannot read local.oplog.rs to check the resume point is still on the server (grant the capture user read on local); relying on the change stream to report lost history"
                );
                Ok(position)
            }
        }
    }

    /// The changes since `position` are lost: records the gap up to now and
    /// returns the position to resume from.
    async fn lost(
        &self,
        client: &Client,
        position: &Position,
        cause: &str,
    ) -> Result<Position, CaptureError> {
        let now = self.now(client).await?;
        self.record_gap(position.at, now, reason::HISTORY_LOST, cause.to_string())
            .await?;
        Ok(Position {
            at: now,
            token: None,
            prev: None,
        })
    }

    async fn now(&self, client: &Client) -> Result<Timestamp, CaptureError> {
        ferry_mongo::cluster_time_now(client)
            .await
            .map_err(self.server("reading the cluster time"))?
            .ok_or_else(|| CaptureError::NoChangeStreams(self.name().to_string()))
    }

    /// Opens the change stream after `position`: at its resume token when there is
    /// one, else just after its cluster time (every change at that time itself is
    /// committed). Majority read concern: only changes that
    /// cannot be rolled back are captured.
    async fn open(
        &self,
        client: &Client,
        position: &Position,
    ) -> Result<Stream, mongodb::error::Error> {
        let databases = &self.source.databases;
        // One database: a database-level stream, which a user with only `read` on
        // it may open.
        let one = match databases.as_slice() {
            [db] => Some(client.database(db)),
            _ => None,
        };
        let watch = match &one {
            Some(database) => database.watch(),
            None if databases.is_empty() => client.watch().pipeline([
                doc! { "$match": { "ns.db": { "$nin": ["admin", "local", "config"] } } },
            ]),
            None => client
                .watch()
                .pipeline([doc! { "$match": { "ns.db": { "$in": databases } } }]),
        };
        let watch = watch
            .max_await_time(AWAIT)
            .read_concern(ReadConcern::majority());
        let watch = match &position.token {
            Some(token) => watch.resume_after(token.clone()),
            // Strictly after: every change at `at` itself is committed.
            None => watch.start_at_operation_time(just_after(position.at)),
        };
        Ok(watch.await?.with_type::<RawDocumentBuf>())
    }

    fn password(&self) -> Result<Option<SecretString>, CaptureError> {
        let from = match (&self.source.password_env, &self.source.password_file) {
            (Some(var), _) => SecretSource::Env(var),
            (None, Some(path)) => SecretSource::File(path),
            (None, None) => return Ok(None),
        };
        read_secret(from)
            .map(Some)
            .map_err(|e| CaptureError::Source {
                source_name: self.name().to_string(),
                message: format!("its password: {e}"),
            })
    }
}

/// The first cluster time after `t`.
fn just_after(t: Timestamp) -> Timestamp {
    match t.increment.checked_add(1) {
        Some(increment) => Timestamp {
            time: t.time,
            increment,
        },
        None => Timestamp {
            time: t.time + 1,
            increment: 0,
        },
    }
}

/// The consistent point of a MongoDB dump, from its `DumpCompleted`.
fn consistent_point(payload: &[u8]) -> Option<Timestamp> {
    use ferry_proto::Message;
    let dumped = ferry_proto::v1::DumpCompleted::decode(payload).ok()?;
    let end = dumped.mongodb?.end_time?;
    Some(Timestamp {
        time: end.seconds,
        increment: end.increment,
    })
}

fn event_time(event: &RawDocumentBuf, source: &str) -> Result<Timestamp, CaptureError> {
    event
        .get_timestamp("clusterTime")
        .map_err(|e| CaptureError::Source {
            source_name: source.to_string(),
            message: format!(
                "a change event without clusterTime ({e}); the server is not one capture can follow"
            ),
        })
}

/// An event's resume token: its `_id`.
fn event_token(event: &RawDocumentBuf) -> Option<ResumeToken> {
    let id = event.get_document("_id").ok()?;
    mongodb::bson::from_slice(id.as_bytes()).ok()
}
