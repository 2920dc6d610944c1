"""The benchmark's Celery app and tasks: the same names and behaviour as celeriac-bench's.

Configured from the environment only: BENCH_BROKER (Redis URL, also the result backend)
and BENCH_PREFIX (global_keyprefix for the broker and the result backend).
"""

import os
import time

from celery import Celery

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "")
options = {"global_keyprefix": PREFIX} if PREFIX else {}

app = Celery("bench_tasks")
app.conf.update(
    broker_url=BROKER,
    result_backend=BROKER,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_transport_options=options,
    result_backend_transport_options=options,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.noop_ignored", ignore_result=True)
def noop_ignored():
    return None


@app.task(name="bench.latency")
def latency(sent_at):
    return time.time() - sent_at


@app.task(name="bench.sleep")
def sleep(seconds):
    time.sleep(seconds)  # gevent's pool patches it
    return None
