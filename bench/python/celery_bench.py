#!/usr/bin/env python3
"""Python Celery's side of celeriac-bench: runs ONE workload on stock Celery 5.7 against
Redis and prints ONE JSON object on stdout (everything else goes to stderr).

    celery_bench.py throughput --n N [--ignore-result] --pool P -c C
    celery_bench.py enqueue --n N
    celery_bench.py latency --rate R --n N --pool P -c C
    celery_bench.py startup --pool P -c C
    celery_bench.py sleepers --n N --seconds S --pool P -c C
    celery_bench.py idle --seconds S --pool P -c C

Every run works under a key prefix of its own (deleted afterwards) and measures the same
way celeriac-bench measures celeriac (see docs/benchmarks.md).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.stdout
sys.stdout = sys.stderr


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["throughput", "enqueue", "latency", "startup", "sleepers", "idle"])
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--pool", default="prefork")
    p.add_argument("-c", "--concurrency", type=int, default=2)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--ignore-result", action="store_true")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args()


ARGS = parse_args()
PREFIX = f"celery-bench-{uuid.uuid4().hex}:"
os.environ["BENCH_BROKER"] = ARGS.redis
os.environ["BENCH_PREFIX"] = PREFIX
sys.path.insert(0, HERE)

import celery  # noqa: E402
import redis  # noqa: E402

from bench_tasks import app  # noqa: E402

R = redis.Redis.from_url(ARGS.redis)


def emit(obj):
    base = {
        "impl": "celery",
        "celery_version": celery.__version__,
        "workload": ARGS.workload,
        "pool": ARGS.pool,
        "concurrency": ARGS.concurrency,
    }
    base.update(obj)
    OUT.write(json.dumps(base) + "\n")
    OUT.flush()


class Worker:
    """`celery worker` in a process of its own, stopped warm then killed."""

    def __init__(self, pool, concurrency):
        env = dict(os.environ, PYTHONPATH=HERE)
        celery_bin = os.path.join(os.path.dirname(sys.executable), "celery")
        self.proc = subprocess.Popen(
            [celery_bin, "-A", "bench_tasks", "worker", "--pool", pool, "-c", str(concurrency),
             "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "warning",
             "-n", f"bench-{uuid.uuid4().hex[:8]}@%h"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def tree(pid):
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                parents[int(d)] = int(rest[1])
            except (OSError, IndexError, ValueError):
                pass
    out, i = [pid], 0
    while i < len(out):
        out.extend(p for p, pp in parents.items() if pp == out[i])
        i += 1
    return out


def rss_mb(pid):
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += (int(rest[11]) + int(rest[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def meta_key(task_id):
    return f"{PREFIX}celery-task-meta-{task_id}"


def wait_ready(timeout=60):
    app.send_task("bench.noop").get(timeout=timeout)


def send(name, n, args=()):
    ids = []
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            ids.append(app.send_task(name, args=args, producer=producer).id)
    return ids


def records(ids, deadline):
    """Every result record of `ids` (read with pipelined MGET), waiting for the missing."""
    got, missing = {}, list(ids)
    while missing:
        values = []
        for i in range(0, len(missing), 1000):
            values.extend(R.mget([meta_key(t) for t in missing[i:i + 1000]]))
        still = []
        for t, v in zip(missing, values):
            rec = json.loads(v) if v else None
            if rec and rec.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                got[t] = rec
            else:
                still.append(t)
        missing = still
        if missing:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    return got, missing


def parse_date(text):
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


def drained(n, deadline):
    """Seconds from the queue first shrinking to it and `unacked` being empty."""
    t0 = None
    while time.monotonic() < deadline:
        depth = R.llen(f"{PREFIX}celery")
        now = time.monotonic()
        if t0 is None and depth < n:
            t0 = now
        if depth == 0 and R.hlen(f"{PREFIX}unacked") == 0:
            return now - (t0 or now)
        time.sleep(0.002)
    return None


def cleanup():
    keys = R.keys(PREFIX + "*")
    for i in range(0, len(keys), 1000):
        R.delete(*keys[i:i + 1000])


def percentiles(samples):
    s = sorted(samples)
    at = lambda q: s[round((len(s) - 1) * q)]  # noqa: E731
    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": s[-1]}


def throughput(worker_box):
    name = "bench.noop_ignored" if ARGS.ignore_result else "bench.noop"
    ids = send(name, ARGS.n)
    t_spawn = time.monotonic()
    worker_box.append(Worker(ARGS.pool, ARGS.concurrency))
    deadline = t_spawn + ARGS.timeout
    if ARGS.ignore_result:
        secs = drained(ARGS.n, deadline)
        if secs is None:
            return {"error": "the queue did not drain in time"}
        return {"n": ARGS.n, "tasks_per_s": ARGS.n / max(secs, 1e-6),
                "method": "queue drain (LLEN + HLEN unacked polled every 2 ms)"}
    drained(ARGS.n, deadline)
    got, missing = records(ids, deadline)
    wall = time.monotonic() - t_spawn
    dates = [parse_date(r["date_done"]) for r in got.values() if r.get("date_done")]
    spread = max(dates) - min(dates) if len(dates) > 1 else float("nan")
    return {"n": ARGS.n, "completed": len(got), "tasks_per_s": (len(dates) - 1) / spread,
            "wall_s": wall, "method": "(n-1) / spread of date_done"}


def enqueue(_box):
    app.send_task("bench.noop")  # warm the connection
    t0 = time.perf_counter()
    send("bench.noop", ARGS.n)
    secs = time.perf_counter() - t0
    return {"n": ARGS.n, "tasks_per_s": ARGS.n / secs, "seconds": secs,
            "method": "send_task in a loop on one producer"}


def latency(box):
    box.append(Worker(ARGS.pool, ARGS.concurrency))
    wait_ready()
    results = []
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(ARGS.n):
            due = t0 + i / ARGS.rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            results.append(app.send_task("bench.latency", args=(time.time(),), producer=producer))
    achieved = ARGS.n / (time.perf_counter() - t0)
    got, missing = records([r.id for r in results], time.monotonic() + ARGS.timeout)
    samples = [r["result"] * 1000.0 for r in got.values() if isinstance(r.get("result"), (int, float))]
    if not samples:
        return {"error": "no latency results"}
    out = {"n": ARGS.n, "completed": len(samples), "samples_ms": samples,
           "method": f"sent one by one at {ARGS.rate:.0f}/s (achieved {achieved:.0f}/s)"}
    out.update(percentiles(samples))
    return out


def startup(box):
    task_id = app.send_task("bench.noop").id
    t0 = time.monotonic()
    box.append(Worker(ARGS.pool, ARGS.concurrency))
    while time.monotonic() - t0 < ARGS.timeout:
        v = R.get(meta_key(task_id))
        if v and json.loads(v).get("status") == "SUCCESS":
            return {"n": 1, "seconds": time.monotonic() - t0,
                    "method": "process spawn -> result of a task queued before (polled every 1 ms)"}
        time.sleep(0.001)
    return {"error": "the first task did not finish in time"}


def sleepers(box):
    w = Worker(ARGS.pool, ARGS.concurrency)
    box.append(w)
    wait_ready()
    peak = rss_mb(w.pid)
    t_send = time.time()
    t0 = time.monotonic()
    ids = send("bench.sleep", ARGS.n, args=(ARGS.seconds,))
    sent = time.monotonic() - t0
    deadline = t0 + ARGS.timeout
    got, missing = {}, list(ids)
    while missing and time.monotonic() < deadline:
        peak = max(peak, rss_mb(w.pid))
        part, missing = records(missing, time.monotonic())
        got.update(part)
        time.sleep(0.1)
    dates = [parse_date(r["date_done"]) for r in got.values() if r.get("date_done")]
    return {"n": ARGS.n, "completed": len(got), "wall_s": (max(dates) - t_send) if dates else None,
            "sent_s": sent, "peak_rss_mb": peak,
            "method": "first send -> last date_done; peak RSS of the worker's process tree"}


def idle(box):
    w = Worker(ARGS.pool, ARGS.concurrency)
    box.append(w)
    wait_ready()
    time.sleep(2)
    c0 = cpu_seconds(w.pid)
    time.sleep(ARGS.seconds)
    cpu = cpu_seconds(w.pid) - c0
    return {"n": 0, "cpu_percent": cpu / ARGS.seconds * 100.0, "rss_mb": rss_mb(w.pid),
            "method": f"CPU time over {ARGS.seconds:.0f} s after a 2 s settle; RSS at the end"}


def main():
    box = []
    try:
        result = globals()[ARGS.workload](box)
    except Exception as exc:  # noqa: BLE001 - reported as JSON
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for w in box:
            w.stop()
        try:
            cleanup()
        except Exception:  # noqa: BLE001
            pass
    emit(result)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
