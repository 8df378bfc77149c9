//! Messages per second RabbitMQ → echo function → RabbitMQ through fnmill, against a native
//! lapin passthrough doing the same broker work (consume with the same prefetch → publish
//! persistent + mandatory with publisher confirms → ack after the confirm), in the same run
//! against the same broker. Prints both and their ratio (goal ≥ 0.9, aim ≥ 1.0).
//!
//! `cargo bench --bench amqp` (add `-- --messages N` to change the count, `--rounds R` for R
//! rounds, the processor that runs first alternating, medians and each round printed;
//! `--sink-channels N` for the sink's `channels` instead of the default). Needs RabbitMQ at
//! `FNMILL_TEST_AMQP_URL` (default 127.0.0.1:5672, guest/guest).

use fnmill_testkit::amqp_common;
use fnmill_testkit::bench_args::{Args, Opt};
use fnmill_testkit::common;
use fnmill_testkit::cpu;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use amqp_common::{AmqpRoute, Broker, Collector, keyed_messages, unique, wait_for};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use tokio_util::sync::CancellationToken;

const PREFETCH: u16 = 256;
const KEYS: usize = 100;

/// The native baseline: one consuming channel with `PREFETCH`, one confirm channel; each
/// delivery is republished as it arrives, and acked when its confirm comes back.
async fn native_passthrough(broker: &Broker, input: &str, output: &str, n: usize) -> Measured {
    let out = Collector::start(&broker.connection, output).await;
    let consume = broker.connection.create_channel().await.unwrap();
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let publish = Arc::new(broker.connection.create_channel().await.unwrap());
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            input.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let acked = Arc::new(AtomicUsize::new(0));
    let rabbit = cpu::processes_matching("rabbitmq", "beam.smp");
    let cpu_start = cpu::CpuTimes::now(&rabbit);
    let start = Instant::now();
    let output = output.to_string();
    let a = acked.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let confirm = publish
                .basic_publish(
                    "".into(),
                    output.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &d.data,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(d.properties.headers().clone().unwrap_or_default()),
                )
                .await
                .unwrap();
            let a = a.clone();
            tokio::spawn(async move {
                let c = confirm.await.unwrap();
                assert!(matches!(c, Confirmation::Ack(None)));
                d.acker.ack(BasicAckOptions::default()).await.unwrap();
                a.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    wait_for(Duration::from_secs(600), "native outputs", || {
        out.len() >= n
    })
    .await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = cpu::CpuTimes::now(&rabbit).per_event_since(&cpu_start, n);
    wait_for(Duration::from_secs(60), "native acks", || {
        acked.load(Ordering::Relaxed) >= n
    })
    .await;
    task.abort();
    let _ = consume.close(200, "done".into()).await;
    Measured { rate, cpu }
}

/// Messages/s and the CPU per message, by thread name (and the broker), while they flowed.
struct Measured {
    rate: f64,
    cpu: Vec<cpu::PerEvent>,
}

/// fnmill in-process (`app::run`) on the same broker work, with the echo guest.
async fn fnmill_route(broker: &Broker, input: &str, output: &str, n: usize) -> Measured {
    let out = Collector::start(&broker.connection, output).await;
    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(input, output, None, common::guest("echo"));
    route.prefetch = PREFETCH;
    if let Some(channels) = ARGS.number_if_given::<usize>("--sink-channels") {
        route.out_sink_extra = format!("channels = {channels}");
    }
    let config = fnmill::config::load(&route.write(dir.path())).unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let rabbit = cpu::processes_matching("rabbitmq", "beam.smp");
    let cpu_start = cpu::CpuTimes::now(&rabbit);
    let start = Instant::now();
    let run = std::thread::spawn(move || fnmill::app::run(config, stop));
    wait_for(Duration::from_secs(600), "fnmill outputs", || {
        out.len() >= n
    })
    .await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = cpu::CpuTimes::now(&rabbit).per_event_since(&cpu_start, n);
    shutdown.cancel();
    tokio::task::spawn_blocking(move || run.join().unwrap().unwrap())
        .await
        .unwrap();
    Measured { rate, cpu }
}

/// One round: both processors on queues of their own holding the same `n` messages; the one
/// that runs first alternates with `round`, so neither always gets the fresher broker.
async fn one_round(n: usize, round: usize) -> (Measured, Measured) {
    let broker = Broker::new().await;
    let names: Vec<String> = ["n-in", "n-out", "f-in", "f-out"]
        .iter()
        .map(|p| unique(p))
        .collect();
    for q in &names {
        broker.queue(q).await;
    }
    let messages = keyed_messages(n, KEYS);
    broker.publish(&names[0], messages.iter().map(copy)).await;
    broker.publish(&names[2], messages.iter().map(copy)).await;
    let (native, fnmill) = if round.is_multiple_of(2) {
        let native = native_passthrough(&broker, &names[0], &names[1], n).await;
        (native, fnmill_route(&broker, &names[2], &names[3], n).await)
    } else {
        let fnmill = fnmill_route(&broker, &names[2], &names[3], n).await;
        (
            native_passthrough(&broker, &names[0], &names[1], n).await,
            fnmill,
        )
    };
    broker.cleanup().await;
    (native, fnmill)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn copy(m: &amqp_common::Message) -> amqp_common::Message {
    amqp_common::Message {
        id: m.id.clone(),
        payload: m.payload.clone(),
        headers: m.headers.clone(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = ARGS.number("--messages", 50_000);
    let rounds = ARGS.number("--rounds", 1).max(1);
    // Warm-up: fills the compiled-component cache and the broker's own caches.
    one_round(2_000, 0).await;
    let mut runs = Vec::new();
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("amqp bench: round {}/{rounds}", round + 1);
        }
        runs.push(one_round(n, round).await);
    }
    println!(
        "RabbitMQ → echo → RabbitMQ, {n} messages ({KEYS} keys), prefetch {PREFETCH}, persistent, confirms{}",
        if rounds > 1 {
            format!("; medians of {rounds} rounds, the first processor alternating")
        } else {
            String::new()
        }
    );
    let mut native: Vec<f64> = runs.iter().map(|(n, _)| n.rate).collect();
    let mut fnmill: Vec<f64> = runs.iter().map(|(_, f)| f.rate).collect();
    let mut ratios: Vec<f64> = runs.iter().map(|(n, f)| f.rate / n.rate).collect();
    let each = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (native_each, fnmill_each, ratio_each) =
        (each(&native, 0), each(&fnmill, 0), each(&ratios, 2));
    println!(
        "  native lapin passthrough : {:>9.0} msg/s",
        median(&mut native)
    );
    println!(
        "  fnmill (echo guest)      : {:>9.0} msg/s",
        median(&mut fnmill)
    );
    println!(
        "  ratio                    : {:>9.2}   (goal ≥ 0.9, aim ≥ 1.0)",
        median(&mut ratios)
    );
    if rounds > 1 {
        println!("  rounds: native {native_each}; fnmill {fnmill_each}; ratio {ratio_each}");
    }
    let native_cpu: Vec<_> = runs.iter().map(|(n, _)| n.cpu.clone()).collect();
    let fnmill_cpu: Vec<_> = runs.iter().map(|(_, f)| f.cpu.clone()).collect();
    cpu::print_per_event("native lapin passthrough", &cpu::mean(&native_cpu));
    cpu::print_per_event("fnmill (echo guest)", &cpu::mean(&fnmill_cpu));
}

static ARGS: LazyLock<Args> = LazyLock::new(|| {
    Args::parse(
        "amqp",
        "cargo bench --bench amqp [-- --messages N] [--rounds R] [--sink-channels N]",
        &[
            Opt::Value("--messages"),
            Opt::Value("--rounds"),
            Opt::Value("--sink-channels"),
        ],
    )
});
