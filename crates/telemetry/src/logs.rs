//! Log lines that carry the `trace_id` and `span_id` of the span they were written
//! in, so a log search and the tracing UI point at each other.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The process's subscriber, known once it is installed. The formatter cannot ask
/// for the current dispatcher itself: while an event is being dispatched, tracing
/// hides the dispatcher from nested look-ups.
#[derive(Clone, Default)]
pub(crate) struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

impl DispatchCell {
    /// Remembers the global subscriber (call right after installing it).
    pub(crate) fn capture(&self) {
        tracing::dispatcher::get_default(|d| {
            let _ = self.0.set(d.downgrade());
        });
    }
}

/// Wraps a log formatter and adds the ids of the current trace to each line.
pub(crate) struct WithTraceIds<F> {
    inner: F,
    json: bool,
    dispatch: DispatchCell,
}

impl WithTraceIds<Format<Full>> {
    /// Human-readable lines ending in ` trace_id=… span_id=…`.
    pub(crate) fn text(dispatch: DispatchCell) -> Self {
        WithTraceIds {
            inner: Format::default(),
            json: false,
            dispatch,
        }
    }
}

impl WithTraceIds<Format<Json>> {
    /// JSON lines with top-level `trace_id` and `span_id` keys.
    pub(crate) fn json(dispatch: DispatchCell) -> Self {
        WithTraceIds {
            inner: Format::default().json(),
            json: true,
            dispatch,
        }
    }
}

impl<F> WithTraceIds<F> {
    /// The trace and span ids of the innermost traced span around `event`.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let dispatch = self.dispatch.0.get()?.upgrade()?;
        for span in ctx.event_scope()? {
            // Spans the trace filter left out have no context: look further up.
            let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) else {
                continue;
            };
            let otel_span = cx.span();
            let sc = otel_span.span_context();
            if sc.is_valid() {
                return Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            }
        }
        None
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = self.ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end_matches('\n');
        if self.json
            && let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line)
        {
            object.insert("trace_id".into(), trace_id.into());
            object.insert("span_id".into(), span_id.into());
            return writeln!(writer, "{}", serde_json::Value::Object(object));
        }
        writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}")
    }
}
