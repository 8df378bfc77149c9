//! The embedded quickstart (examples/quickstart) runs end to end with no broker: valid orders
//! are enriched, invalid ones routed, malformed ones dead-lettered.

use fnmill_testkit::common;

use common::{fnmill, headers, quickstart_component, read_lines, root};

#[test]
fn quickstart_enriches_routes_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let example = root().join("examples").join("quickstart");
    std::fs::copy(example.join("fnmill.toml"), dir.path().join("fnmill.toml")).unwrap();
    std::fs::copy(example.join("input.jsonl"), dir.path().join("input.jsonl")).unwrap();
    let out = fnmill()
        .args(["run", "-c"])
        .arg(dir.path().join("fnmill.toml"))
        .env(
            "FNMILL__FUNCTIONS__ENRICH_ORDERS__COMPONENT",
            quickstart_component(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let valid = read_lines(&dir.path().join("out/valid.jsonl"));
    let invalid = read_lines(&dir.path().join("out/invalid.jsonl"));
    let dead = read_lines(&dir.path().join("out/dead-letter.jsonl"));
    assert_eq!((valid.len(), invalid.len(), dead.len()), (8, 2, 2));

    let first = valid
        .iter()
        .find(|v| v["payload"]["order_id"] == "o-1001")
        .unwrap();
    // 2 × 12.50 + 3 × 1.99 = 30.97; tax 20% = 6.19; total 37.16.
    assert_eq!(first["payload"]["item_count"], 5);
    assert_eq!(first["payload"]["subtotal"], 30.97);
    assert_eq!(first["payload"]["total"], 37.16);
    assert_eq!(first["key"], "c-7");
    for d in &dead {
        assert_eq!(headers(d)["fnmill.error.kind"], "fatal");
        assert!(headers(d)["fnmill.error.message"].contains("malformed order"));
    }
    assert!(invalid.iter().all(|i| {
        i["payload"]["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    }));

    // A second run reads nothing new: the checkpoint remembers the end of the file.
    let again = fnmill()
        .args(["run", "-c"])
        .arg(dir.path().join("fnmill.toml"))
        .env(
            "FNMILL__FUNCTIONS__ENRICH_ORDERS__COMPONENT",
            quickstart_component(),
        )
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(read_lines(&dir.path().join("out/valid.jsonl")).len(), 8);
}
