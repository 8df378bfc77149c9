//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage (`baggage`) in message
//! headers: read from an event's headers, written into its outputs' and dead letter's.
//!
//! Parsing and formatting are OpenTelemetry's own propagators; this module adapts fnmill's
//! headers (names as Kafka, AMQP and JSON Lines carry them, byte values) to them. Header names
//! match without regard to case, as in HTTP. A malformed `traceparent` yields no parent: the
//! event's trace then starts at fnmill.

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use fnmill_connector_api::Header;

/// The headers that carry trace context and baggage.
pub const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// Trace context and baggage, both ways.
pub struct Propagator(TextMapCompositePropagator);

impl std::fmt::Debug for Propagator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Propagator(tracecontext, baggage)")
    }
}

impl Default for Propagator {
    fn default() -> Self {
        Self(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
    }
}

impl Propagator {
    /// The remote parent and baggage that `headers` carry (an empty context if none, or if the
    /// `traceparent` is malformed).
    pub fn extract(&self, headers: &[Header]) -> Context {
        if !headers.iter().any(|h| is_trace_header(&h.name)) {
            // Most events of a trace that starts at fnmill: nothing to parse.
            return Context::new();
        }
        // OpenTelemetry's parser is lenient (it takes a short trace id); W3C is not. A
        // traceparent that fails the W3C rules is ignored, and its tracestate with it.
        let valid = Headers {
            headers,
            hide_trace: false,
        }
        .get("traceparent")
        .is_none_or(valid_traceparent);
        self.0.extract_with_context(
            &Context::new(),
            &Headers {
                headers,
                hide_trace: !valid,
            },
        )
    }

    /// Writes the span context and baggage of `cx` into `headers`, replacing any trace headers
    /// they had.
    pub fn inject(&self, cx: &Context, headers: &mut Vec<Header>) {
        headers.retain(|h| !is_trace_header(&h.name));
        self.0.inject_context(cx, &mut HeadersMut(headers));
    }
}

/// Whether `name` is one of [`TRACE_HEADERS`].
pub fn is_trace_header(name: &str) -> bool {
    TRACE_HEADERS.iter().any(|t| name.eq_ignore_ascii_case(t))
}

/// With tracing off: copies the trace headers of `from` (the event) into `to` (an output) when
/// `to` has none of its own, so a trace that went into fnmill goes on downstream (fnmill itself
/// is not in it). Does nothing when the event carries no `traceparent`.
pub fn pass_through(from: &[Header], to: &mut Vec<Header>) {
    if !from
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("traceparent"))
        || to.iter().any(|h| is_trace_header(&h.name))
    {
        return;
    }
    to.extend(from.iter().filter(|h| is_trace_header(&h.name)).cloned());
}

/// Whether `value` is a `traceparent` as W3C Trace Context (level 1 and later versions) defines
/// it: `version-traceid-parentid-flags`, lower-case hex, ids not all zeros, version not `ff`;
/// version `00` has exactly these four fields, a later one may add fields after a `-`.
pub fn valid_traceparent(value: &str) -> bool {
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zeros = |s: &str| s.bytes().all(|b| b == b'0');
    if value.len() < 55 {
        return false;
    }
    let (head, rest) = value.split_at(55);
    let parts: Vec<&str> = head.split('-').collect();
    let [version, trace_id, parent_id, flags] = parts[..] else {
        return false;
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && !zeros(trace_id)
        && hex(parent_id, 16)
        && !zeros(parent_id)
        && hex(flags, 2)
        && if version == "00" {
            rest.is_empty()
        } else {
            rest.is_empty() || rest.starts_with('-')
        }
}

struct Headers<'a> {
    headers: &'a [Header],
    /// Hide `traceparent` and `tracestate` (the traceparent is malformed).
    hide_trace: bool,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if self.hide_trace
            && (key.eq_ignore_ascii_case("traceparent") || key.eq_ignore_ascii_case("tracestate"))
        {
            return None;
        }
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(key))
            .and_then(|h| std::str::from_utf8(&h.value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.iter().map(|h| h.name.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut Vec<Header>);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty tracestate or baggage is no header at all.
        if !value.is_empty() {
            self.0.push(Header::new(key, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(k, v)| Header::new(*k, v.to_string()))
            .collect()
    }

    #[test]
    fn a_valid_traceparent_is_the_remote_parent() {
        let cx = Propagator::default().extract(&headers(&[
            ("TraceParent", PARENT),
            ("tracestate", "vendor=1"),
            ("baggage", "tenant=acme"),
        ]));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "vendor=1");
        use opentelemetry::baggage::BaggageExt;
        assert_eq!(
            cx.baggage().get("tenant").map(|v| v.as_str().to_string()),
            Some("acme".into())
        );
    }

    #[test]
    fn headers_without_trace_context_give_an_empty_context_and_baggage_alone_is_read() {
        let cx = Propagator::default().extract(&headers(&[("x", "y"), ("key", "k")]));
        assert!(!cx.span().span_context().is_valid());
        use opentelemetry::baggage::BaggageExt;
        assert_eq!(cx.baggage().len(), 0);
        let cx = Propagator::default().extract(&headers(&[("Baggage", "tenant=acme")]));
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(
            cx.baggage().get("tenant").map(|v| v.as_str().to_string()),
            Some("acme".into())
        );
    }

    #[test]
    fn malformed_traceparents_give_no_parent() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", // no flags
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff is invalid
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // trace id too short
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // version 00 has 4 fields
        ] {
            let cx = Propagator::default().extract(&headers(&[("traceparent", bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?} was accepted");
        }
        // A later version may add fields; its first four are still read.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        assert!(valid_traceparent(PARENT));
        // Not UTF-8.
        let cx =
            Propagator::default().extract(&[Header::new("traceparent", vec![0xffu8, 0xfe, 0x00])]);
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn inject_replaces_the_trace_headers_and_keeps_the_rest() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut h = headers(&[("traceparent", PARENT), ("TRACESTATE", "old=1"), ("x", "y")]);
        Propagator::default().inject(&cx, &mut h);
        let traceparents: Vec<&Header> = h.iter().filter(|h| h.name == "traceparent").collect();
        assert_eq!(traceparents.len(), 1);
        assert_eq!(
            traceparents[0].value,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(!h.iter().any(|h| h.name.eq_ignore_ascii_case("tracestate")));
        assert!(h.contains(&Header::new("x", "y")));
    }

    #[test]
    fn pass_through_copies_only_when_the_output_has_none() {
        let from = headers(&[
            ("traceparent", PARENT),
            ("tracestate", "v=1"),
            ("other", "o"),
        ]);
        let mut to = headers(&[("k", "v")]);
        pass_through(&from, &mut to);
        assert_eq!(
            to,
            headers(&[("k", "v"), ("traceparent", PARENT), ("tracestate", "v=1")])
        );
        let mut own = headers(&[("traceparent", "00-own")]);
        pass_through(&from, &mut own);
        assert_eq!(own, headers(&[("traceparent", "00-own")]));
        let mut untouched = headers(&[("k", "v")]);
        pass_through(&headers(&[("tracestate", "v=1")]), &mut untouched);
        assert_eq!(untouched, headers(&[("k", "v")]));
    }
}
