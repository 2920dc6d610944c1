#!/usr/bin/env python3
"""Python Celery's side of celeriac-bench: runs ONE workload on stock Celery against a real
Redis and prints ONE JSON object on stdout (everything else goes to stderr). Exit 0, or 1
with {"error": "..."}.

    celery_bench.py throughput --n N [--ignore-result] --pool P -c C [--amqp URL]
    celery_bench.py enqueue    --n N
    celery_bench.py latency    --rate R --n N --pool P -c C
    celery_bench.py startup    --pool P -c C
    celery_bench.py sleepers   --n N --seconds S --pool P -c C [--timeout T]
    celery_bench.py idle       --seconds S --pool P -c C

Common: --redis URL, --venv PATH (its bin/celery runs the worker; default: this
interpreter's venv), --timeout SECONDS (bounds the measuring, default 120).

With --amqp URL (throughput only), RabbitMQ is the broker and the results stay in Redis
under the run's prefix; the queue (task_default_queue, -Q) is the run's own and is deleted
at the end with the direct exchange of the same name.

Every run uses a key prefix and a queue of its own; the worker (started here as a
subprocess of `celery worker`) is always stopped and every key of the run deleted, also on
errors and on SIGTERM/SIGINT. See README.md next to this file.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
OUT = sys.stdout
sys.stdout = sys.stderr  # only the final JSON line goes to the real stdout

WORKLOADS = ("throughput", "enqueue", "latency", "startup", "sleepers", "idle")
POLL = 0.005  # seconds between the polls that time things
READY_TIMEOUT = 60.0


class Failure(Exception):
    """Ends the workload with {"error": ...}."""


class Terminated(Failure):
    pass


def fail_early(message):
    """{"error": ...} on stdout and exit 1, before anything was started."""
    OUT.write(json.dumps({"impl": "celery", "error": message}) + "\n")
    OUT.flush()
    sys.exit(1)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        fail_early(f"bad arguments: {message}")


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (broker and results)")
    p.add_argument("--amqp", default=None, help="RabbitMQ URL as the broker (throughput only; results in Redis)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "gevent", "solo"])
    p.add_argument("-c", "--concurrency", type=int, default=2)
    p.add_argument("--venv", default=sys.prefix, help="virtualenv whose bin/celery runs the worker")
    p.add_argument("--n", type=int, default=None, help="number of tasks")
    p.add_argument("--ignore-result", action="store_true", help="throughput: bench.noop_ignored, queue drain")
    p.add_argument("--events", action="store_true", help="the worker sends task events (-E)")
    p.add_argument("--rate", type=float, default=1000.0, help="latency: tasks per second")
    p.add_argument("--seconds", type=float, default=None, help="sleepers: sleep per task (1); idle: window (20)")
    p.add_argument("--timeout", type=float, default=120.0, help="bound of the measuring phase, seconds")
    a = p.parse_args(argv)
    defaults = {"throughput": 2000, "enqueue": 2000, "latency": 1000, "startup": 1, "sleepers": 2000, "idle": 0}
    a.venv = os.path.abspath(a.venv)
    if a.n is None:
        a.n = defaults[a.workload]
    if a.seconds is None:
        a.seconds = 20.0 if a.workload == "idle" else 1.0
    if a.n < 1 and a.workload not in ("idle",):
        p.error("--n must be at least 1")
    if a.amqp and a.workload != "throughput":
        p.error("--amqp is for throughput only")
    if a.concurrency < 1 or a.rate <= 0 or a.seconds < 0 or a.timeout <= 0:
        p.error("bad -c, --rate, --seconds or --timeout")
    return a


ARGS = parse_args()
RUN = uuid.uuid4().hex[:16]
PREFIX = f"celery-bench-{RUN}:"  # global_keyprefix of broker and results
QUEUE = f"bench-{RUN}"  # the only queue the worker consumes
BROKER = ARGS.amqp or ARGS.redis
os.environ["BENCH_BROKER"] = BROKER
os.environ["BENCH_BACKEND"] = ARGS.redis
os.environ["BENCH_PREFIX"] = PREFIX
if ARGS.amqp:
    os.environ["BENCH_QUEUE"] = QUEUE
sys.path.insert(0, HERE)

try:
    import celery
    import redis

    from bench_tasks import app
except Exception as exc:  # noqa: BLE001 - reported as JSON
    fail_early(f"cannot import celery, redis or bench_tasks with {sys.executable}: {type(exc).__name__}: {exc}")

R = redis.Redis.from_url(ARGS.redis)
AMQP = None  # kombu Connection to RabbitMQ (--amqp): queue depth and clean-up
if ARGS.amqp:
    try:
        from kombu import Connection

        AMQP = Connection(ARGS.amqp, connect_timeout=4)
        AMQP.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - reported as JSON
        fail_early(f"RabbitMQ not reachable at {ARGS.amqp}: {type(exc).__name__}: {exc}")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("celery_bench:", *a, file=sys.stderr, flush=True)


# -- the worker -------------------------------------------------------------------------


class Worker:
    """`celery worker` in a session of its own; stop() is SIGTERM, then SIGKILL after 10 s."""

    def __init__(self):
        celery_bin = os.path.join(ARGS.venv, "bin", "celery")
        if not os.access(celery_bin, os.X_OK):
            raise Failure(f"{celery_bin} not found (run bench/setup.sh, or pass --venv)")
        env = dict(os.environ, PYTHONPATH=HERE, PYTHONDONTWRITEBYTECODE="1",
                   BENCH_BROKER=BROKER, BENCH_BACKEND=ARGS.redis, BENCH_PREFIX=PREFIX)
        self.cmd = [
            celery_bin, "-A", "bench_tasks", "worker",
            "--pool", ARGS.pool, "-c", str(ARGS.concurrency), "-Q", QUEUE,
            "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "warning",
            "-n", f"bench-{RUN}@%h",
        ]
        if ARGS.events:
            self.cmd.append("-E")
        self.log = tempfile.TemporaryFile()
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, env=env, cwd=HERE, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pid = self.proc.pid

    def tail(self, limit=1500):
        try:
            self.log.flush()
            size = self.log.seek(0, os.SEEK_END)
            self.log.seek(max(0, size - limit))
            return self.log.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def check(self):
        rc = self.proc.poll()
        if rc is not None:
            last = " | ".join(self.tail(2000).splitlines()[-4:])
            raise Failure(f"the worker exited with status {rc}: {last}")

    def stop(self, show_log=False):
        t = time.monotonic()
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)  # warm shutdown of the main process
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log("worker did not stop within 10 s of SIGTERM; SIGKILL")
            except ProcessLookupError:
                pass
        try:  # the main process and anything it left behind (prefork children)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        log(f"worker stopped in {time.monotonic() - t:.2f} s (exit status {self.proc.returncode})")
        text = self.tail(4000) if show_log else ""
        if text:
            log(f"worker output (tail):\n{text}")


# -- /proc ------------------------------------------------------------------------------


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on


def tree(root):
    """`root` and all its descendants (ppid from /proc/*/stat)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                children.setdefault(int(_stat(d)[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, i = [root], 0
    while i < len(out):
        out.extend(children.get(out[i], ()))
        i += 1
    return out


def rss_mb(root):
    """VmRSS summed over the tree, MiB."""
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 1024.0


def cpu_seconds(root):
    """utime + stime summed over the tree, seconds."""
    total = 0
    for p in tree(root):
        try:
            st = _stat(p)
            total += int(st[11]) + int(st[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def run_ns(root):
    """Time on CPU of every thread in the tree from /proc/<pid>/task/<tid>/schedstat,
    nanoseconds: the same quantity as utime+stime without the clock-tick rounding."""
    total = 0
    for p in tree(root):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass
    return total


# -- Redis and sending -------------------------------------------------------------------


def meta_key(task_id):
    return f"{PREFIX}celery-task-meta-{task_id}"


def parse_date(text):
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:  # Celery writes UTC
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def queue_state():
    """(messages waiting in the queue, messages in kombu's `unacked` hash), one round trip.
    No priorities are used, but kombu's priority buckets are counted too. On RabbitMQ:
    (the ready count of a passive queue.declare, 0): AMQP does not tell the unacked."""
    if AMQP is not None:
        _, depth, _ = AMQP.default_channel.queue_declare(queue=QUEUE, passive=True)
        return depth, 0
    pipe = R.pipeline(transaction=False)
    for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169"):
        pipe.llen(PREFIX + QUEUE + suffix)
    pipe.hlen(PREFIX + "unacked")
    *depths, unacked = pipe.execute()
    return sum(depths), unacked


def fetch(ids):
    """{id: record} of the finished result records among `ids` (pipelined MGET, 1000 a go)."""
    got = {}
    pipe = R.pipeline(transaction=False)
    chunks = [ids[i:i + 1000] for i in range(0, len(ids), 1000)]
    for chunk in chunks:
        pipe.mget([meta_key(t) for t in chunk])
    for chunk, values in zip(chunks, pipe.execute() if chunks else []):
        for t, v in zip(chunk, values):
            if v is not None:
                rec = json.loads(v)
                if rec.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                    got[t] = rec
    return got


class Backend:
    """Whether send_task makes the client SUBSCRIBE to each task's result channel (stock
    Celery with a Redis result backend does). The driver reads result records straight
    from Redis, so apart from the enqueue trials it sends quietly: otherwise Redis would
    push every result to a connection nobody reads while the worker is being measured."""

    @staticmethod
    def quiet():
        app.backend.on_task_call = lambda producer, task_id: None

    @staticmethod
    def stock():
        app.backend.__dict__.pop("on_task_call", None)


def send(name, n, args=lambda i: (), reuse_producer=True):
    """Sends `n` tasks with send_task; returns their ids."""
    ids = []
    if reuse_producer:
        with app.producer_or_acquire() as producer:
            for i in range(n):
                ids.append(app.send_task(name, args=args(i), queue=QUEUE, producer=producer).id)
    else:
        for i in range(n):
            ids.append(app.send_task(name, args=args(i), queue=QUEUE).id)
    return ids


def wait_ready(worker, timeout=READY_TIMEOUT):
    """Until one bench.noop round trip succeeded (result key polled every 5 ms)."""
    (task_id,) = send("bench.noop", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check()
        v = R.get(meta_key(task_id))
        if v is not None and json.loads(v).get("status") == "SUCCESS":
            return
        time.sleep(POLL)
    raise Failure(f"the worker did not run a task within {timeout:.0f} s")


def wait_results(ids, deadline, worker=None, every=POLL):
    """Polls the records of `ids` until all are finished or `deadline` (monotonic);
    returns ({id: record}, monotonic time all were there or None)."""
    got, missing = {}, list(ids)
    while True:
        got.update(fetch(missing))
        missing = [t for t in missing if t not in got]
        now = time.monotonic()
        if not missing:
            return got, now
        if now > deadline:
            return got, None
        if worker is not None:
            worker.check()
        time.sleep(every)


def percentiles(samples):
    s = sorted(samples)

    def at(q):  # nearest rank
        return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": s[-1],
            "mean_ms": sum(s) / len(s)}


# -- workloads ---------------------------------------------------------------------------


def rabbitmq_server():
    """The local RabbitMQ server's pid: the beam.smp whose command line boots `rabbit` (not
    a rabbitmqctl, which runs a beam.smp of its own), or None."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    comm = f.read().strip()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if comm == "beam.smp" and " rabbit boot" in cmdline:
                return int(d)
    return None


def throughput(box):
    n = ARGS.n
    name = "bench.noop_ignored" if ARGS.ignore_result else "bench.noop"
    Backend.quiet()
    t_send = time.monotonic()
    ids = send(name, n)
    send_s = time.monotonic() - t_send
    depth, _ = queue_state()
    # py-amqp publishes without confirms (Celery's default): RabbitMQ may still be routing
    # the last messages when send() returns, so wait (up to 10 s) for all n to be queued.
    settle = time.monotonic() + (10.0 if AMQP is not None else 0.0)
    while depth != n and time.monotonic() < settle:
        time.sleep(POLL)
        depth, _ = queue_state()
    if depth != n:
        raise Failure(f"queued {depth} messages, expected {n}")
    beam = rabbitmq_server() if AMQP is not None else None
    beam_cpu0 = cpu_seconds(beam) if beam else None
    worker = Worker()
    box.append(worker)
    t_spawn = worker.spawned_at
    deadline = t_spawn + ARGS.timeout
    out = {"n": n, "ignore_result": ARGS.ignore_result, "timeout_s": ARGS.timeout}

    # Both variants: queue length + unacked polled every 5 ms until drained.
    t0 = t1 = None
    while time.monotonic() < deadline:
        depth, unacked = queue_state()
        now = time.monotonic()
        if t0 is None and depth < n:
            t0 = now
        if depth == 0 and unacked == 0:
            t1 = now
            break
        worker.check()
        time.sleep(POLL)
    drain = ("LLEN of the queue + HLEN of unacked" if AMQP is None else
             "ready count of a passive queue.declare (up to the prefetch may still be unacked at t1)")
    if AMQP is not None:
        out["sent_s"] = send_s
        out["worker_cpu_us_per_task"] = cpu_seconds(worker.pid) * 1e6 / n
        if beam:
            out["broker_cpu_us_per_task"] = (cpu_seconds(beam) - beam_cpu0) * 1e6 / n

    if ARGS.ignore_result:
        if t1 is None:
            depth, unacked = queue_state()
            out.update(completed=n - depth - unacked, timed_out=True, tasks_per_s=None,
                       wall_s=None, method="queue drain (timed out)")
            return out
        out.update(
            completed=n, tasks_per_s=n / max(t1 - t0, 1e-9), wall_s=t1 - t_spawn,
            drain_s=t1 - t0,
            method=f"n / (t1 - t0): {drain} polled every 5 ms; t0 = queue "
                   f"first below n, t1 = {'queue and unacked' if AMQP is None else 'queue'} empty; "
                   "wall_s = worker spawn -> t1",
        )
        return out

    got, t_all = wait_results(ids, deadline, worker)
    dates = sorted(parse_date(r["date_done"]) for r in got.values() if r.get("date_done"))
    spread = dates[-1] - dates[0] if len(dates) > 1 else 0.0
    out.update(
        completed=len(got),
        tasks_per_s=(len(dates) - 1) / spread if spread > 0 else None,
        wall_s=(t_all - t_spawn) if t_all is not None else None,
        date_done_spread_s=spread,
        failed=sum(1 for r in got.values() if r.get("status") != "SUCCESS"),
        method="(n-1) / (max - min of date_done) over all n result records (pipelined MGET); "
               "wall_s = worker spawn -> all n records present (polled every 5 ms)",
    )
    if t_all is None:
        out["timed_out"] = True
    return out


def enqueue(box):
    """One client, no worker: N send_task calls of bench.noop as fast as Celery goes. Four
    ways are tried on a small batch first; the fastest sends the timed N."""
    n = ARGS.n
    trial_n = min(n, 1000)
    ways = {
        ("reused producer", "quiet"): dict(reuse_producer=True, backend=Backend.quiet),
        ("reused producer", "stock"): dict(reuse_producer=True, backend=Backend.stock),
        ("producer per call", "quiet"): dict(reuse_producer=False, backend=Backend.quiet),
        ("producer per call", "stock"): dict(reuse_producer=False, backend=Backend.stock),
    }
    sent = 0
    trials = {}
    for key, way in ways.items():
        way["backend"]()
        send("bench.noop", 20, reuse_producer=way["reuse_producer"])  # warm connections, pubsub
        t = time.perf_counter()
        send("bench.noop", trial_n, reuse_producer=way["reuse_producer"])
        trials[key] = trial_n / (time.perf_counter() - t)
        sent += 20 + trial_n
    best = max(trials, key=trials.get)
    ways[best]["backend"]()
    t = time.perf_counter()
    send("bench.noop", n, reuse_producer=ways[best]["reuse_producer"])
    secs = time.perf_counter() - t
    sent += n
    depth, _ = queue_state()
    if depth != sent:
        raise Failure(f"the queue holds {depth} messages, {sent} were sent")
    producer, backend = best
    return {
        "n": n, "tasks_per_s": n / secs, "seconds": secs,
        "method": f"send_task per task, {producer}, "
                  + ("no SUBSCRIBE to the result channel" if backend == "quiet"
                     else "stock result backend (SUBSCRIBEs to each result channel)")
                  + f"; fastest of 4 ways tried on {trial_n} tasks",
        "trials_tasks_per_s": {f"{p}, {b} backend": round(v, 1) for (p, b), v in trials.items()},
    }


def latency(box):
    n, rate = ARGS.n, ARGS.rate
    Backend.quiet()
    worker = Worker()
    box.append(worker)
    wait_ready(worker)
    ids = []
    deadline = time.monotonic() + ARGS.timeout
    with app.producer_or_acquire() as producer:
        t0 = time.perf_counter()
        for i in range(n):
            pause = t0 + i / rate - time.perf_counter()  # absolute schedule, no drift
            if pause > 0:
                time.sleep(pause)
            ids.append(app.send_task("bench.latency", args=(time.time(),), queue=QUEUE, producer=producer).id)
        send_s = time.perf_counter() - t0
    achieved = n / send_s if n > 1 else rate
    got, t_all = wait_results(ids, deadline, worker, every=0.02)
    samples = [got[t]["result"] * 1000.0 for t in ids
               if t in got and isinstance(got[t].get("result"), (int, float))]
    if not samples:
        raise Failure("no latency results came back")
    out = {"n": n, "rate": rate, "achieved_rate": achieved, "completed": len(samples), "timeout_s": ARGS.timeout}
    out.update(percentiles(samples))
    out["samples_ms"] = [round(s, 3) for s in samples]
    out["method"] = (f"sent one by one at {rate:g}/s on an absolute schedule (achieved {achieved:.0f}/s) "
                     "after a noop round trip; sample = the task body's time.time() - the sender's time.time()")
    if t_all is None:
        out["timed_out"] = True
    return out


def startup(box):
    Backend.quiet()
    (task_id,) = send("bench.noop", 1)
    worker = Worker()
    box.append(worker)
    t0 = worker.spawned_at
    key = meta_key(task_id)
    while time.monotonic() - t0 < ARGS.timeout:
        v = R.get(key)
        if v is not None and json.loads(v).get("status") == "SUCCESS":
            return {"n": 1, "seconds": time.monotonic() - t0, "timeout_s": ARGS.timeout,
                    "method": "worker spawn -> SUCCESS record of a task queued before "
                              "(result key polled every 5 ms)"}
        worker.check()
        time.sleep(POLL)
    raise Failure(f"the queued task did not finish within {ARGS.timeout:.0f} s")


class RssSampler(threading.Thread):
    def __init__(self, pid, every=0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0.0
        self.samples = 0
        self.halt = threading.Event()

    def run(self):
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            self.samples += 1
            if self.halt.wait(self.every):
                return

    def stop(self):
        self.halt.set()
        self.join()
        return self.peak


def sleepers(box):
    n, secs = ARGS.n, ARGS.seconds
    Backend.quiet()
    worker = Worker()
    box.append(worker)
    wait_ready(worker)
    ready_rss = rss_mb(worker.pid)
    sampler = RssSampler(worker.pid)
    sampler.start()
    try:
        t_wall = time.time()
        t0 = time.monotonic()
        ids = send("bench.sleep", n, args=lambda i: (secs,))
        sent_s = time.monotonic() - t0
        got, t_all = wait_results(ids, t0 + ARGS.timeout, worker, every=0.1)
    finally:
        peak = sampler.stop()
    dates = [parse_date(r["date_done"]) for r in got.values() if r.get("date_done")]
    ok = sum(1 for r in got.values() if r.get("status") == "SUCCESS")
    out = {
        "n": n, "seconds_per_task": secs, "timeout_s": ARGS.timeout, "completed": ok,
        "wall_s": (max(dates) - t_wall) if (dates and t_all is not None) else None,
        "sent_s": sent_s, "peak_rss_mb": peak, "ready_rss_mb": ready_rss,
        "method": "first send -> last date_done of n SUCCESS records (records polled every 100 ms); "
                  "peak = max VmRSS summed over the worker's process tree, sampled every 100 ms",
    }
    if t_all is None:
        out["timed_out"] = True
        out["wall_s_lower_bound"] = time.monotonic() - t0
    return out


def idle(box):
    secs = ARGS.seconds
    Backend.quiet()
    worker = Worker()
    box.append(worker)
    wait_ready(worker)
    time.sleep(2.0)
    worker.check()
    procs = len(tree(worker.pid))
    c0, r0, t0 = cpu_seconds(worker.pid), run_ns(worker.pid), time.monotonic()
    time.sleep(secs)
    c1, r1, t1 = cpu_seconds(worker.pid), run_ns(worker.pid), time.monotonic()
    worker.check()
    return {"n": 0, "window_s": secs, "cpu_percent": (c1 - c0) / (t1 - t0) * 100.0,
            "cpu_percent_schedstat": (r1 - r0) / 1e9 / (t1 - t0) * 100.0,
            "rss_mb": rss_mb(worker.pid), "processes": procs,
            "method": f"utime+stime of the worker's process tree over {secs:g} s (after a noop round "
                      "trip and 2 s to settle), % of one core (clock ticks of /proc/<pid>/stat; cpu_percent_schedstat: "
                      "the same from the threads' schedstat, ns); VmRSS summed over the tree at the end"}


# -- main --------------------------------------------------------------------------------


def cleanup():
    """Deletes every key of this run: SCAN + UNLINK on the prefix, then on the run id
    anywhere in a name (nothing should have escaped the prefix)."""
    deleted = 0
    for pattern in (PREFIX + "*", f"*{RUN}*"):
        batch = []
        for key in R.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if pattern != PREFIX + "*":
                log(f"key outside the prefix: {key!r}")
            if len(batch) >= 500:
                deleted += R.unlink(*batch)
                batch = []
        if batch:
            deleted += R.unlink(*batch)
    left = sum(1 for _ in R.scan_iter(match=f"*{RUN}*", count=1000))
    return deleted, left


def amqp_cleanup():
    """Deletes the run's queue and the direct exchange of its name on RabbitMQ (--amqp)."""
    if AMQP is None:
        return
    with AMQP.channel() as ch:
        ch.queue_delete(QUEUE)
        ch.exchange_delete(QUEUE)


def version():
    if os.path.realpath(ARGS.venv) == os.path.realpath(sys.prefix):
        return celery.__version__
    try:
        return subprocess.run([os.path.join(ARGS.venv, "bin", "python"), "-c",
                               "import celery; print(celery.__version__)"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def on_signal(signum, _frame):
    raise Terminated(f"interrupted by signal {signum}")


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    base = {"impl": "celery", "celery_version": version(), "workload": ARGS.workload,
            "pool": None if ARGS.workload == "enqueue" else ARGS.pool,
            "concurrency": None if ARGS.workload == "enqueue" else ARGS.concurrency}
    box = []
    result = {}
    try:
        try:
            R.ping()
            result = globals()[ARGS.workload](box)
        except Failure as exc:
            result = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported as JSON
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for w in box:
                w.stop(show_log="error" in result or not result)
            try:
                deleted, left = cleanup()
                result["redis_keys_deleted"] = deleted
                if left:
                    result.setdefault("error", f"{left} keys of run {RUN} are still in Redis")
            except Exception as exc:  # noqa: BLE001
                result.setdefault("error", f"cleanup failed: {type(exc).__name__}: {exc}")
            try:
                amqp_cleanup()
            except Exception as exc:  # noqa: BLE001
                result.setdefault("error", f"RabbitMQ cleanup failed: {type(exc).__name__}: {exc}")
    except Terminated as exc:  # a signal during the cleanup: once more, deaf to signals
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for w in box:
            w.stop()
        try:
            cleanup()
            amqp_cleanup()
        except Exception:  # noqa: BLE001
            pass
        result = {"error": str(exc)}
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    base["run_s"] = round(time.monotonic() - started, 3)
    if "error" in result:
        out = dict(base, error=result["error"])
    else:
        out = dict(base, **result)
    OUT.write(json.dumps(out) + "\n")
    OUT.flush()
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
