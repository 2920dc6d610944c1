//! AMQP field tables ↔ JSON: the `headers` of a message (for a task, the protocol v2
//! headers) travel as an AMQP table, as py-amqp writes them.
//!
//! Written as py-amqp writes Python values: strings as long strings (`S`), booleans `t`,
//! floats `d`, integers `I` when they fit 32 bits else `l`, objects as tables `F`, arrays
//! `A`, null `V`. Read: every AMQP 0-9-1 and RabbitMQ field type (other clients write
//! `b`, `s`, `f`, `D`, `T`, `x`…): integers as JSON integers, floats and decimals as JSON
//! numbers (a NaN or infinity, which JSON cannot hold, as null), timestamps as seconds,
//! byte arrays and non-UTF-8 strings as text with replacement characters.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// A JSON object as an AMQP table (keys longer than 255 bytes, which AMQP cannot carry,
/// are cut at a character boundary).
pub(crate) fn to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(short(k), to_value(v));
    }
    table
}

fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

/// One JSON value as an AMQP field value.
pub(crate) fn to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else {
                // A u64 beyond i64 or a float: a double, as Python's float.
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_value).collect::<Vec<_>>(),
        )),
        Value::Object(m) => AMQPValue::FieldTable(to_table(m)),
    }
}

/// An AMQP table as a JSON object.
pub(crate) fn from_table(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), from_value(v)))
        .collect()
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// One AMQP field value as JSON.
pub(crate) fn from_value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(from_value).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(from_table(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_headers_round_trip() {
        let headers = json!({
            "lang": "py", "task": "tasks.add", "id": "6f1c", "shadow": null,
            "eta": null, "retries": 0, "timelimit": [null, 30.5],
            "big": 1i64 << 40, "neg": -3, "ignore_result": false,
            "stamps": {}, "nested": {"a": [1, "x", {"b": null}]}, "text": "héllo ☃"
        });
        let Value::Object(map) = headers else {
            unreachable!()
        };
        let table = to_table(&map);
        assert!(matches!(
            table.inner().get("retries"),
            Some(AMQPValue::LongInt(0))
        ));
        assert!(matches!(
            table.inner().get("big"),
            Some(AMQPValue::LongLongInt(_))
        ));
        assert!(matches!(
            table.inner().get("lang"),
            Some(AMQPValue::LongString(_))
        ));
        assert_eq!(from_table(&table), map);
    }

    #[test]
    fn every_field_type_reads() {
        use lapin::types::{ByteArray, DecimalValue};
        let mut t = FieldTable::default();
        t.insert("b".into(), AMQPValue::ShortShortInt(-1));
        t.insert("f".into(), AMQPValue::Float(1.5));
        t.insert("nan".into(), AMQPValue::Double(f64::NAN));
        t.insert(
            "d".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 150,
            }),
        );
        t.insert("s".into(), AMQPValue::ShortString("short".into()));
        t.insert("T".into(), AMQPValue::Timestamp(1_700_000_000));
        t.insert(
            "x".into(),
            AMQPValue::ByteArray(ByteArray::from(&b"by\xfftes"[..])),
        );
        let m = from_table(&t);
        assert_eq!(m["b"], json!(-1));
        assert_eq!(m["f"], json!(1.5));
        assert_eq!(m["nan"], Value::Null);
        assert_eq!(m["d"], json!(1.5));
        assert_eq!(m["s"], json!("short"));
        assert_eq!(m["T"], json!(1_700_000_000u64));
        assert_eq!(m["x"], json!("by\u{fffd}tes"));
    }
}
