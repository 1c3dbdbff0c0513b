//! The only way Ferry publishes to JetStream: every message carries the current trace
//! context and a `Nats-Msg-Id`, and publishing waits for the stream's acknowledgement.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use ferry_proto::subjects::EventKind;
use tracing::Instrument;

/// A message a handler wants published once its work is done.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Subject to publish on.
    pub subject: String,
    /// Encoded protobuf.
    pub payload: Bytes,
    /// JetStream de-duplication id: the same logical message always has the same id,
    /// so a redelivered handler re-publishing it is harmless.
    pub msg_id: String,
}

impl Outgoing {
    /// An event of `kind` about `source`.
    pub fn event(
        kind: EventKind,
        source: &str,
        message: &impl prost::Message,
        msg_id: String,
    ) -> Self {
        Outgoing {
            subject: kind.subject(source),
            payload: message.encode_to_vec().into(),
            msg_id,
        }
    }
}

/// Failed to publish.
#[derive(Debug, thiserror::Error)]
#[error("failed to publish to {subject}")]
pub struct PublishError {
    /// The subject.
    pub subject: String,
    /// What the server or the connection said.
    #[source]
    pub source: async_nats::jetstream::context::PublishError,
}

/// Publishes to JetStream with trace context and de-duplication ids.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    /// A publisher on a JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Publisher { js }
    }

    /// Publishes and waits until the stream has stored the message, in a producer
    /// span whose context travels with it: the consumer's span becomes its child.
    pub async fn publish(&self, out: &Outgoing) -> Result<(), PublishError> {
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("publish {}", kind_of(&out.subject)),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = %out.subject,
            messaging.message.id = %out.msg_id,
            messaging.message.body.size = out.payload.len(),
        );
        self.publish_in_span(out).instrument(span).await
    }

    async fn publish_in_span(&self, out: &Outgoing) -> Result<(), PublishError> {
        let mut headers = HeaderMap::new();
        ferry_telemetry::inject(&mut headers);
        headers.insert("Nats-Msg-Id", out.msg_id.as_str());
        let err = |source| PublishError {
            subject: out.subject.clone(),
            source,
        };
        self.js
            .publish_with_headers(out.subject.clone(), headers, out.payload.clone())
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Publishes every message in order.
    pub async fn publish_all(&self, outs: &[Outgoing]) -> Result<(), PublishError> {
        for out in outs {
            self.publish(out).await?;
        }
        Ok(())
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

/// A span name without the source: `ferry.v1.events.dumped.orders` names the
/// kind `ferry.v1.events.dumped`, so span names stay few whatever the fleet.
fn kind_of(subject: &str) -> &str {
    match subject.strip_prefix("ferry.v1.events.") {
        Some(rest) => {
            let kind_len = rest.find('.').unwrap_or(rest.len());
            &subject[.."ferry.v1.events.".len() + kind_len]
        }
        None => subject,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn span_names_leave_the_source_out() {
        assert_eq!(
            super::kind_of("ferry.v1.events.dumped.orders"),
            "ferry.v1.events.dumped"
        );
        assert_eq!(super::kind_of("ferry.v1.jobs.dump"), "ferry.v1.jobs.dump");
        assert_eq!(
            super::kind_of("ferry.v1.events.failed"),
            "ferry.v1.events.failed"
        );
    }
}
