//! Key-ordered concurrency: events with the same key come out in the order they went in, while
//! different keys run concurrently; every event comes out exactly once.

use fnmill_testkit::common;

use std::collections::{BTreeMap, HashSet};

use common::{FileRoute, guest, read_lines, run_to_end, write_events};
use serde_json::json;

/// 10,000 events over 50 keys through a guest that echoes its input: per-key order kept, every
/// event present once.
#[test]
fn per_key_order_is_kept_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("echo"));
    route.route_extra = "max_in_flight = 500\n".into();
    const EVENTS: usize = 10_000;
    const KEYS: usize = 50;
    write_events(
        &route.input(),
        (0..EVENTS).map(|i| {
            let key = format!("key-{}", (i * 7919) % KEYS);
            (
                format!("e{i}"),
                Some(key.clone()),
                json!({ "seq": i, "key": key }),
            )
        }),
    );
    run_to_end(&route.write());

    let out = read_lines(&route.output());
    let mut seen = HashSet::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let mut interleaved = false;
    let mut previous_key = None;
    for line in &out {
        let key = line["key"].as_str().unwrap().to_string();
        let seq = line["payload"]["seq"].as_i64().unwrap();
        assert_eq!(
            line["payload"]["key"],
            json!(key),
            "key travels with its event"
        );
        assert!(seen.insert(seq), "event {seq} came out twice");
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(prev < seq, "key {key}: event {seq} came out after {prev}");
        }
        if previous_key.as_ref().is_some_and(|p| p != &key) {
            interleaved = true;
        }
        previous_key = Some(key);
    }
    assert_eq!(seen.len(), EVENTS, "every event comes out");
    assert_eq!(last.len(), KEYS);
    assert!(interleaved);
    assert!(read_lines(&route.dead()).is_empty());
}
