//! What the fuzz targets share: turning fuzzer bytes into a transport [`Message`], either
//! as text ([`message_from`], for mutating real messages) or built from typed choices
//! ([`typed_message`], which reaches values text mutation rarely makes, such as
//! `"retries": 1e300` or an `eta` in the year 99999).

use bytes::Bytes;
use celeriac_core::message::{Message, Properties, CONTENT_TYPE_JSON};
use celeriac_core::protocol::TaskMessage;
use std::fmt;

use libfuzzer_sys::arbitrary::{Arbitrary, Result, Unstructured};
use serde_json::{json, Map, Number, Value};

/// Reads `HEADERS \0 BODY`: the part before the first NUL byte is the headers as a JSON
/// object (Python's `NaN`/`Infinity` allowed, as the decoders allow them), the rest is the
/// body, verbatim. Without a NUL byte, or when the headers part is not a JSON object, the
/// headers are `default_headers` and the whole input is the body, so a plain body seed
/// still reaches the decoder.
pub fn message_from(data: &[u8], default_headers: Value) -> Message {
    let default_headers =
        || -> Map<String, Value> { default_headers.as_object().cloned().unwrap_or_default() };
    let (headers, body) = match data.iter().position(|b| *b == 0) {
        Some(nul) => match celeriac_core::protocol::json::parse_lenient(&data[..nul]) {
            Ok(Value::Object(h)) => (h, &data[nul + 1..]),
            _ => (default_headers(), data),
        },
        None => (default_headers(), data),
    };
    json_message(headers, Bytes::copy_from_slice(body))
}

fn json_message(headers: Map<String, Value>, body: Bytes) -> Message {
    Message {
        headers,
        properties: Properties::default(),
        content_type: CONTENT_TYPE_JSON.into(),
        content_encoding: "utf-8".into(),
        body,
    }
}

/// Decodes `msg` as a worker does; when it decodes, checks that the re-encoded message
/// (what a retry or a forwarded task sends) decodes to the same task, id and arguments.
pub fn decode_and_round_trip(msg: &Message) {
    let Ok(task) = TaskMessage::decode(msg) else {
        return;
    };
    let again = match TaskMessage::decode(&task.encode()) {
        Ok(t) => t,
        Err(e) => panic!("a re-encoded task message does not decode: {e}\n{task:#?}"),
    };
    assert_eq!(
        (&again.headers.task, &again.headers.id),
        (&task.headers.task, &task.headers.id)
    );
    assert_eq!(again.args, task.args);
    assert_eq!(again.kwargs, task.kwargs);
}

/// Header names the decoder knows, plus `compression` (refused unless null).
fn header_names() -> impl Iterator<Item = &'static str> {
    celeriac_core::protocol::KNOWN_HEADERS
        .into_iter()
        .chain(["compression"])
}

/// Option names Celery puts in a signature's `options`.
const OPTION_NAMES: [&str; 10] = [
    "countdown",
    "eta",
    "expires",
    "priority",
    "time_limit",
    "soft_time_limit",
    "queue",
    "task_id",
    "link",
    "retries",
];

/// A [`typed_message`] as a fuzz target's input. Its `Debug` form (what `cargo fuzz fmt`
/// prints for a crashing input) is the headers as JSON, a NUL byte written as `\0`, and the
/// body: the `message` target's input format, ready to paste into a regression test.
pub struct TypedMessage(pub Message);

impl<'a> Arbitrary<'a> for TypedMessage {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        typed_message(u).map(TypedMessage)
    }
}

impl fmt::Debug for TypedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers = Value::Object(self.0.headers.clone());
        write!(f, "{headers}\\0{}", String::from_utf8_lossy(&self.0.body))
    }
}

/// A task message built from typed choices: most known headers present with values of
/// the right type or near it (edge numbers, timestamps with out-of-range fields), a body
/// of v2 shape, v1 shape or raw bytes.
pub fn typed_message(u: &mut Unstructured<'_>) -> Result<Message> {
    let mut headers = Map::new();
    for name in header_names() {
        // `task` and `id` are nearly always there, or the decoder stops at them.
        let keep = match name {
            "task" | "id" => !u.ratio(1, 16)?,
            "compression" => u.ratio(1, 16)?,
            _ => u.ratio(1, 2)?,
        };
        if keep {
            let v = match name {
                "task" | "id" if u.ratio(7, 8)? => Value::String(short_string(u)?),
                "eta" | "expires" if u.ratio(3, 4)? => Value::String(timestamp(u)?),
                "timelimit" if u.ratio(3, 4)? => json!([number_or_null(u)?, number_or_null(u)?]),
                "retries" | "group_index" | "replaced_task_nesting" if u.ratio(3, 4)? => number(u)?,
                _ => value(u, 2)?,
            };
            headers.insert(name.to_string(), v);
        }
    }
    for _ in 0..u.int_in_range(0..=2)? {
        headers.insert(short_string(u)?, value(u, 1)?);
    }
    let body = match u.int_in_range(0..=3)? {
        0 => {
            let args = array(u, 2)?;
            let kwargs = object(u, 2)?;
            json!([args, kwargs, embed(u)?])
        }
        1 => json!([array(u, 2)?, object(u, 2)?]),
        2 => {
            // Protocol v1: the task's fields in the body.
            let mut body = Map::new();
            for name in [
                "task",
                "id",
                "args",
                "kwargs",
                "eta",
                "expires",
                "retries",
                "timelimit",
                "taskset",
                "callbacks",
                "errbacks",
                "chord",
            ] {
                if u.ratio(1, 2)? {
                    let v = match name {
                        "eta" | "expires" => Value::String(timestamp(u)?),
                        "args" => array(u, 2)?,
                        "callbacks" | "errbacks" => json!([signature(u)?]),
                        "chord" => signature(u)?,
                        _ => value(u, 1)?,
                    };
                    body.insert(name.to_string(), v);
                }
            }
            Value::Object(body)
        }
        _ => {
            let raw: &[u8] = u.arbitrary()?;
            return Ok(json_message(headers, Bytes::copy_from_slice(raw)));
        }
    };
    Ok(json_message(
        headers,
        Bytes::from(body.to_string().into_bytes()),
    ))
}

fn embed(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut e = Map::new();
    for key in ["callbacks", "errbacks", "chain"] {
        let v = match u.int_in_range(0..=2)? {
            0 => Value::Null,
            1 => json!([signature(u)?]),
            _ => value(u, 1)?,
        };
        e.insert(key.to_string(), v);
    }
    let chord = if u.ratio(1, 2)? {
        Value::Null
    } else {
        signature(u)?
    };
    e.insert("chord".to_string(), chord);
    Ok(Value::Object(e))
}

fn signature(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut options = Map::new();
    for name in OPTION_NAMES {
        if u.ratio(1, 3)? {
            let v = match name {
                "eta" | "expires" if u.ratio(1, 2)? => Value::String(timestamp(u)?),
                _ => value(u, 1)?,
            };
            options.insert(name.to_string(), v);
        }
    }
    Ok(json!({
        "task": short_string(u)?,
        "args": array(u, 1)?,
        "kwargs": object(u, 1)?,
        "options": options,
        "subtask_type": if u.ratio(1, 4)? { value(u, 0)? } else { Value::Null },
        "immutable": u.arbitrary::<bool>()?,
    }))
}

/// Numbers at the edges of every type the decoders convert to.
const EDGE_NUMBERS: [f64; 18] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-9,
    5e-324,
    4294967295.0,
    4294967296.0,
    9.007199254740993e15,
    9.223372036854776e18,
    1.8446744073709552e19,
    1.8e19,
    1e20,
    1e300,
    -1e300,
    f64::MAX,
    f64::MIN,
];

fn number(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=4)? {
        0 => Value::from(u.arbitrary::<u64>()?),
        1 => Value::from(u.arbitrary::<i64>()?),
        2 => Value::from(u.int_in_range(0..=1000u32)?),
        3 => Number::from_f64(*u.choose(&EDGE_NUMBERS)?).map_or(Value::Null, Value::Number),
        _ => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
    })
}

fn number_or_null(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 4)? {
        Ok(Value::Null)
    } else {
        number(u)
    }
}

/// ISO-8601-like text: plausible shapes, with any field possibly out of range.
fn timestamp(u: &mut Unstructured<'_>) -> Result<String> {
    let year: i64 = match u.int_in_range(0..=3)? {
        0 => u.int_in_range(1970..=2100)?,
        1 => *u.choose(&[
            0, 1, 9999, 10000, 99999, 262143, 262144, -1, -262144, -262145,
        ])?,
        _ => u.int_in_range(-300_000..=300_000)?,
    };
    let field = |u: &mut Unstructured<'_>, normal: u32| -> Result<u32> {
        if u.ratio(7, 8)? {
            u.int_in_range(0..=normal)
        } else {
            u.int_in_range(0..=99)
        }
    };
    let (month, day) = (field(u, 12)?, field(u, 31)?);
    let (hour, minute, second) = (field(u, 23)?, field(u, 59)?, field(u, 60)?);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+}")
    };
    let frac = match u.int_in_range(0..=3)? {
        0 => String::new(),
        1 => format!(".{:06}", u.int_in_range(0..=999_999u32)?),
        2 => format!(".{}", u.arbitrary::<u64>()?),
        _ => ".".to_string(),
    };
    let tz = match u.int_in_range(0..=5)? {
        0 => String::new(),
        1 => "Z".to_string(),
        2 => "+00:00".to_string(),
        3 => format!(
            "{}{:02}:{:02}",
            if u.arbitrary()? { '+' } else { '-' },
            field(u, 23)?,
            field(u, 59)?
        ),
        4 => format!(
            "{}{:02}{:02}",
            if u.arbitrary()? { '+' } else { '-' },
            field(u, 23)?,
            field(u, 59)?
        ),
        _ => short_string(u)?,
    };
    let sep = *u.choose(&["T", " ", "t"])?;
    Ok(match u.int_in_range(0..=5)? {
        0 => format!("{year}-{month:02}-{day:02}"),
        1 => format!("{year}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}"),
        _ => format!("{year}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{frac}{tz}"),
    })
}

fn short_string(u: &mut Unstructured<'_>) -> Result<String> {
    let s: &str = u.arbitrary()?;
    Ok(s.chars().take(24).collect())
}

fn array(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let mut items = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        items.push(value(u, depth)?);
    }
    Ok(Value::Array(items))
}

fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=3)? {
        m.insert(short_string(u)?, value(u, depth)?);
    }
    Ok(Value::Object(m))
}

/// Any JSON value, nested at most `depth` deep.
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 => Value::String(short_string(u)?),
        4 => Value::String(timestamp(u)?),
        5 => array(u, depth - 1)?,
        _ => object(u, depth - 1)?,
    })
}
