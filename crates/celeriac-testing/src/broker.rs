//! The broker conformance suite: what every `Broker` must do, one function per behaviour.
//! Each takes a [`BrokerUnderTest`] and panics with a message naming what broke.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use celeriac_core::broker::{ConsumeOptions, Consumer, Delivery, PublishOptions};
use celeriac_core::message::{DeliveryInfo, Message, Properties};
use celeriac_core::Broker;
use serde_json::{json, Map, Value};

use crate::BrokerUnderTest;

/// Long enough for any engine to hand out a waiting message.
const ARRIVE: Duration = Duration::from_secs(5);
/// How long to watch for a message that must not arrive, where nothing that does arrive
/// can prove it (a prefetch limit holding, a consumer going idle); elsewhere a marker
/// published behind it arrives first.
const QUIET: Duration = Duration::from_millis(300);

/// A message for `queue` carrying `n` in its headers and body.
pub fn message(queue: &str, n: u64, priority: Option<u8>) -> Message {
    let mut headers = Map::new();
    headers.insert("n".into(), json!(n));
    headers.insert("x-text".into(), json!("héllo ☃"));
    Message {
        headers,
        properties: Properties {
            correlation_id: Some(format!("id-{n}")),
            reply_to: Some("reply".into()),
            delivery_info: DeliveryInfo {
                exchange: String::new(),
                routing_key: queue.to_string(),
                redelivered: None,
            },
            priority,
            ..Properties::default()
        },
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: Bytes::from(format!("[[{n}], {{}}, {{}}]")),
    }
}

fn n_of(d: &Delivery) -> u64 {
    d.message()
        .headers
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX)
}

async fn publish(b: &Arc<dyn Broker>, queue: &str, n: u64, priority: Option<u8>) {
    b.publish(message(queue, n, priority), PublishOptions::default())
        .await
        .unwrap_or_else(|e| panic!("publish to {queue} failed: {e}"));
}

async fn consume(b: &Arc<dyn Broker>, queues: &[&str], prefetch: usize) -> Consumer {
    b.consume(ConsumeOptions::new(
        queues.iter().map(|q| q.to_string()).collect(),
        prefetch,
    ))
    .await
    .unwrap_or_else(|e| panic!("consume {queues:?} failed: {e}"))
}

/// The next delivery, failing the test if none arrives in time.
pub async fn next(c: &mut Consumer) -> Delivery {
    match tokio::time::timeout(ARRIVE, c.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("consumer ended"),
        Err(_) => panic!("no delivery within {ARRIVE:?}"),
    }
}

async fn nothing(c: &mut Consumer) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, c.next()).await {
        panic!("expected no delivery, got {item:?}");
    }
}

fn q(b: &BrokerUnderTest, name: &str) -> String {
    format!("{}{name}", b.prefix)
}

/// Whether the engine claims `capability` (`claimed`, from [`Broker::capabilities`]). If it
/// does not, the check `check` is skipped with a line written straight to stderr, so the
/// skip shows in a passing run (libtest hides `eprintln!`). Unlike a missing service, this
/// does not fail under `CELERIAC_REQUIRE_SERVICES=1`: an engine that does not claim a
/// capability lacks it by design, and every engine that claims it runs the check. (Each
/// engine's tests pin what it claims, so a claim cannot silently disappear.)
fn claims(b: &BrokerUnderTest, check: &str, capability: &str, claimed: bool) -> bool {
    if !claimed {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {check} ({}): the engine does not claim {capability} \
             (Broker::capabilities), so there is nothing to check",
            b.broker.url()
        );
    }
    claimed
}

/// A published message is delivered with the same headers, properties and body.
pub async fn round_trips_a_message_unchanged(b: BrokerUnderTest) {
    let queue = q(&b, "roundtrip");
    let sent = message(&queue, 7, Some(3));
    b.broker
        .publish(sent.clone(), PublishOptions::default())
        .await
        .unwrap();
    let mut c = consume(&b.broker, &[&queue], 10).await;
    let d = next(&mut c).await;
    assert_eq!(d.message(), &sent, "message changed in transit");
    assert_eq!(d.queue(), queue);
    assert!(!d.redelivered());
    d.ack().await.unwrap();
}

/// Messages of one priority come out in the order they went in.
pub async fn fifo_within_a_priority(b: BrokerUnderTest) {
    let queue = q(&b, "fifo");
    for n in 0..20 {
        publish(&b.broker, &queue, n, None).await;
    }
    let mut c = consume(&b.broker, &[&queue], 0).await;
    for n in 0..20 {
        let d = next(&mut c).await;
        assert_eq!(n_of(&d), n, "out of order");
        d.ack().await.unwrap();
    }
}

/// Priority 0 is served before 9 (Celery's Redis semantics), whatever the publish order.
pub async fn lower_priority_number_is_served_first(b: BrokerUnderTest) {
    let claimed = b.broker.capabilities().priorities;
    if !claims(
        &b,
        "lower_priority_number_is_served_first",
        "priorities",
        claimed,
    ) {
        return;
    }
    let queue = q(&b, "prio");
    publish(&b.broker, &queue, 9, Some(9)).await;
    publish(&b.broker, &queue, 5, Some(5)).await;
    publish(&b.broker, &queue, 0, Some(0)).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = next(&mut c).await;
        order.push(n_of(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(order, [0, 5, 9]);
}

/// An acknowledged message is gone: not redelivered (a marker published behind it is the
/// next delivery), not counted.
pub async fn ack_removes_the_message(b: BrokerUnderTest) {
    let queue = q(&b, "ack");
    publish(&b.broker, &queue, 1, None).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    next(&mut c).await.ack().await.unwrap();
    publish(&b.broker, &queue, 2, None).await;
    let marker = next(&mut c).await;
    assert_eq!(
        n_of(&marker),
        2,
        "an acknowledged message was delivered again"
    );
    marker.ack().await.unwrap();
    drop(c);
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 0);
}

/// `reject(false)` drops the message: a marker published behind it is the next delivery,
/// and nothing is left.
pub async fn reject_without_requeue_drops(b: BrokerUnderTest) {
    let queue = q(&b, "rejdrop");
    publish(&b.broker, &queue, 1, None).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    next(&mut c).await.reject(false).await.unwrap();
    publish(&b.broker, &queue, 2, None).await;
    let marker = next(&mut c).await;
    assert_eq!(
        n_of(&marker),
        2,
        "a message rejected without requeue came back"
    );
    marker.ack().await.unwrap();
    drop(c);
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 0);
}

/// `reject(true)` puts the message back behind those already waiting, marked redelivered.
pub async fn reject_with_requeue_goes_to_the_back(b: BrokerUnderTest) {
    let queue = q(&b, "rejback");
    publish(&b.broker, &queue, 1, None).await;
    publish(&b.broker, &queue, 2, None).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    let first = next(&mut c).await;
    assert_eq!(n_of(&first), 1);
    first.reject(true).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(
        n_of(&d),
        2,
        "a requeued message must go behind waiting ones"
    );
    d.ack().await.unwrap();
    let again = next(&mut c).await;
    assert_eq!(n_of(&again), 1);
    assert!(
        again.redelivered(),
        "a requeued message is marked redelivered"
    );
    again.ack().await.unwrap();
}

/// `restore()` puts the message back in front of those waiting, marked redelivered —
/// next in line where the engine claims `ordered_restore`, else among the next two
/// (RabbitMQ's requeue races its prefetch credit).
pub async fn restore_goes_to_the_front_marked_redelivered(b: BrokerUnderTest) {
    let queue = q(&b, "restore");
    publish(&b.broker, &queue, 1, None).await;
    publish(&b.broker, &queue, 2, None).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    let first = next(&mut c).await;
    first.restore().await.unwrap();
    let d = next(&mut c).await;
    if b.broker.capabilities().ordered_restore {
        assert_eq!(n_of(&d), 1, "a restored message must be delivered first");
        assert!(d.redelivered());
        d.ack().await.unwrap();
        return;
    }
    let (n, redelivered) = (n_of(&d), d.redelivered());
    d.ack().await.unwrap();
    let restored = if n == 1 {
        (n, redelivered)
    } else {
        let e = next(&mut c).await;
        let got = (n_of(&e), e.redelivered());
        e.ack().await.unwrap();
        got
    };
    assert_eq!(
        restored,
        (1, true),
        "the restored message comes back, redelivered"
    );
}

/// A delivery dropped without being settled comes back (as on a closed channel).
pub async fn dropped_delivery_is_restored(b: BrokerUnderTest) {
    let queue = q(&b, "dropped");
    publish(&b.broker, &queue, 1, None).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    drop(next(&mut c).await);
    let d = next(&mut c).await;
    assert_eq!(n_of(&d), 1);
    assert!(d.redelivered());
    d.ack().await.unwrap();
}

/// No more than `prefetch` deliveries are out unsettled; settling one lets the next in.
pub async fn prefetch_limits_unsettled_deliveries(b: BrokerUnderTest) {
    let queue = q(&b, "prefetch");
    for n in 0..5 {
        publish(&b.broker, &queue, n, None).await;
    }
    let mut c = consume(&b.broker, &[&queue], 2).await;
    let d0 = next(&mut c).await;
    let _d1 = next(&mut c).await;
    nothing(&mut c).await;
    d0.ack().await.unwrap();
    let d2 = next(&mut c).await;
    assert_eq!(n_of(&d2), 2);
}

/// `release_prefetch` frees the slot while the delivery stays unsettled (ETA holding).
pub async fn released_prefetch_frees_a_slot(b: BrokerUnderTest) {
    let queue = q(&b, "release");
    publish(&b.broker, &queue, 0, None).await;
    publish(&b.broker, &queue, 1, None).await;
    let mut c = consume(&b.broker, &[&queue], 1).await;
    let mut held = next(&mut c).await;
    nothing(&mut c).await;
    held.release_prefetch();
    let d = next(&mut c).await;
    assert_eq!(n_of(&d), 1);
    held.ack().await.unwrap();
    d.ack().await.unwrap();
}

/// One consumer takes from every queue it was given.
pub async fn consumes_several_queues(b: BrokerUnderTest) {
    let (qa, qb) = (q(&b, "multi-a"), q(&b, "multi-b"));
    publish(&b.broker, &qa, 1, None).await;
    publish(&b.broker, &qb, 2, None).await;
    let mut c = consume(&b.broker, &[&qa, &qb], 0).await;
    let mut got = vec![n_of(&next(&mut c).await), n_of(&next(&mut c).await)];
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
}

/// Purge deletes waiting messages and says how many; the queue is listed.
pub async fn purge_empties_and_counts(b: BrokerUnderTest) {
    let queue = q(&b, "purge");
    for n in 0..3 {
        publish(&b.broker, &queue, n, None).await;
    }
    assert_eq!(b.broker.purge(&queue).await.unwrap(), 3);
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 0);
    assert_eq!(b.broker.purge(&queue).await.unwrap(), 0);
}

/// Depth counts messages waiting (not delivered ones); the queue shows in `queues()`.
pub async fn depth_counts_waiting_messages(b: BrokerUnderTest) {
    let queue = q(&b, "depth");
    for n in 0..4 {
        publish(&b.broker, &queue, n, Some((n % 3) as u8 * 3)).await;
    }
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 4);
    assert!(
        b.broker.queues().await.unwrap().contains(&queue),
        "queue not listed"
    );
    let mut c = consume(&b.broker, &[&queue], 1).await;
    let d = next(&mut c).await;
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 3);
    d.ack().await.unwrap();
}

/// A message published with `deliver_at` is not delivered before it is due.
pub async fn delayed_delivery_waits_until_due(b: BrokerUnderTest) {
    let claimed = b.broker.capabilities().native_delay;
    if !claims(
        &b,
        "delayed_delivery_waits_until_due",
        "native_delay",
        claimed,
    ) {
        return;
    }
    let queue = q(&b, "delay");
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(600);
    b.broker
        .publish(
            message(&queue, 1, None),
            PublishOptions::deliver_at(Some(due)),
        )
        .await
        .unwrap();
    publish(&b.broker, &queue, 2, None).await;
    let mut c = consume(&b.broker, &[&queue], 0).await;
    let d = next(&mut c).await;
    assert_eq!(n_of(&d), 2, "the delayed message overtook an immediate one");
    let d = next(&mut c).await;
    assert_eq!(n_of(&d), 1);
    assert!(chrono::Utc::now() >= due, "delivered before it was due");
}

/// `publish_many` publishes every message, in order.
pub async fn publish_many_publishes_in_order(b: BrokerUnderTest) {
    let queue = q(&b, "many");
    let batch = (0..50)
        .map(|n| (message(&queue, n, None), PublishOptions::default()))
        .collect();
    b.broker.publish_many(batch).await.unwrap();
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 50);
    let mut c = consume(&b.broker, &[&queue], 0).await;
    for n in 0..50 {
        assert_eq!(n_of(&next(&mut c).await), n);
    }
}

/// What the checks that build task messages send them as.
fn send_context() -> celeriac_core::protocol::SendContext<'static> {
    celeriac_core::protocol::SendContext {
        origin: "gen1@conformance",
        reply_to: "reply",
        parent: None,
        ignore_result: None,
    }
}

/// `publish_task` and `publish_tasks` publish task messages in order; each delivery reads
/// back as the very message that was published (`task_message`), and its wire form
/// (`message`) is that message's encoding, whether the broker encoded it or passed it by
/// pointer.
pub async fn publish_tasks_round_trips_task_messages(b: BrokerUnderTest) {
    use celeriac_core::protocol::TaskMessage;
    use celeriac_core::{Route, Signature};
    let queue = q(&b, "tasks");
    let ctx = send_context();
    let sent: Vec<TaskMessage> = (0..20u64)
        .map(|n| {
            // 0, 5 and 9 fall in different priority buckets on every engine.
            let sig = Signature::new("conformance.add").args(vec![json!(n), json!("héllo ☃")]);
            let route = Route {
                priority: Some([0, 5, 9][(n % 3) as usize]),
                ..Route::queue(queue.clone())
            };
            TaskMessage::from_signature(&sig, &route, &ctx).unwrap()
        })
        .collect();
    // The first one alone (`publish_task`), the rest as a batch.
    b.broker
        .publish_task(sent[0].clone(), PublishOptions::default())
        .await
        .unwrap();
    let batch = sent[1..]
        .iter()
        .map(|m| (m.clone(), PublishOptions::default()))
        .collect();
    b.broker.publish_tasks(batch).await.unwrap();
    assert_eq!(b.broker.queue_depth(&queue).await.unwrap(), 20);
    let mut c = consume(&b.broker, &[&queue], 0).await;
    // Priority first (0, then 5, then 9) where the engine claims priorities, then
    // publish order within a priority.
    let mut expected: Vec<&TaskMessage> = sent.iter().collect();
    if b.broker.capabilities().priorities {
        expected.sort_by_key(|m| m.properties.priority);
    }
    for want in expected {
        let d = next(&mut c).await;
        let got = d
            .task_message()
            .unwrap_or_else(|e| panic!("delivery does not decode: {e}"));
        assert_eq!(&*got, want, "task message changed in transit");
        assert_eq!(
            d.message(),
            &want.encode(),
            "wire form is not the message's encoding"
        );
        d.ack().await.unwrap();
    }
}

/// A message for an exchange no queue is bound to is refused, and handed back: by
/// `publish` (the message itself) and by `publish_tasks` (it and every message after it,
/// encoded; those before it are published).
pub async fn unroutable_publishes_are_refused_and_handed_back(b: BrokerUnderTest) {
    use celeriac_core::protocol::TaskMessage;
    use celeriac_core::{Route, Signature};
    let exchange = q(&b, "nowhere");
    let mut lost = message("unused", 1, None);
    lost.properties.delivery_info = DeliveryInfo {
        exchange: exchange.clone(),
        routing_key: "nobody".into(),
        redelivered: None,
    };
    let err = b
        .broker
        .publish(lost.clone(), PublishOptions::default())
        .await
        .expect_err("a message no queue is bound for must be refused");
    assert_eq!(
        *err.message, lost,
        "the refused message must come back unchanged"
    );
    assert!(err.source.to_string().contains(&exchange), "{}", err.source);

    let queue = q(&b, "routable");
    let ctx = send_context();
    let build = |n: u64, route: &Route| {
        let sig = Signature::new("conformance.add").args(vec![json!(n)]);
        TaskMessage::from_signature(&sig, route, &ctx).unwrap()
    };
    let good = Route::queue(queue.clone());
    let bad = Route {
        exchange: exchange.clone(),
        routing_key: "nobody".into(),
        ..Route::queue("nobody")
    };
    let batch: Vec<_> = [(0, &good), (1, &good), (2, &bad), (3, &good)]
        .into_iter()
        .map(|(n, r)| (build(n, r), PublishOptions::default()))
        .collect();
    let sent: Vec<Message> = batch.iter().map(|(t, _)| t.encode()).collect();
    let err = b
        .broker
        .publish_tasks(batch)
        .await
        .expect_err("a batch with an unroutable message must fail");
    let back: Vec<&Message> = err.unpublished.iter().map(|(m, _)| m).collect();
    assert_eq!(
        back,
        vec![&sent[2], &sent[3]],
        "the unroutable one and those after it come back"
    );
    assert_eq!(
        b.broker.queue_depth(&queue).await.unwrap(),
        2,
        "those before it are published"
    );
}

/// Closing a consumer hands back what it fetched but had not handed out; nothing is lost.
pub async fn closed_consumer_returns_fetched_messages(b: BrokerUnderTest) {
    let queue = q(&b, "close");
    for n in 0..5 {
        publish(&b.broker, &queue, n, None).await;
    }
    let mut c = consume(&b.broker, &[&queue], 5).await;
    let first = next(&mut c).await;
    // Give the consumer time to fetch the rest into its buffer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = c.close().await;
    drop(first);
    for d in left {
        d.restore().await.unwrap();
    }
    let mut c = consume(&b.broker, &[&queue], 0).await;
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..5 {
        let d = next(&mut c).await;
        seen.push(n_of(&d));
        d.ack().await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4], "a message was lost or duplicated");
}

/// A consumer waiting on an empty queue gets a message published later.
pub async fn idle_consumer_wakes_for_a_new_message(b: BrokerUnderTest) {
    let queue = q(&b, "wake");
    let mut c = consume(&b.broker, &[&queue], 1).await;
    nothing(&mut c).await;
    publish(&b.broker, &queue, 42, None).await;
    assert_eq!(n_of(&next(&mut c).await), 42);
}

/// A fanout publish reaches every subscriber of that exchange, and only them (a subscriber
/// of another exchange gets a marker published there afterwards, and nothing before it).
pub async fn fanout_reaches_every_subscriber(b: BrokerUnderTest) {
    let claimed = b.broker.capabilities().fanout;
    if !claims(&b, "fanout_reaches_every_subscriber", "fanout", claimed) {
        return;
    }
    let exchange = q(&b, "broadcast");
    let mut one = b.broker.subscribe_fanout(&exchange).await.unwrap();
    let mut two = b.broker.subscribe_fanout(&exchange).await.unwrap();
    let mut other = b
        .broker
        .subscribe_fanout(&q(&b, "elsewhere"))
        .await
        .unwrap();
    let sent = message("", 9, None);
    b.broker
        .publish_fanout(&exchange, sent.clone())
        .await
        .unwrap();
    for s in [&mut one, &mut two] {
        let got = tokio::time::timeout(ARRIVE, s.next())
            .await
            .expect("broadcast arrives")
            .expect("subscribed");
        assert_eq!(got.headers, sent.headers);
        assert_eq!(got.body, sent.body);
    }
    let marker = message("", 10, None);
    b.broker
        .publish_fanout(&q(&b, "elsewhere"), marker.clone())
        .await
        .unwrap();
    let got = tokio::time::timeout(ARRIVE, other.next())
        .await
        .expect("the marker arrives")
        .expect("subscribed");
    assert_eq!(
        (got.headers, got.body),
        (marker.headers, marker.body),
        "a subscriber of another exchange got the broadcast"
    );
}

/// Queues bound to a topic exchange get what matches their binding key (`*` one word,
/// `#` zero or more), a message matching two bindings reaches both queues, and one that
/// matches none is refused and handed back.
pub async fn topic_exchanges_route_by_pattern(b: BrokerUnderTest) {
    use celeriac_core::routing::{ExchangeType, QueueSpec};
    let claimed = b.broker.capabilities().topic;
    if !claims(&b, "topic_exchanges_route_by_pattern", "topic", claimed) {
        return;
    }
    let exchange = q(&b, "media");
    let (images, png) = (q(&b, "images"), q(&b, "png"));
    for (queue, key) in [(&images, "images.*"), (&png, "#.png")] {
        b.broker
            .declare(
                &QueueSpec::new(queue.clone())
                    .exchange(exchange.clone(), ExchangeType::Topic)
                    .routing_key(key),
            )
            .await
            .unwrap_or_else(|e| panic!("declare {queue} on topic exchange: {e}"));
    }
    let via = |n: u64, key: &str| {
        let mut m = message("unused", n, None);
        m.properties.delivery_info = DeliveryInfo {
            exchange: exchange.clone(),
            routing_key: key.into(),
            redelivered: None,
        };
        m
    };
    for (n, key) in [(1, "images.jpg"), (2, "images.png"), (3, "docs.scan.png")] {
        b.broker
            .publish(via(n, key), PublishOptions::default())
            .await
            .unwrap_or_else(|e| panic!("publish `{key}`: {e}"));
    }
    let err = b
        .broker
        .publish(via(4, "docs.txt"), PublishOptions::default())
        .await
        .expect_err("a key no binding matches must be refused");
    assert_eq!(n_of_message(&err.message), 4);
    for (queue, want, why) in [
        (&images, [1, 2], "`images.*` gets images.jpg and images.png"),
        (&png, [2, 3], "`#.png` gets images.png and docs.scan.png"),
    ] {
        let mut c = consume(&b.broker, &[queue], 0).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            let d = next(&mut c).await;
            got.push(n_of(&d));
            d.ack().await.unwrap();
        }
        assert_eq!(got, want, "{why}");
        nothing(&mut c).await;
    }
}

fn n_of_message(m: &Message) -> u64 {
    m.headers
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX)
}
