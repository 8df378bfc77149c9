//! `isolation = "event"` never reuses an instance; `isolation = "reuse"` serves several events
//! with one instance and retires it after `max_reuse` events, any failure (an error, a trap, a
//! timeout) and once its memory grew past `reuse_max_memory`. The `counter` guest counts the
//! calls its instance served.

use fnmill_testkit::common;

use std::time::Duration;

use bytes::Bytes;
use fnmill::host::{Function, FunctionSpec, Isolation, Limits};
use fnmill_connector_api::Event;

fn load(isolation: Isolation) -> Function {
    load_on(&common::test_host(false), isolation)
}

fn load_on(host: &fnmill::host::Host, isolation: Isolation) -> Function {
    host.load(FunctionSpec {
        name: "counter".into(),
        component: common::guest("counter"),
        limits: Limits {
            memory_bytes: 32 << 20,
            timeout: Duration::from_millis(300),
            fuel: None,
            max_outputs: 10,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 * 1024,
            max_log_lines: 200,
        },
        config: [("grow_mib".to_string(), "8".to_string())].into(),
        isolation,
    })
    .unwrap()
}

/// The counter the call returned, or its failure kind.
async fn call(f: &Function, payload: &'static str) -> String {
    let event = Event::new(payload, "test", Bytes::from_static(payload.as_bytes()));
    match f.invoke(&event, 1).await {
        Ok(outputs) => String::from_utf8(outputs[0].payload.to_vec()).unwrap(),
        Err(failure) => failure.kind().to_string(),
    }
}

async fn calls(f: &Function, payloads: &[&'static str]) -> Vec<String> {
    let mut out = Vec::new();
    for p in payloads {
        out.push(call(f, p).await);
    }
    out
}

#[tokio::test]
async fn a_fresh_instance_per_event_never_sees_an_earlier_one() {
    let f = load(Isolation::Event);
    assert_eq!(calls(&f, &["a", "b", "c", "d"]).await, ["1", "1", "1", "1"]);
}

/// Many events, failures among them: a store runs several fresh instances before it is dropped,
/// and none of them sees what an earlier one left — not after a failure either.
#[tokio::test]
async fn fresh_instances_stay_fresh_across_many_events_and_failures() {
    let f = load(Isolation::Event);
    let payloads: Vec<&'static str> = (0..40)
        .map(|i| match i % 10 {
            3 => "grow",
            5 => "fail",
            7 => "trap",
            _ => "x",
        })
        .collect();
    let expected: Vec<&str> = payloads
        .iter()
        .map(|p| match *p {
            "fail" => "retryable",
            "trap" => "trap",
            _ => "1",
        })
        .collect();
    assert_eq!(calls(&f, &payloads).await, expected);
}

/// Stores and instances kept for later hold instance slots; an admission that would wait gets
/// them back, whichever function kept them. Two instance slots, two functions: without that,
/// the third event would wait forever for a slot a kept store holds.
#[tokio::test]
async fn what_is_kept_for_later_gives_way_to_an_admission() {
    let host = fnmill::host::Host::new(&fnmill::host::HostConfig {
        max_instances: 2,
        max_memory_bytes: 32 << 20,
        memory_budget: 1 << 30,
        fuel: false,
        cache_dir: Some(common::root().join("target/test-cache/fnmill")),
        perf_map: false,
    })
    .unwrap();
    let fresh = load_on(&host, Isolation::Event);
    let reusing = load_on(
        &host,
        Isolation::Reuse {
            max_uses: 100,
            max_memory: 16 << 20,
        },
    );
    let run = async {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(calls(&fresh, &["a", "b", "c"]).await);
            seen.extend(calls(&reusing, &["a", "b"]).await);
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("an admission waited for a slot something kept");
    // The reused instance is dropped each time the fresh function needs its slot.
    assert_eq!(
        seen,
        [
            "1", "1", "1", "1", "2", "1", "1", "1", "1", "2", "1", "1", "1", "1", "2"
        ]
    );
}

#[tokio::test]
async fn a_reused_instance_serves_max_reuse_events_then_retires() {
    let f = load(Isolation::Reuse {
        max_uses: 3,
        max_memory: 16 << 20,
    });
    assert_eq!(
        calls(&f, &["a", "b", "c", "d", "e", "f", "g"]).await,
        ["1", "2", "3", "1", "2", "3", "1"]
    );
}

#[tokio::test]
async fn any_failure_retires_the_instance() {
    let f = load(Isolation::Reuse {
        max_uses: 100,
        max_memory: 16 << 20,
    });
    assert_eq!(
        calls(
            &f,
            &["a", "b", "fail", "c", "d", "trap", "e", "loop", "f", "g"]
        )
        .await,
        [
            "1",
            "2",
            "retryable",
            "1",
            "2",
            "trap",
            "1",
            "timeout",
            "1",
            "2"
        ]
    );
}

#[tokio::test]
async fn an_instance_whose_memory_grew_past_the_bound_is_retired() {
    let f = load(Isolation::Reuse {
        max_uses: 100,
        max_memory: 4 << 20,
    });
    // The event that grew it still succeeds; the instance is not kept for the next one.
    assert_eq!(
        calls(&f, &["a", "grow", "b", "c"]).await,
        ["1", "2", "1", "2"]
    );
}

/// Through `fnmill run`: with `isolation = "reuse"` one instance serves many events (its
/// counter goes past 1); `max_reuse` on an `event` function is refused by `check`.
#[test]
fn the_isolation_of_a_function_is_chosen_in_its_config() {
    use common::{FileRoute, count_lines, read_lines, write_events};
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), common::guest("counter"));
    route.function_extra = "isolation = \"reuse\"\nmax_reuse = 50".into();
    write_events(
        &route.input(),
        (0..200).map(|i| {
            (
                format!("e{i}"),
                Some("k".to_string()),
                serde_json::json!({}),
            )
        }),
    );
    common::run_to_end(&route.write());
    assert_eq!(count_lines(&route.output()), 200);
    let counters: Vec<u64> = read_lines(&route.output())
        .iter()
        .map(|l| l["payload"].as_u64().unwrap())
        .collect();
    assert!(
        counters.iter().any(|c| *c > 1),
        "never reused: {counters:?}"
    );
    assert!(
        counters.iter().all(|c| *c <= 50),
        "served past max_reuse: {counters:?}"
    );

    route.function_extra = "max_reuse = 50".into();
    let out = common::fnmill()
        .args(["check", "-c"])
        .arg(route.write())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("functions.f.isolation"), "{stderr}");
}
