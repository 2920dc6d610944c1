"""Stock Celery 5.7 app and task set for celeriac interop tests.

Configuration comes only from the environment (read once, at import):

CELERIAC_INTEROP_BROKER              broker URL (default redis://127.0.0.1:6379/0)
CELERIAC_INTEROP_BACKEND             result backend URL (default: the broker URL)
CELERIAC_INTEROP_KEYPREFIX           optional global_keyprefix for broker *and*
                                     result backend transport options
CELERIAC_INTEROP_VISIBILITY_TIMEOUT  optional broker visibility_timeout (seconds)
CELERIAC_INTEROP_RECORD              Redis URL tasks.record writes to (default: the
                                     broker URL)
CELERIAC_INTEROP_ACKS_LATE           "1"/"true": task_acks_late for every task
CELERIAC_INTEROP_QUEUE               optional task_default_queue (default Celery's,
                                     "celery"); its exchange and routing key follow
CELERIAC_INTEROP_TASK_QUEUES         optional JSON list of [queue, exchange,
                                     routing_key]: task_queues of
                                     Queue(queue, Exchange(exchange),
                                     routing_key=routing_key) (direct exchanges)
CELERIAC_INTEROP_TASK_ROUTES         optional JSON object: task_routes, as is

Tasks are registered under fixed names (``tasks.add`` ...), independent of
this module's import path, so that Rust tasks of the same names interoperate.
"""

import json
import os
import time

from celery import Celery
from kombu import Exchange, Queue

BROKER_URL = os.environ.get("CELERIAC_INTEROP_BROKER") or "redis://127.0.0.1:6379/0"
BACKEND_URL = os.environ.get("CELERIAC_INTEROP_BACKEND") or BROKER_URL
KEYPREFIX = os.environ.get("CELERIAC_INTEROP_KEYPREFIX") or ""
VISIBILITY_TIMEOUT = os.environ.get("CELERIAC_INTEROP_VISIBILITY_TIMEOUT") or ""
RECORD_URL = os.environ.get("CELERIAC_INTEROP_RECORD") or BROKER_URL
ACKS_LATE = (os.environ.get("CELERIAC_INTEROP_ACKS_LATE") or "").lower() in ("1", "true")
DEFAULT_QUEUE = os.environ.get("CELERIAC_INTEROP_QUEUE") or ""
TASK_QUEUES = json.loads(os.environ.get("CELERIAC_INTEROP_TASK_QUEUES") or "null")
TASK_ROUTES = json.loads(os.environ.get("CELERIAC_INTEROP_TASK_ROUTES") or "null")

# Redis list written by tasks.record (before the broker key prefix).
RECORD_KEY_PREFIX = "celeriac-interop:record:"


def _number(text, what):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number of seconds, got {text!r}") from None
    return int(value) if value.is_integer() else value


broker_transport_options = {}
result_backend_transport_options = {}
if KEYPREFIX:
    broker_transport_options["global_keyprefix"] = KEYPREFIX
    result_backend_transport_options["global_keyprefix"] = KEYPREFIX
if VISIBILITY_TIMEOUT:
    broker_transport_options["visibility_timeout"] = _number(
        VISIBILITY_TIMEOUT, "CELERIAC_INTEROP_VISIBILITY_TIMEOUT"
    )

app = Celery("celeriac_interop")
app.conf.update(
    broker_url=BROKER_URL,
    result_backend=BACKEND_URL,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    broker_transport_options=broker_transport_options,
    result_backend_transport_options=result_backend_transport_options,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=ACKS_LATE,
)
if DEFAULT_QUEUE:
    # On RabbitMQ a test must not declare the shared `celery` queue: every send without
    # a queue goes (and declares) here instead.
    app.conf.task_default_queue = DEFAULT_QUEUE
if TASK_QUEUES:
    # The routing tutorial's shape: a queue, its own direct exchange, a binding key.
    app.conf.task_queues = tuple(
        Queue(name, Exchange(exchange), routing_key=routing_key)
        for name, exchange, routing_key in TASK_QUEUES
    )
if TASK_ROUTES:
    app.conf.task_routes = TASK_ROUTES


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.xsum")
def xsum(numbers):
    return sum(numbers)


@app.task(name="tasks.echo")
def echo(value):
    return value


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="tasks.noop")
def noop():
    return None


@app.task(name="tasks.retry_once", bind=True)
def retry_once(self, key=None):
    """Retry once (countdown 0.5 s) on first delivery, then return "ok"."""
    if (self.request.retries or 0) < 1:
        raise self.retry(countdown=0.5)
    return "ok"


@app.task(name="tasks.whoami", bind=True)
def whoami(self):
    return {"lang": "python", "hostname": self.request.hostname}


def _routed(request, result):
    """Where a routed task ran: its worker, and the routing key of its delivery."""
    return {
        "result": result,
        "hostname": request.hostname,
        "queue": (request.delivery_info or {}).get("routing_key"),
    }


@app.task(name="tasks.taskA", bind=True)
def task_a(self, x, y):
    """The routing tutorial's task A."""
    return _routed(self.request, x + y)


@app.task(name="tasks.taskB", bind=True)
def task_b(self, x, y, z):
    """The routing tutorial's task B."""
    return _routed(self.request, x + y + z)


_redis = None


def record_key(key):
    """Full Redis key of the tasks.record list for ``key`` (prefix included)."""
    return f"{KEYPREFIX}{RECORD_KEY_PREFIX}{key}"


def redis_client():
    """A redis-py client on the record URL (shared, lazily created)."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(RECORD_URL)
    return _redis


@app.task(name="tasks.record")
def record(key, n, seconds=None):
    """Work for ``seconds`` (a sleep; none by default), then RPUSH ``n``."""
    if seconds and seconds > 0:
        time.sleep(seconds)
    redis_client().rpush(record_key(key), n)
    return n


# Headers of a celeriac beat message: Python beat's own, then celeriac's two.
BEAT_HEADERS = ("celery_beat_task", "beat_entry", "beat_due")


@app.task(name="tasks.beat_probe", bind=True)
def beat_probe(self, x, y, key=None):
    """RPUSH (to the tasks.record list of ``key``) a JSON object of what this worker saw
    of a beat message, and return ``x + y``.

    Celery 5.7 merges a message's custom headers into the request (``Context.update``
    with the whole header dict, app/task.py), so ``self.request.celery_beat_task`` and
    ``self.request.beat_entry`` are plain attributes; they are also collected in
    ``self.request.headers`` (``Context._get_custom_headers``: every header that is not
    one of Celery's own). Checked with a live 5.7 worker; the fallback to
    ``request.headers`` is only for safety.
    """
    request = self.request
    custom = getattr(request, "headers", None) or {}

    def seen(name):
        value = getattr(request, name, None)
        return custom.get(name) if value is None else value

    expires = request.expires
    record_ = {
        "x": x,
        "y": y,
        "celery_beat_task": seen("celery_beat_task"),
        "beat_entry": seen("beat_entry"),
        "beat_due": seen("beat_due"),
        "expires": None if expires is None else str(expires),
        "hostname": request.hostname,
        "in_headers": sorted(k for k in BEAT_HEADERS if k in custom),
    }
    redis_client().rpush(record_key(key), json.dumps(record_))
    return x + y
