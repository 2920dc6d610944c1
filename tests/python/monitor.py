#!/usr/bin/env python3
"""Monitoring tool for celeriac interop tests: remote control, events, Flower.

Subcommands (each prints JSON to stdout; see README.md):

  inspect METHOD [--destination NODE ...] [--arguments JSON] [--timeout S]
                 [--limit N] [--via-inspect]
      Broadcast a remote-control command with a reply ticket and print the
      merged replies {node: reply} as one JSON line.  With --via-inspect,
      call app.control.inspect(...).METHOD(**arguments) instead (Celery's
      Inspect API, used by `celery inspect` and Flower) and print its return
      value (null when nobody replied).

  events --seconds S [--until TYPE:UUID] [--wakeup] [--localized] [--envelope]
      Bind an event receiver (routing key '#'), print {"monitor": "ready"}
      once it is subscribed, then one JSON line per event until S seconds
      have passed or an event of TYPE (with task uuid UUID; an empty UUID
      matches any) arrived.  The last line is {"monitor": "done", ...}.

  state --seconds S [--wakeup]
      Feed every event for S seconds into celery.events.state.State (what
      `celery events` and Flower compute) and print one JSON object
      {"workers": {...}, "tasks": {...}}.

  http URL [--timeout S]
      GET URL and print {"status": code, "body": <JSON or text>}; a connection
      failure prints {"status": null, "error": "..."} (exit status 0).

Configuration: the CELERIAC_INTEROP_* environment variables read by
celeriac_interop.tasks (broker, key prefix ...).  Only the JSON output goes
to stdout; logs and warnings go to stderr.
"""

import argparse
import copy
import datetime
import json
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# stdout carries JSON only.
_OUT = sys.stdout
sys.stdout = sys.stderr


def safe(value):
    """Turn ``value`` into something json.dumps accepts (strict JSON)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [safe(v) for v in value]
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return repr(value)


def emit(obj):
    _OUT.write(json.dumps(safe(obj), ensure_ascii=True) + "\n")
    _OUT.flush()


def load_app():
    from celeriac_interop import tasks

    return tasks.app


# --------------------------------------------------------------------------
# inspect


def cmd_inspect(args):
    app = load_app()
    arguments = json.loads(args.arguments) if args.arguments else {}
    if not isinstance(arguments, dict):
        raise SystemExit("monitor.py: --arguments must be a JSON object")
    destination = args.destination or None
    if args.via_inspect:
        insp = app.control.inspect(destination=destination, timeout=args.timeout,
                                   limit=args.limit)
        method = getattr(insp, args.method, None)
        if method is None:
            # Not a named Inspect method: use its generic request (same wire format).
            result = insp._request(args.method, **arguments)
        else:
            result = method(**arguments)
        emit(result)
        return 0
    replies = app.control.broadcast(
        args.method, arguments=arguments, destination=destination, reply=True,
        timeout=args.timeout, limit=args.limit,
    ) or []
    merged = {}
    for reply in replies:
        merged.update(reply)
    emit(merged)
    return 0


# --------------------------------------------------------------------------
# events


def _receiver_loop(app, on_event, seconds, wakeup, on_ready=None, want_envelope=False):
    """Run an EventReceiver for ``seconds``; ``on_event(event, raw, routing_key)``
    returns True to stop early."""
    from celery.events.receiver import EventReceiver

    stop = {"flag": False}

    class Receiver(EventReceiver):
        def _receive(self, body, message, list=list, isinstance=isinstance):
            rk = (message.delivery_info or {}).get("routing_key")
            bodies = body if isinstance(body, list) else [body]
            for item in bodies:
                raw = copy.deepcopy(item)
                _type, event = self.event_from_message(item)
                if on_event(event, raw, rk, isinstance(body, list)):
                    stop["flag"] = True

    deadline = time.monotonic() + seconds
    with app.connection_for_read() as conn:
        recv = Receiver(conn, handlers={}, app=app)
        with recv.consumer_context(wakeup=wakeup) as (connection, _channel, _consumers):
            # On Redis the fanout PSUBSCRIBE is sent by the first drain_events;
            # draining briefly also reads its confirmation. On AMQP the queue is
            # already declared and bound here.
            first = True
            while True:
                remaining = deadline - time.monotonic()
                if stop["flag"] or (remaining <= 0 and not first):
                    break
                try:
                    connection.drain_events(timeout=0.2 if first else max(0.01, min(remaining, 0.5)))
                except socket.timeout:
                    pass
                if first:
                    first = False
                    if on_ready:
                        on_ready()


def cmd_events(args):
    app = load_app()
    until_type, until_uuid = None, None
    if args.until:
        until_type, _, until_uuid = args.until.partition(":")
    matched = {"event": None}
    count = {"n": 0}

    def on_event(event, raw, rk, batched):
        out = event if args.localized else raw
        if args.envelope:
            out = {"routing_key": rk, "batched": batched, "event": out}
        emit(out)
        count["n"] += 1
        if until_type and event.get("type") == until_type and (
            not until_uuid or event.get("uuid") == until_uuid
        ):
            matched["event"] = event.get("type")
            return True
        return False

    started = time.monotonic()
    _receiver_loop(app, on_event, args.seconds, args.wakeup,
                   on_ready=lambda: emit({"monitor": "ready"}))
    emit({"monitor": "done", "events": count["n"], "matched": matched["event"] is not None,
          "elapsed": round(time.monotonic() - started, 3)})
    return 0


# --------------------------------------------------------------------------
# state


def cmd_state(args):
    from celery.events.state import State

    app = load_app()
    state = State()

    def on_event(event, raw, rk, batched):
        state.event(event)
        return False

    _receiver_loop(app, on_event, args.seconds, args.wakeup,
                   on_ready=lambda: print("monitor.py: ready", file=sys.stderr, flush=True))
    workers = {}
    for hostname, w in state.workers.items():
        workers[hostname] = {
            "alive": w.alive, "processed": w.processed, "active": w.active,
            "freq": w.freq, "sw_ident": w.sw_ident, "sw_ver": w.sw_ver, "sw_sys": w.sw_sys,
            "pid": w.pid, "loadavg": w.loadavg, "status_string": w.status_string,
        }
    tasks = {}
    for uuid, t in state.tasks.items():
        tasks[uuid] = {
            "state": t.state, "name": t.name, "args": t.args, "kwargs": t.kwargs,
            "result": t.result, "exception": t.exception, "runtime": t.runtime,
            "retries": t.retries, "worker": t.worker.hostname if t.worker else None,
            "received": t.received, "started": t.started, "succeeded": t.succeeded,
            "failed": t.failed, "revoked": t.revoked, "retried": t.retried,
        }
    emit({"workers": workers, "tasks": tasks, "event_count": state.event_count,
          "task_count": state.task_count})
    return 0


# --------------------------------------------------------------------------
# http


def cmd_http(args):
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        emit({"status": None, "error": f"{type(reason).__name__}: {reason}"})
        return 0
    text = data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    emit({"status": status, "body": body})
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="monitor.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("inspect", help="remote-control broadcast with replies")
    p.add_argument("method")
    p.add_argument("--destination", "-d", action="append", default=[],
                   help="node name (repeatable); default: all nodes")
    p.add_argument("--arguments", "-a", default=None, help="JSON object of arguments")
    p.add_argument("--timeout", "-t", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=None,
                   help="stop after N replies (default: number of destinations)")
    p.add_argument("--via-inspect", action="store_true",
                   help="use app.control.inspect().METHOD(**arguments)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("events", help="print events as JSON lines")
    p.add_argument("--seconds", "-s", type=float, default=10.0)
    p.add_argument("--until", default=None, help="TYPE:UUID (UUID may be empty)")
    p.add_argument("--wakeup", action="store_true",
                   help="broadcast `heartbeat` once bound (as Flower does)")
    p.add_argument("--localized", action="store_true",
                   help="print events as handlers see them (local_received, localized "
                        "timestamp, receiver clock for task-sent) instead of the wire body")
    p.add_argument("--envelope", action="store_true",
                   help='print {"routing_key", "batched", "event"} per event')
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("state", help="events -> celery.events.state.State summary")
    p.add_argument("--seconds", "-s", type=float, default=5.0)
    p.add_argument("--wakeup", action="store_true")
    p.set_defaults(func=cmd_state)

    p = sub.add_parser("http", help="GET a URL")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_http)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
