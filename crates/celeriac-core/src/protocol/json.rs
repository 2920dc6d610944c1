//! JSON as Python writes it: a lenient reader for the `NaN`/`Infinity` tokens Python's
//! encoder emits, and Python `repr()` text for `argsrepr`/`kwargsrepr`.
//!
//! serde_json is strict (RFC 8259), which is right for everything celeriac writes. Python's
//! `json.dumps` writes bare `NaN`, `Infinity` and `-Infinity` for non-finite floats, so a
//! body that fails strict parsing gets one more try with those tokens (outside strings)
//! read as `null`. No crate does exactly this, and the rewrite only runs on bodies that
//! would otherwise be refused.

use serde_json::Value;

/// Parses JSON, accepting Python's non-finite float tokens as `null`.
pub fn parse_lenient(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(strict) => match replace_nonfinite(bytes) {
            Some(rewritten) => serde_json::from_slice(&rewritten).map_err(|_| strict),
            None => Err(strict),
        },
    }
}

/// Rewrites `NaN`, `Infinity`, `-Infinity` outside strings to `null`; `None` if there were none.
fn replace_nonfinite(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.extend_from_slice(b"null");
                i += t.len();
                changed = true;
            }
            None => {
                if b == b'"' {
                    in_string = true;
                }
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Python's `repr()` of the positional args tuple, truncated as Celery's `saferepr` does.
///
/// ```
/// use serde_json::json;
/// use celeriac_core::protocol::json::args_repr;
/// assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
/// assert_eq!(args_repr(&[json!("a")]), "('a',)");
/// ```
pub fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        repr_into(v, &mut out);
        if out.len() > REPR_LIMIT {
            break;
        }
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate(out)
}

/// Python's `repr()` of one value (a task's result in a `task-succeeded` event),
/// truncated as Celery's `saferepr` does.
///
/// ```
/// use serde_json::json;
/// use celeriac_core::protocol::json::value_repr;
/// assert_eq!(value_repr(&json!({"a": [1, null, true]})), "{'a': [1, None, True]}");
/// ```
pub fn value_repr(v: &Value) -> String {
    let mut out = String::new();
    repr_into(v, &mut out);
    truncate(out)
}

/// Python's `repr()` of the kwargs dict.
pub fn kwargs_repr(kwargs: &serde_json::Map<String, Value>) -> String {
    let mut out = String::new();
    repr_object(kwargs, &mut out);
    truncate(out)
}

const REPR_LIMIT: usize = 1024;

fn truncate(mut s: String) -> String {
    if s.len() > REPR_LIMIT {
        let mut cut = REPR_LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn repr_into(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => repr_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(item, out);
                if out.len() > REPR_LIMIT {
                    break;
                }
            }
            out.push(']');
        }
        Value::Object(map) => repr_object(map, out),
    }
}

fn repr_object(map: &serde_json::Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        repr_str(k, out);
        out.push_str(": ");
        repr_into(v, out);
        if out.len() > REPR_LIMIT {
            break;
        }
    }
    out.push('}');
}

fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_python_nonfinite_floats() {
        let v = parse_lenient(br#"[[NaN, Infinity, -Infinity, "NaN in a string"], {}]"#).unwrap();
        assert_eq!(v, json!([[null, null, null, "NaN in a string"], {}]));
        assert!(parse_lenient(b"[Nope]").is_err());
        assert!(parse_lenient(br#"["unterminated"#).is_err());
        let v = parse_lenient(br#"["escaped \" NaN", NaN]"#).unwrap();
        assert_eq!(v, json!(["escaped \" NaN", null]));
    }

    #[test]
    fn reprs_like_python() {
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(args_repr(&[json!(5)]), "(5,)");
        assert_eq!(
            args_repr(&[json!({"a": [1, true, null]}), json!("it's")]),
            r#"({'a': [1, True, None]}, "it's")"#
        );
        assert_eq!(kwargs_repr(&serde_json::Map::new()), "{}");
        let mut m = serde_json::Map::new();
        m.insert("x".into(), json!(1.5));
        assert_eq!(kwargs_repr(&m), "{'x': 1.5}");
        let long = args_repr(&[json!("x".repeat(5000))]);
        assert!(long.len() <= 1024 + 3 && long.ends_with("..."));
    }
}
