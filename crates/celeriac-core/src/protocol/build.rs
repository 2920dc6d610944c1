//! Signature → message: [`TaskMessage::from_signature`] turns a [`Signature`] and its
//! options into the message Celery's `apply_async` would send, in a few named steps
//! (timing, lineage, display, stamps, embed, properties) run in the order the options are
//! checked, so the first bad option is still the one reported.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{json, Embed, SignatureError, TaskHeaders, TaskMessage};
use crate::message::{DeliveryInfo, Properties};
use crate::routing::Route;
use crate::signature::Signature;
use crate::time;

/// What a sender contributes to every message it builds.
#[derive(Debug, Clone, Default)]
pub struct SendContext<'a> {
    /// `gen<pid>@<host>` of the sending process.
    pub origin: &'a str,
    /// The sending process's reply-to id.
    pub reply_to: &'a str,
    /// Id and root id of the task sending this one, when sent from inside a task.
    pub parent: Option<(&'a str, &'a str)>,
    /// `ignore_result` to send when the signature does not say (`None` = task's default).
    pub ignore_result: Option<bool>,
}

impl TaskMessage {
    /// Builds the message for sending `sig` along `route`.
    ///
    /// `countdown` becomes an absolute `eta`, `expires` in seconds an absolute time, a
    /// missing `task_id` a new UUID4, and `link`/`link_error`/`chain`/`chord` options the
    /// embed, exactly as Celery's `apply_async` does.
    pub fn from_signature(
        sig: &Signature,
        route: &Route,
        ctx: &SendContext<'_>,
    ) -> Result<Self, SignatureError> {
        let o = Options::checked(sig)?;
        let now = Utc::now();
        let id = o
            .opt_str("task_id")?
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut h = TaskHeaders::new(sig.task.clone(), id.clone());
        timing(&o, &mut h, now)?;
        grouping_and_limits(&o, &mut h)?;
        lineage(&o, &mut h, ctx, &id)?;
        display_and_result(&o, &mut h, ctx)?;
        stamps_and_extra_headers(&o, &mut h)?;
        let embed = embed(&o)?;
        let properties = properties(&o, route, ctx, id, &h, now)?;
        Ok(Self {
            headers: h,
            args: sig.args.clone(),
            kwargs: sig.kwargs.clone(),
            embed,
            properties,
        })
    }
}

/// A signature's options, read with the errors [`TaskMessage::from_signature`] reports.
struct Options<'s> {
    sig: &'s Signature,
}

impl<'s> Options<'s> {
    /// The options of `sig`, once it has a task name and no encoding error.
    fn checked(sig: &'s Signature) -> Result<Self, SignatureError> {
        let o = Self { sig };
        if let Some(e) = &sig.encode_error {
            return Err(o.err(e.clone()));
        }
        if sig.task.is_empty() {
            return Err(o.err("the task name is empty".into()));
        }
        Ok(o)
    }

    fn err(&self, reason: String) -> SignatureError {
        SignatureError {
            task: self.sig.task.clone(),
            reason,
        }
    }

    fn option(&self, key: &str) -> Option<&'s Value> {
        self.sig.option(key)
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, SignatureError> {
        match self.option(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.err(format!("option `{key}` must be a string, got {other}"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, SignatureError> {
        match self.option(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.err(format!(
                    "option `{key}` must be a number of seconds, got {v}"
                ))
            }),
        }
    }
}

/// `eta` (or `countdown` from `now`) and `expires` (a time, or seconds from `now`).
fn timing(o: &Options<'_>, h: &mut TaskHeaders, now: DateTime<Utc>) -> Result<(), SignatureError> {
    h.eta = match o.option("eta") {
        Some(Value::String(s)) => Some(
            time::parse_iso(s)
                .ok_or_else(|| o.err(format!("option `eta` is not an ISO-8601 time: {s:?}")))?,
        ),
        Some(other) => {
            return Err(o.err(format!(
                "option `eta` must be an ISO-8601 string, got {other}"
            )))
        }
        None => o
            .opt_f64("countdown")?
            .map(|secs| now + time::seconds(secs)),
    };
    h.expires = match o.option("expires") {
        Some(Value::String(s)) => Some(
            time::parse_iso(s)
                .ok_or_else(|| o.err(format!("option `expires` is not an ISO-8601 time: {s:?}")))?,
        ),
        Some(_) => o.opt_f64("expires")?.map(|secs| now + time::seconds(secs)),
        None => None,
    };
    Ok(())
}

/// `shadow`, `group_id`/`group_index`, and the `time_limit`/`soft_time_limit` pair.
fn grouping_and_limits(o: &Options<'_>, h: &mut TaskHeaders) -> Result<(), SignatureError> {
    h.shadow = o.opt_str("shadow")?;
    h.group = o.opt_str("group_id")?;
    h.group_index = o.option("group_index").and_then(Value::as_u64);
    h.timelimit = (o.opt_f64("time_limit")?, o.opt_f64("soft_time_limit")?);
    Ok(())
}

/// Parent and root ids: from the sending task, overridden by `root_id`/`parent_id` options.
fn lineage(
    o: &Options<'_>,
    h: &mut TaskHeaders,
    ctx: &SendContext<'_>,
    id: &str,
) -> Result<(), SignatureError> {
    match &ctx.parent {
        Some((parent_id, root_id)) => {
            h.parent_id = Some(parent_id.to_string());
            h.root_id = Some(root_id.to_string());
        }
        None => h.root_id = Some(id.to_owned()),
    }
    if let Some(root) = o.opt_str("root_id")? {
        h.root_id = Some(root);
    }
    if let Some(parent) = o.opt_str("parent_id")? {
        h.parent_id = Some(parent);
    }
    Ok(())
}

/// `argsrepr`/`kwargsrepr`, `origin`, and `ignore_result` (the option, else the sender's).
fn display_and_result(
    o: &Options<'_>,
    h: &mut TaskHeaders,
    ctx: &SendContext<'_>,
) -> Result<(), SignatureError> {
    let sig = o.sig;
    h.argsrepr = Some(json::args_repr(&sig.args));
    h.kwargsrepr = Some(json::kwargs_repr(&sig.kwargs));
    h.origin = Some(ctx.origin.to_string());
    h.ignore_result = match o.option("ignore_result") {
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(o.err(format!(
                "option `ignore_result` must be a boolean, got {other}"
            )))
        }
        None => ctx.ignore_result,
    };
    Ok(())
}

/// Canvas stamps (`stamped_headers` and the options they name) and custom `headers`.
fn stamps_and_extra_headers(o: &Options<'_>, h: &mut TaskHeaders) -> Result<(), SignatureError> {
    if let Some(Value::Array(names)) = o.option("stamped_headers") {
        let names: Vec<String> = names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        for n in &names {
            if let Some(v) = o.option(n) {
                h.stamps.insert(n.clone(), v.clone());
            }
        }
        h.stamped_headers = Some(names);
    }
    match o.option("headers") {
        Some(Value::Object(extra)) => {
            for (k, v) in extra {
                h.extra.insert(k.clone(), v.clone());
            }
        }
        Some(other) => {
            return Err(o.err(format!("option `headers` must be an object, got {other}")))
        }
        None => {}
    }
    Ok(())
}

/// The embed from the `link`, `link_error`, `chain` and `chord` options.
fn embed(o: &Options<'_>) -> Result<Embed, SignatureError> {
    let sig_list = |key: &str| -> Result<Option<Vec<Signature>>, SignatureError> {
        match o.option(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| serde_json::from_value(v.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
                .map_err(|e| o.err(format!("option `{key}` holds an invalid signature: {e}"))),
            Some(single @ Value::Object(_)) => serde_json::from_value(single.clone())
                .map(|s| Some(vec![s]))
                .map_err(|e| o.err(format!("option `{key}` is not a signature: {e}"))),
            Some(other) => Err(o.err(format!(
                "option `{key}` must be a signature or a list, got {other}"
            ))),
        }
    };
    Ok(Embed {
        callbacks: sig_list("link")?,
        errbacks: sig_list("link_error")?,
        chain: sig_list("chain")?,
        chord: match o.option("chord") {
            None => None,
            Some(v) => Some(Box::new(serde_json::from_value(v.clone()).map_err(
                |e| o.err(format!("option `chord` is not a signature: {e}")),
            )?)),
        },
    })
}

/// Correlation id, reply-to, delivery info and priority from `route`, and the AMQP
/// `expiration` left until `expires`.
fn properties(
    o: &Options<'_>,
    route: &Route,
    ctx: &SendContext<'_>,
    id: String,
    h: &TaskHeaders,
    now: DateTime<Utc>,
) -> Result<Properties, SignatureError> {
    let mut properties = Properties {
        correlation_id: Some(id),
        reply_to: Some(
            o.opt_str("reply_to")?
                .unwrap_or_else(|| ctx.reply_to.to_string()),
        ),
        delivery_info: DeliveryInfo {
            exchange: route.exchange.clone(),
            routing_key: route.routing_key.clone(),
            redelivered: None,
        },
        priority: Some(route.priority.unwrap_or(0)),
        ..Properties::default()
    };
    if let Some(expires) = h.expires {
        let ms = (expires - now).num_milliseconds().max(0);
        properties.expiration = Some(ms.to_string());
    }
    Ok(properties)
}
