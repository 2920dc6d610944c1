#!/usr/bin/env python3
"""Batch Celery client for celeriac interop tests.

Reads one JSON request object per line on stdin and writes exactly one JSON
response line per request on stdout, in order, flushed after each.  Blank
lines are ignored.  Any error while handling a request is answered with
``{"error": "<ExceptionType>: <message>"}`` and the client carries on.
It exits at end of input.

Configuration: the CELERIAC_INTEROP_* environment variables read by
``celeriac_interop.tasks`` (broker, backend, key prefix).  See README.md for
the request and response formats.
"""

import base64
import datetime
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# stdout carries the protocol only: anything else that might print (library
# warnings, stray prints) goes to stderr.
_OUT = sys.stdout
sys.stdout = sys.stderr

from celery import chain, chord, group  # noqa: E402
from celery.result import AsyncResult, GroupResult  # noqa: E402

from celeriac_interop import tasks  # noqa: E402

app = tasks.app


# --------------------------------------------------------------------------
# JSON safety


def exc_text(exc):
    """Render as one line: Type: message (whitespace runs collapsed)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}"


def safe(value):
    """Turn ``value`` into something json.dumps accepts (strict JSON)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return str(value)  # "nan", "inf", "-inf"
    if isinstance(value, dict):
        return {str(k): safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [safe(v) for v in value]
    if isinstance(value, BaseException):
        return exc_text(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return repr(value)


def safe_result(value):
    """Like ``safe`` but an exception becomes {"exc_type", "exc_message"}."""
    if isinstance(value, BaseException):
        return {"exc_type": type(value).__name__, "exc_message": str(value)}
    return safe(value)


# --------------------------------------------------------------------------
# Option parsing


def parse_datetime(text):
    """ISO-8601 text -> aware datetime (naive text is taken as UTC)."""
    if not isinstance(text, str):
        raise TypeError(f"expected an ISO-8601 string, got {text!r}")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt


def send_options(req):
    opts = {}
    for key in ("queue", "countdown", "priority", "task_id", "ignore_result",
                "routing_key", "exchange", "headers", "time_limit",
                "soft_time_limit"):
        if req.get(key) is not None:
            opts[key] = req[key]
    if req.get("eta") is not None:
        opts["eta"] = parse_datetime(req["eta"])
    expires = req.get("expires")
    if expires is not None:
        if isinstance(expires, bool):
            raise TypeError("expires must be seconds or an ISO-8601 string")
        opts["expires"] = expires if isinstance(expires, (int, float)) else parse_datetime(expires)
    extra = req.get("options")
    if extra:
        if not isinstance(extra, dict):
            raise TypeError("options must be an object")
        opts.update(extra)
    return opts


def wait_seconds(req):
    wait = req.get("wait")
    if wait is None:
        return None
    if isinstance(wait, bool) or not isinstance(wait, (int, float)):
        raise TypeError(f"wait must be a number of seconds or null, got {wait!r}")
    return wait


# --------------------------------------------------------------------------
# Operations


def wait_for(res, wait, started):
    """Wait for ``res`` and describe the outcome."""
    out = {
        "id": res.id,
        "state": None,
        "result": None,
        "exc_type": None,
        "exc_message": None,
        "exc_args": None,
        "elapsed": None,
        "traceback": None,
    }
    try:
        value = res.get(timeout=wait, propagate=True)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        out["elapsed"] = time.monotonic() - started
        out["exc_type"] = type(exc).__name__
        out["exc_message"] = str(exc)
        out["exc_args"] = safe(list(getattr(exc, "args", ()) or ()))
        # `get` raises a parent's error as soon as it sees it (it checks the parents),
        # while this result's own record may land a moment later: a worker writes the
        # failed task's record first, then every remaining link's, as Celery's does. Wait
        # for the record itself, so the state read below is not a race.
        left = wait - (time.monotonic() - started)
        if left > 0 and not res.ready():
            try:
                res.get(timeout=left, propagate=False, follow_parents=False)
            except Exception:  # noqa: BLE001 - the state below says what happened
                pass
    else:
        out["elapsed"] = time.monotonic() - started
        out["result"] = safe(value)
    try:
        out["state"] = res.state
        out["traceback"] = res.traceback
    except Exception as exc:  # noqa: BLE001
        out["state"] = out["state"] or f"<unknown: {exc_text(exc)}>"
    return out


def op_send(req):
    name = req.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("send needs a task name")
    args = req.get("args")
    kwargs = req.get("kwargs")
    opts = send_options(req)
    wait = wait_seconds(req)
    started = time.monotonic()
    res = app.send_task(
        name,
        args=list(args) if args is not None else [],
        kwargs=dict(kwargs) if kwargs is not None else {},
        **opts,
    )
    if wait is None:
        return {"id": res.id}
    return wait_for(res, wait, started)


def build(spec):
    """A canvas from its JSON description (see README.md, "canvas")."""
    if not isinstance(spec, dict):
        raise TypeError(f"a canvas spec is an object, got {spec!r}")
    if "chain" in spec:
        return chain(*[build(s) for s in spec["chain"]])
    if "group" in spec:
        return group(*[build(s) for s in spec["group"]])
    if "chord" in spec:
        return chord([build(s) for s in spec["chord"]], build(spec["body"]))
    name = spec.get("task")
    if not isinstance(name, str) or not name:
        raise ValueError("a task spec needs a task name")
    if "map" in spec:
        return app.tasks[name].map(spec["map"])
    if "starmap" in spec:
        return app.tasks[name].starmap(spec["starmap"])
    if "chunks" in spec:
        return app.tasks[name].chunks(spec["chunks"], spec["n"]).group()
    sig = app.signature(
        name,
        args=tuple(spec.get("args") or ()),
        kwargs=dict(spec.get("kwargs") or {}),
        immutable=bool(spec.get("immutable") or False),
        **(spec.get("options") or {}),
    )
    for link in spec.get("link") or ():
        sig.link(build(link))
    for link in spec.get("link_error") or ():
        sig.link_error(build(link))
    return sig


def ids_of(res):
    """The result tree as ids: a GroupResult's children, a chain's parents."""
    out = {"id": res.id, "kind": type(res).__name__}
    if isinstance(res, GroupResult):
        out["children"] = [ids_of(c) for c in res.results]
    if res.parent is not None:
        out["parent"] = ids_of(res.parent)
    return out


def op_canvas(req):
    """Apply a canvas, optionally wait for its result (a group's: the list)."""
    sig = build(req.get("canvas"))
    wait = wait_seconds(req)
    started = time.monotonic()
    res = sig.apply_async()
    if isinstance(res, GroupResult) and req.get("save"):
        res.save()
    if wait is None:
        return ids_of(res)
    out = wait_for(res, wait, started)
    out["tree"] = ids_of(res)
    return out


def op_group(req):
    """Restore a saved group (celery-taskset-meta-<id>) and wait for its results."""
    group_id = req.get("id")
    if not isinstance(group_id, str) or not group_id:
        raise ValueError("group needs an id")
    res = GroupResult.restore(group_id, app=app)
    if res is None:
        return {"id": group_id, "found": False}
    wait = wait_seconds(req)
    out = {"id": group_id, "found": True, "children": [r.id for r in res.results]}
    if wait is not None:
        out["result"] = safe(res.get(timeout=wait))
        out["completed"] = res.completed_count()
    return out


def op_get(req):
    task_id = req.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("get needs an id")
    wait = wait_seconds(req)
    if wait is None:
        wait = 10
    started = time.monotonic()
    return wait_for(AsyncResult(task_id, app=app), wait, started)


def op_state(req):
    task_id = req.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("state needs an id")
    meta = app.backend.get_task_meta(task_id)  # one read: state, result, traceback
    return {
        "id": task_id,
        "state": meta.get("status"),
        "result": safe_result(meta.get("result")),
        "traceback": meta.get("traceback"),
    }


def op_purge(req):
    queue = req.get("queue")
    if queue is None:
        return {"purged": app.control.purge()}
    if not isinstance(queue, str) or not queue:
        raise ValueError("queue must be a queue name or null")
    with app.connection_for_write() as conn:
        n = conn.default_channel.queue_purge(queue)
    return {"purged": n or 0}


def op_records(req):
    key = req.get("key")
    if key is None:
        raise ValueError("records needs a key")
    raw = tasks.redis_client().lrange(tasks.record_key(key), 0, -1)
    return {"values": [int(v) for v in raw]}


def op_revoke(req):
    task_id = req.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("revoke needs an id")
    kwargs = {"terminate": bool(req.get("terminate") or False)}
    if req.get("signal"):
        kwargs["signal"] = req["signal"]
    app.control.revoke(task_id, **kwargs)
    return {"ok": True}


def op_ping(req):
    timeout = req.get("timeout")
    if timeout is None:
        timeout = 1
    kwargs = {"timeout": timeout}
    if req.get("destination") is not None:
        kwargs["destination"] = req["destination"]
    return {"replies": safe(app.control.ping(**kwargs))}


# --------------------------------------------------------------------------
# Raw AMQP (RabbitMQ brokers only): py-amqp below kombu, on a connection of its own


def amqp_channel(conn):
    """The py-amqp channel of a kombu connection to an amqp:// broker."""
    if conn.transport.driver_type != "amqp":
        raise ValueError(f"needs an amqp:// broker, not {conn.transport.driver_type}")
    return conn.default_channel


def op_amqp_publish(req):
    """Publish one message exactly as given (no serializer, no Celery headers)."""
    import amqp
    from kombu import Exchange, Queue

    queue = req.get("queue")
    if not isinstance(queue, str) or not queue:
        raise ValueError("amqp_publish needs a queue")
    if req.get("body_b64") is not None:
        body = base64.b64decode(req["body_b64"])
    else:
        body = str(req.get("body") or "").encode("utf-8")
    props = {}
    for key in ("content_type", "content_encoding", "correlation_id", "reply_to",
                "delivery_mode", "priority", "expiration"):
        if req.get(key) is not None:
            props[key] = req[key]
    if req.get("headers") is not None:
        props["application_headers"] = req["headers"]
    with app.connection_for_write() as conn:
        channel = amqp_channel(conn)
        # Declared as Celery declares a task queue (idempotent with the same flags).
        Queue(queue, Exchange(queue, "direct"), routing_key=queue)(channel).declare()
        # Confirmed (py-amqp selects confirm mode and waits for the ack): once this
        # returns the message is in the queue, ahead of anything published after it.
        channel.basic_publish_confirm(
            amqp.Message(body, **props),
            exchange=req.get("exchange") or "",
            routing_key=req.get("routing_key") or queue,
        )
    return {"ok": True}


def op_amqp_depth(req):
    """Ready messages and consumers of a queue (a passive declare); with ``idle_within``,
    first wait up to that many seconds for the queue to have no consumer (a consumer's
    unacknowledged messages are back in the queue once it has gone)."""
    import amqp

    queue = req.get("queue")
    if not isinstance(queue, str) or not queue:
        raise ValueError("amqp_depth needs a queue")
    deadline = time.monotonic() + float(req.get("idle_within") or 0)
    while True:
        with app.connection_for_write() as conn:
            channel = amqp_channel(conn)
            try:
                _, messages, consumers = channel.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                return {"exists": False, "messages": 0, "consumers": 0}
        if consumers == 0 or time.monotonic() >= deadline:
            return {"exists": True, "messages": messages, "consumers": consumers}
        time.sleep(0.05)


def op_amqp_get(req):
    """Take up to ``count`` messages off a queue (``basic.get``, acknowledged) and
    describe them as py-amqp decoded them: properties, the Python type of every header,
    and the body (text if UTF-8, else base64)."""
    queue = req.get("queue")
    if not isinstance(queue, str) or not queue:
        raise ValueError("amqp_get needs a queue")
    count = int(req.get("count") or 1)
    messages = []
    with app.connection_for_write() as conn:
        channel = amqp_channel(conn)
        for _ in range(count):
            msg = channel.basic_get(queue, no_ack=True)
            if msg is None:
                break
            props = dict(msg.properties)
            headers = props.pop("application_headers", None)
            raw = msg.body  # py-amqp decodes it already when content_encoding is set
            try:
                body = {"body": raw if isinstance(raw, str) else raw.decode("utf-8")}
            except UnicodeDecodeError:
                body = {"body_b64": base64.b64encode(raw).decode("ascii")}
            messages.append({
                "delivery_info": safe({k: v for k, v in msg.delivery_info.items()
                                       if k in ("exchange", "routing_key", "redelivered")}),
                "properties": safe(props),
                "headers": safe(headers),
                "header_types": None if headers is None else {
                    k: type(v).__name__ for k, v in headers.items()},
                **body,
            })
    return {"messages": messages}


def op_amqp_delete(req):
    """Delete queues and the exchanges of the same names (those a task queue has)."""
    queues = req.get("queues")
    if not isinstance(queues, list):
        raise ValueError("amqp_delete needs a list of queues")
    deleted = {}
    with app.connection_for_write() as conn:
        channel = amqp_channel(conn)
        for name in queues:
            deleted[name] = channel.queue_delete(name) or 0
            channel.exchange_delete(name)
    return {"deleted": deleted}


OPS = {
    "send": op_send,
    "get": op_get,
    "state": op_state,
    "purge": op_purge,
    "records": op_records,
    "revoke": op_revoke,
    "ping": op_ping,
    "canvas": op_canvas,
    "group": op_group,
    "amqp_publish": op_amqp_publish,
    "amqp_depth": op_amqp_depth,
    "amqp_delete": op_amqp_delete,
    "amqp_get": op_amqp_get,
}


def handle(line):
    try:
        req = json.loads(line)
        if not isinstance(req, dict):
            raise ValueError("request must be a JSON object")
        op = req.get("op")
        fn = OPS.get(op)
        if fn is None:
            raise ValueError(f"unknown op {op!r}")
        return fn(req)
    except Exception as exc:  # noqa: BLE001 - one bad request must not stop the batch
        return {"error": exc_text(exc)}


def emit(obj):
    try:
        text = json.dumps(obj, allow_nan=False)
    except Exception as exc:  # noqa: BLE001
        text = json.dumps({"error": f"unencodable response: {exc_text(exc)}"})
    _OUT.write(text + "\n")
    _OUT.flush()


def main():
    stdin = sys.stdin.buffer
    for raw in iter(stdin.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        emit(handle(line))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
