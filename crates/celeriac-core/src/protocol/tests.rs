use bytes::Bytes;
use chrono::Utc;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::decode::KNOWN_HEADERS;
use super::*;
use crate::message::{Message, Properties};
use crate::routing::Route;
use crate::signature::Signature;

fn message(headers: Value, body: &[u8], content_type: &str) -> Message {
    Message {
        headers: headers.as_object().cloned().unwrap_or_default(),
        properties: Properties::default(),
        content_type: content_type.into(),
        content_encoding: "utf-8".into(),
        body: Bytes::copy_from_slice(body),
    }
}

fn ok_headers() -> Value {
    json!({"task": "tasks.add", "id": "4f0c0ad8-8d8b-4f1e-9c43-2f7b8bfb0e11"})
}

#[test]
fn encodes_the_19_headers_in_celerys_order() {
    let sig = Signature::new("tasks.add").args(vec![json!(2), json!(3)]);
    let ctx = SendContext {
        origin: "gen1@host",
        reply_to: "r",
        parent: None,
        ignore_result: Some(false),
    };
    let msg = TaskMessage::from_signature(&sig, &Route::queue("celery"), &ctx)
        .unwrap()
        .encode();
    let keys: Vec<&str> = msg.headers.keys().map(String::as_str).collect();
    assert_eq!(keys, KNOWN_HEADERS);
    assert_eq!(msg.headers["argsrepr"], json!("(2, 3)"));
    assert_eq!(msg.headers["timelimit"], json!([null, null]));
    assert_eq!(msg.headers["root_id"], msg.headers["id"]);
    assert_eq!(
        msg.properties.correlation_id.as_deref(),
        msg.headers["id"].as_str()
    );
    assert_eq!(msg.properties.delivery_info.routing_key, "celery");
    assert_eq!(msg.properties.priority, Some(0));
    assert_eq!(
        std::str::from_utf8(&msg.body).unwrap(),
        r#"[[2,3],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]"#
    );
}

#[test]
fn countdown_expires_and_limits_become_headers() {
    let before = Utc::now();
    let sig = Signature::new("t")
        .countdown(10.0)
        .expires(60.0)
        .time_limit(30.0)
        .soft_time_limit(20.5);
    let m = TaskMessage::from_signature(&sig, &Route::queue("q"), &SendContext::default()).unwrap();
    let eta = m.headers.eta.unwrap();
    assert!(
        eta >= before + chrono::Duration::seconds(10)
            && eta <= Utc::now() + chrono::Duration::seconds(10)
    );
    let ms: i64 = m.properties.expiration.as_deref().unwrap().parse().unwrap();
    assert!((59_000..=60_000).contains(&ms), "{ms}");
    let enc = m.encode();
    assert_eq!(enc.headers["timelimit"], json!([30, 20.5]));
    assert!(enc.headers["eta"].as_str().unwrap().ends_with("+00:00"));
}

#[test]
fn bad_options_are_errors() {
    let route = Route::queue("q");
    let ctx = SendContext::default();
    for sig in [
        Signature::new("t").set_option("countdown", "soon"),
        Signature::new("t").set_option("eta", "not-a-date"),
        Signature::new("t").set_option("link", 5),
        Signature::new("t").set_option("ignore_result", "yes"),
        Signature::new(""),
    ] {
        let e = TaskMessage::from_signature(&sig, &route, &ctx).unwrap_err();
        assert!(e.to_string().starts_with("cannot send"), "{e}");
    }
}

#[test]
fn decodes_a_message_with_only_task_and_id() {
    let m = TaskMessage::decode(&message(
        ok_headers(),
        b"[[1], {\"y\": 2}, {}]",
        "application/json",
    ))
    .unwrap();
    assert_eq!(m.headers.retries, 0);
    assert_eq!(m.headers.root_id, None);
    assert_eq!(m.args, vec![json!(1)]);
    assert_eq!(m.kwargs["y"], json!(2));
    assert_eq!(m.embed, Embed::default());
}

#[test]
fn decodes_protocol_v1() {
    let body = br#"{"task": "tasks.add", "id": "abc", "args": [2, 5], "kwargs": {}, "retries": 1, "eta": null, "taskset": "g1", "callbacks": null}"#;
    let m = TaskMessage::decode(&message(json!({}), body, "application/json")).unwrap();
    assert_eq!(
        (m.headers.task.as_str(), m.headers.id.as_str()),
        ("tasks.add", "abc")
    );
    assert_eq!(m.headers.retries, 1);
    assert_eq!(m.headers.group.as_deref(), Some("g1"));
    assert_eq!(m.args, vec![json!(2), json!(5)]);
}

#[test]
fn keeps_extra_headers_and_embed() {
    let mut h = ok_headers();
    h["x-custom"] = json!("v");
    let body = br#"[[2, 2], {}, {"callbacks": [{"task": "tasks.mul", "args": [10], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "errbacks": null, "chain": [], "chord": null}]"#;
    let m = TaskMessage::decode(&message(h, body, "application/json")).unwrap();
    assert_eq!(m.headers.extra["x-custom"], json!("v"));
    assert_eq!(m.embed.callbacks.as_ref().unwrap()[0].task, "tasks.mul");
    assert_eq!(m.embed.chain, Some(vec![]));
    let again = TaskMessage::decode(&m.encode()).unwrap();
    assert_eq!(again.headers.extra["x-custom"], json!("v"));
    assert_eq!(again.embed, m.embed);
}

fn decode_err(headers: Value, body: &[u8], ct: &str) -> DecodeError {
    TaskMessage::decode(&message(headers, body, ct)).unwrap_err()
}

#[test]
fn malformed_messages_get_typed_errors() {
    let body = b"[[], {}, {}]";
    let e = decode_err(ok_headers(), body, CONTENT_TYPE_PICKLE);
    assert!(
        matches!(e.kind, DecodeErrorKind::ContentDisallowed { ref short, .. } if short == "pickle")
    );
    assert_eq!(
        e.to_string(),
        "refusing to deserialize untrusted content of type pickle (application/x-python-serialize)"
    );
    assert_eq!(
        e.task_id.as_deref(),
        Some("4f0c0ad8-8d8b-4f1e-9c43-2f7b8bfb0e11")
    );
    assert!(matches!(
        decode_err(ok_headers(), b"[[1, 2], {}", "application/json").kind,
        DecodeErrorKind::InvalidJson(_)
    ));
    assert!(matches!(
        decode_err(ok_headers(), b"\xff\xfe", "application/json").kind,
        DecodeErrorKind::InvalidJson(_)
    ));
    assert!(matches!(
        decode_err(ok_headers(), b"[[1]]\x00", "application/json").kind,
        DecodeErrorKind::InvalidJson(_)
    ));
    for shape in [
        &b"[1, {}, {}]"[..],
        b"[[], [], {}]",
        b"[[]]",
        b"[[], {}, {}, {}]",
        b"42",
        b"\"s\"",
        b"[[], {}, 5]",
    ] {
        assert!(
            matches!(
                decode_err(ok_headers(), shape, "application/json").kind,
                DecodeErrorKind::BodyShape(_)
            ),
            "{}",
            String::from_utf8_lossy(shape)
        );
    }
    assert_eq!(
        decode_err(json!({"task": "t"}), body, "application/json").kind,
        DecodeErrorKind::MissingHeader("id")
    );
    assert_eq!(
        decode_err(json!({"id": "i"}), body, "application/json").kind,
        DecodeErrorKind::MissingHeader("task")
    );
    let mut h = ok_headers();
    h["eta"] = json!("not-a-date");
    let e = decode_err(h, body, "application/json");
    assert_eq!(
        e.to_string(),
        "header `eta` is invalid: \"not-a-date\" is not an ISO-8601 time"
    );
    let mut h = ok_headers();
    h["retries"] = json!("three");
    assert!(matches!(
        decode_err(h, body, "application/json").kind,
        DecodeErrorKind::BadHeader {
            name: "retries",
            ..
        }
    ));
    let mut h = ok_headers();
    h["id"] = json!(5);
    assert!(matches!(
        decode_err(h, body, "application/json").kind,
        DecodeErrorKind::BadHeader { name: "id", .. }
    ));
    let mut h = ok_headers();
    h["compression"] = json!("application/x-gzip");
    assert!(matches!(
        decode_err(h, body, "application/json").kind,
        DecodeErrorKind::UnsupportedCompression(_)
    ));
}

#[test]
fn accepts_python_quirks() {
    let mut h = ok_headers();
    h["retries"] = json!(2.0);
    h["eta"] = json!("2020-01-01T00:00:00Z");
    h["expires"] = json!("2099-01-01T00:00:00");
    h["timelimit"] = json!([30, 20.5]);
    let m = TaskMessage::decode(&message(h, b"[[NaN, 1e+100, 1180591620717411303424], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]", "application/json")).unwrap();
    assert_eq!(m.headers.retries, 2);
    assert_eq!(m.headers.timelimit, (Some(30.0), Some(20.5)));
    assert_eq!(m.args[0], Value::Null);
    assert!(m.args[2].is_number());
    // Two-element bodies (no embed) are read with an empty embed.
    let m = TaskMessage::decode(&message(ok_headers(), b"[[1], {}]", "application/json")).unwrap();
    assert_eq!(m.embed, Embed::default());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_signature() -> impl Strategy<Value = Signature> {
    (
        "[a-z][a-z0-9_.]{0,20}",
        prop::collection::vec(arb_json(), 0..4),
        prop::collection::btree_map("[a-z_]{1,8}", arb_json(), 0..4),
        proptest::option::of(0u8..=9),
        proptest::option::of(0.0f64..1.0e6),
        proptest::option::of("[a-z0-9]{1,10}"),
        any::<bool>(),
        proptest::option::of(0.0f64..1.0e4),
        prop::collection::vec("[a-z.]{1,10}", 0..3),
    )
        .prop_map(
            |(task, args, kwargs, priority, countdown, queue, immutable, limit, links)| {
                let mut sig = Signature::new(task)
                    .args(args)
                    .kwargs(kwargs.into_iter().collect());
                if let Some(p) = priority {
                    sig = sig.priority(p);
                }
                if let Some(c) = countdown {
                    sig = sig.countdown(c);
                }
                if let Some(q) = queue {
                    sig = sig.queue(q);
                }
                if let Some(l) = limit {
                    sig = sig.time_limit(l);
                }
                for l in links {
                    sig = sig.link(Signature::new(l).set_immutable(immutable));
                }
                sig.set_immutable(immutable)
            },
        )
}

proptest! {
    #[test]
    fn any_signature_round_trips(sig in arb_signature(), parent in proptest::option::of(("[a-f0-9-]{36}", "[a-f0-9-]{36}"))) {
        let parent = parent.as_ref().map(|(p, r): &(String, String)| (p.as_str(), r.as_str()));
        let ctx = SendContext { origin: "gen1@h", reply_to: "r", parent, ignore_result: None };
        let router = crate::routing::Router::default();
        let route = router.route(&sig);
        let sent = TaskMessage::from_signature(&sig, &route, &ctx).unwrap();
        let wire = sent.encode();
        // Through the kombu envelope too, as Redis and SQLite carry it.
        let (via_envelope, _) = envelope::decode(&envelope::encode(&wire, "tag")).unwrap();
        prop_assert_eq!(&via_envelope, &wire);
        let got = TaskMessage::decode(&via_envelope).unwrap();
        prop_assert_eq!(&got.args, &sig.args);
        prop_assert_eq!(&got.kwargs, &sig.kwargs);
        prop_assert_eq!(&got.headers.task, &sig.task);
        prop_assert_eq!(got.embed.callbacks.as_ref().map(Vec::len), sig.option("link").map(|l| l.as_array().map_or(0, Vec::len)));
        // Times survive to the microsecond Python keeps.
        prop_assert_eq!(got.headers.eta.map(|t| t.timestamp_micros()), sent.headers.eta.map(|t| t.timestamp_micros()));
        // Re-encoding the decoded message gives the same wire message.
        prop_assert_eq!(got.encode(), wire);
    }

    #[test]
    fn decoding_never_panics_on_any_body(body in prop::collection::vec(any::<u8>(), 0..256), ct in prop_oneof![Just("application/json".to_string()), Just(String::new()), Just(CONTENT_TYPE_PICKLE.to_string()), "\\PC{0,20}"]) {
        let _ = TaskMessage::decode(&message(ok_headers(), &body, &ct));
    }

    #[test]
    fn decoding_never_panics_on_any_json(headers in arb_json(), body in arb_json()) {
        let _ = TaskMessage::decode(&message(headers, body.to_string().as_bytes(), "application/json"));
    }

    #[test]
    fn decoding_never_panics_on_truncations(cut in 0usize..200) {
        let full = br#"[[1, "two", {"three": [3.5, null]}], {"k": true}, {"callbacks": [{"task": "t", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "errbacks": null, "chain": null, "chord": null}]"#;
        let cut = cut.min(full.len());
        let r = TaskMessage::decode(&message(ok_headers(), &full[..cut], "application/json"));
        prop_assert!(cut == full.len() || r.is_err());
    }

    #[test]
    fn envelope_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = envelope::decode(&bytes);
    }
}
