//! The properties the `jsonl_event` fuzz target checks, shared with the test that replays its
//! corpus on stable Rust (`tests/fuzz_corpus.rs` in the root crate), so the two cannot drift.
//! Not an API: hidden from the docs and free to change.

use fnmill_connector_api::Record;

use crate::jsonl::{self, EventLine};

/// Parses `line`; when it is an event, writes it back as an event ([`jsonl::write_event`]) and
/// as a record ([`jsonl::write_record`]), and checks that each written form is one line that
/// reads back to the same key, payload bytes and headers (and id and timestamp, or target).
/// A line that does not parse is fine: the source dead-letters it as `decode`. Returns what
/// differed; panics only where the code under test panics.
pub fn check_jsonl_line(line: &[u8]) -> Result<(), String> {
    let Ok(parsed) = jsonl::parse_event(line) else {
        return Ok(());
    };

    let event = parsed
        .clone()
        .into_event("fuzz", || "fuzz-id".to_string(), Vec::new());
    let mut written = Vec::new();
    jsonl::write_event(&event, &mut written);
    let back = read_back("write_event", &written)?;
    same("write_event", "key", &written, &back.key, &event.key)?;
    same(
        "write_event",
        "payload",
        &written,
        &back.payload,
        &event.payload,
    )?;
    same(
        "write_event",
        "headers",
        &written,
        &back.headers,
        &event.headers,
    )?;
    same(
        "write_event",
        "id",
        &written,
        &back.id.as_ref(),
        &Some(&event.id),
    )?;
    same(
        "write_event",
        "timestamp_ms",
        &written,
        &back.timestamp_ms,
        &event.timestamp_ms,
    )?;

    let record = Record {
        target: parsed.target,
        key: parsed.key,
        payload: parsed.payload,
        headers: parsed.headers,
    };
    let mut written = Vec::new();
    jsonl::write_record(&record, &mut written);
    let back = read_back("write_record", &written)?;
    same("write_record", "key", &written, &back.key, &record.key)?;
    same(
        "write_record",
        "payload",
        &written,
        &back.payload,
        &record.payload,
    )?;
    same(
        "write_record",
        "headers",
        &written,
        &back.headers,
        &record.headers,
    )?;
    same(
        "write_record",
        "target",
        &written,
        &back.target,
        &record.target,
    )?;
    Ok(())
}

/// A written line must be exactly one line (the file source splits on `\n`) and parse again.
fn read_back(writer: &str, written: &[u8]) -> Result<EventLine, String> {
    let newlines = written.iter().filter(|&&b| b == b'\n').count();
    if newlines != 1 || written.last() != Some(&b'\n') {
        return Err(format!(
            "{writer} wrote {newlines} newlines, not one at the end: {}",
            String::from_utf8_lossy(written)
        ));
    }
    jsonl::parse_event(written).map_err(|e| {
        format!(
            "{writer} wrote a line that does not parse ({e}): {}",
            String::from_utf8_lossy(written)
        )
    })
}

fn same<T: std::fmt::Debug + PartialEq>(
    writer: &str,
    field: &str,
    written: &[u8],
    back: &T,
    want: &T,
) -> Result<(), String> {
    if back == want {
        Ok(())
    } else {
        Err(format!(
            "{writer}: {field} read back as {back:?}, not {want:?}, from {}",
            String::from_utf8_lossy(written)
        ))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn the_documented_example_and_every_payload_form_round_trip() {
        for line in [
            &br#"{"id":"evt-1","key":"c-7","payload":{"order_id":"o-1"},"headers":{"content-type":"application/json"},"timestamp_ms":1700000000000}"#[..],
            br#"{"key_base64":"AP8=","payload_base64":"AAE","headers_base64":[["a","AA=="],["a","/w=="]]}"#,
            br#"{"payload_text":"x\ny","target":"t"}"#,
            b"{\"payload\": [1,\n 2]}\n",
            b"not json",
        ] {
            check_jsonl_line(line).unwrap();
        }
    }

    #[test]
    fn a_difference_is_reported_not_ignored() {
        let err = same(
            "w",
            "payload",
            b"{}\n",
            &Bytes::from("a"),
            &Bytes::from("b"),
        );
        assert!(err.unwrap_err().contains("payload read back as"));
        let err = read_back("w", b"{}\n{}\n").unwrap_err();
        assert!(err.contains("2 newlines"), "{err}");
    }
}
