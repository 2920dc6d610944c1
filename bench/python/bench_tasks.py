"""The benchmark's Celery app and tasks: the same names and behaviour as celeriac-bench's.

Configured from the environment only:

    BENCH_BROKER   broker URL: Redis (default redis://127.0.0.1:6379/0) or RabbitMQ (amqp://)
    BENCH_BACKEND  Redis URL of the result backend (default: BENCH_BROKER)
    BENCH_PREFIX   global_keyprefix for the result backend and a Redis broker (required,
                   so nothing lands outside it on a shared Redis)
    BENCH_QUEUE    task_default_queue (default: Celery's `celery`)

Run a worker with `PYTHONPATH=bench/python celery -A bench_tasks worker ...`.
"""

import os
import time

from celery import Celery

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("BENCH_BACKEND") or BROKER
QUEUE = os.environ.get("BENCH_QUEUE")
PREFIX = os.environ.get("BENCH_PREFIX", "")
if not PREFIX:
    raise RuntimeError("bench_tasks: set BENCH_PREFIX (the key prefix of this run)")

app = Celery("bench_tasks")
app.conf.update(
    broker_url=BROKER,
    result_backend=BACKEND,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if BROKER.startswith(("redis://", "rediss://")):
    app.conf.broker_transport_options = {"global_keyprefix": PREFIX}
if QUEUE:
    app.conf.task_default_queue = QUEUE


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.noop_ignored", ignore_result=True)
def noop_ignored():
    return None


@app.task(name="bench.latency")
def latency(sent_at):
    """Seconds from `sent_at` (the sender's time.time()) to the start of this body."""
    return time.time() - sent_at


@app.task(name="bench.sleep")
def sleep(seconds):
    time.sleep(seconds)  # the gevent pool monkey-patches time.sleep
    return None
