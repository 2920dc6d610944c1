//! Micro benchmarks of the hot paths every task goes through: building and encoding a
//! message, decoding it, the kombu envelope, routing, and a memory:// round trip.
//!
//! `cargo bench -p celeriac-core` (figures in `target/criterion/`; see docs/benchmarks.md).

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use celeriac_core::broker::{Broker, ConsumeOptions, PublishOptions};
use celeriac_core::memory::{MemoryBroker, PriorityOrder};
use celeriac_core::protocol::{envelope, SendContext};
use celeriac_core::{Route, Router, Signature, TaskMessage};

fn ctx() -> SendContext<'static> {
    SendContext {
        origin: "gen1@bench",
        reply_to: "5d1f2c3e-0000-4000-8000-000000000000",
        parent: None,
        ignore_result: None,
    }
}

fn sig() -> Signature {
    Signature::new("tasks.add").args(vec![json!(2), json!(3)])
}

fn codec(c: &mut Criterion) {
    let route = Route::queue("celery");
    let ctx = ctx();
    let s = sig();
    c.bench_function("message: from_signature + encode", |b| {
        b.iter(|| {
            TaskMessage::from_signature(&s, &route, &ctx)
                .expect("a valid signature")
                .encode()
        })
    });
    let msg = TaskMessage::from_signature(&s, &route, &ctx)
        .expect("a valid signature")
        .encode();
    c.bench_function("message: decode", |b| {
        b.iter(|| TaskMessage::decode(&msg).expect("decodes"))
    });
    let tag = "0b6f7f52-8b8e-4bd1-9d2a-6f4f3a3c1d2e";
    c.bench_function("kombu envelope: encode", |b| {
        b.iter(|| envelope::encode(&msg, tag))
    });
    let env = envelope::encode(&msg, tag);
    c.bench_function("kombu envelope: decode", |b| {
        b.iter(|| envelope::decode(&env).expect("decodes"))
    });
}

fn routing(c: &mut Criterion) {
    let mut r = Router::new("celery");
    for i in 0..20 {
        r.add(format!("app{i}.*"), Route::queue(format!("q{i}")));
    }
    c.bench_function("routing: 20 glob rules, no match", |b| {
        b.iter(|| r.route_name("tasks.add"))
    });
    c.bench_function("routing: 20 glob rules, last matches", |b| {
        b.iter(|| r.route_name("app19.resize"))
    });
}

fn memory_broker(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let broker = MemoryBroker::new(PriorityOrder::LowFirst);
    let msg = TaskMessage::from_signature(&sig(), &Route::queue("celery"), &ctx())
        .expect("a valid signature")
        .encode();
    let mut consumer = rt
        .block_on(broker.consume(ConsumeOptions::new(vec!["celery".into()], 0)))
        .expect("a consumer");
    c.bench_function("memory://: publish, deliver, ack", |b| {
        b.iter(|| {
            rt.block_on(async {
                broker
                    .publish(msg.clone(), PublishOptions::default())
                    .await
                    .expect("published");
                let d = consumer.next().await.expect("open").expect("a delivery");
                d.ack().await.expect("acked");
            })
        })
    });
    // The in-process path: task messages queued by pointer, never encoded; 1,000 a batch
    // (the set-up that builds them is not timed).
    let task = TaskMessage::from_signature(&sig(), &Route::queue("celery"), &ctx())
        .expect("a valid signature");
    c.bench_function(
        "memory://: publish_tasks of 1,000, deliver and ack each (per batch)",
        |b| {
            b.iter_batched(
                || {
                    (0..1_000)
                        .map(|_| (task.clone(), PublishOptions::default()))
                        .collect::<Vec<_>>()
                },
                |batch| {
                    rt.block_on(async {
                        broker.publish_tasks(batch).await.expect("published");
                        for _ in 0..1_000 {
                            let d = consumer.next().await.expect("open").expect("a delivery");
                            let msg = d.task_message().expect("a task message");
                            drop(msg);
                            d.ack().await.expect("acked");
                        }
                    })
                },
                criterion::BatchSize::LargeInput,
            )
        },
    );
}

criterion_group!(benches, codec, routing, memory_broker);
criterion_main!(benches);
