"""Learner throughput: events/s of one learner process draining a pre-filled topic (JSON on stdout).

    python bench/learner.py                      # ≥ 500k synthetic train events, dim 32, default batch
    python bench/learner.py --events 200000 --variants kafka-python,confluent

Fills a topic once (``producer.prepare --synthetic N`` → ``producer.replay --rate 0``), measures in the same
run the raw consume ceilings (kafka-python poll-and-discard, CRCs checked as the learner does; confluent-kafka), then
runs ``python -m learner`` to the end of the topic for each variant (fresh group + namespace) and reports
events/s over the span from its first to its last batch, the whole machine's busy cores and CPU per event over the
span of its train logs (from /proc/stat: learner, consumer child, Redis and the broker together), plus the main
thread's seconds per stage (parse:
taking decoded records, pull: indexing + rows not held + MGET, prequential_hr, step: the TF call, metrics:
window/AUC bookkeeping, push: waiting for a sync write, wait_consume) so the binding stage is visible.  The
``two-workers`` variant runs two learner processes in one group on a 2-partition copy of the topic (gradient
pushes) and reports their events/s in all.  Starts its own redis-server + Tansu unless --redis-url / --bootstrap
are given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "kafka-python": ["--backend", "kafka-python"],  # the default: the consumer in a child process
    "kafka-python-in-process": ["--backend", "kafka-python", "--no-consumer-process"],
    "kafka-python-no-prefetch": ["--backend", "kafka-python", "--no-prefetch"],
    "kafka-python-gradient-push": ["--backend", "kafka-python", "--push-mode", "gradient"],
    "two-workers": ["--workers", "2"],  # two learner processes, one group, a 2-partition topic, gradient pushes
    "confluent": ["--backend", "confluent"],  # also in a child process by default
    "confluent-in-process": ["--backend", "confluent", "--no-consumer-process"],
    # the previous defaults (micro-batches of 512, TF's graph executor instead of the XLA-compiled loop)
    # (train logs every 100 micro-batches of 512: the defaults' 800 of 64, the same 51,200 events)
    "confluent-graph-512": ["--backend", "confluent", "--no-xla", "--batch-size", "512", "--train-log-steps", "100"],
    "kafka-python-graph-512": ["--backend", "kafka-python", "--no-xla", "--batch-size", "512", "--train-log-steps", "100"],
}


def env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))


class MachineCpu:
    """Samples the machine's busy CPU time (/proc/stat, all cores) every 50 ms on a thread."""

    def __init__(self):
        self.samples: list[tuple[float, int, int]] = []  # (time, total jiffies, idle jiffies)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            self.samples.append((time.time(), sum(v), v[3] + v[4]))
            self._stop.wait(0.05)

    def __enter__(self):
        if os.path.exists("/proc/stat"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def busy_cores(self, t0: float, t1: float) -> float | None:
        """Average busy cores between the samples nearest ``t0`` and ``t1``."""
        if len(self.samples) < 2 or t1 <= t0:
            return None
        a = min(self.samples, key=lambda x: abs(x[0] - t0))
        b = min(self.samples, key=lambda x: abs(x[0] - t1))
        total = b[1] - a[1]
        return ((total - (b[2] - a[2])) / total) * (os.cpu_count() or 1) if total > 0 else None


def consume_ceiling_kafka_python(bootstrap: str, topic: str, n: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, check_crcs=True,
                      max_poll_records=10000, fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    got, t0 = 0, None
    while got < n:
        for recs in c.poll(timeout_ms=500).values():
            if t0 is None:
                t0 = time.perf_counter()
            got += len(recs)
    dt = time.perf_counter() - t0
    c.close()
    return got / dt


def consume_ceiling_confluent(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "fetch.queue.backoff.ms": 10})
    meta = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions])
    got, t0 = 0, None
    while got < n:
        msgs = c.consume(num_messages=10000, timeout=0.5)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        got += sum(1 for m in msgs if m.error() is None)
    dt = time.perf_counter() - t0
    c.close()
    return got / dt


def learner_cmd(redis_url: str, bootstrap: str, topic: str, ns: str, metrics: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "learner", "--redis-url", redis_url, "--bootstrap", bootstrap, "--topic", topic,
            "--namespace", ns, "--group", f"g-{ns}", "--dim", "32", "--metrics", str(metrics), "--idle-timeout", "3",
            *extra]


def two_workers(topic: str, ns: str, work: Path, redis_url: str, bootstrap: str, extra: list[str]) -> dict:
    """Two learner processes in one group on a 2-partition topic: events/s in all, from the first batch of
    either to the last batch of either."""
    paths = [work / f"two-workers-{ns}-{w}.jsonl" for w in range(2)]
    procs = [subprocess.Popen(learner_cmd(redis_url, bootstrap, topic, ns, path, extra), cwd=ROOT, env=env(),
                              stderr=subprocess.DEVNULL) for path in paths]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"two-workers: a learner exited with {proc.returncode}")
    ends = [[json.loads(x) for x in path.read_text().splitlines()][-1] for path in paths]
    span = max(e["stream_end"] for e in ends) - min(e["stream_start"] for e in ends)
    events = sum(e["events"] for e in ends)
    return {"events": events, "events_per_s": round(events / span, 1) if span > 0 else None,
            "stream_seconds": round(span, 3), "per_worker": [{"events": e["events"],
                                                              "events_per_s": e["stream_events_per_s"],
                                                              "stage_seconds": e["stage_seconds"]} for e in ends],
            "args": extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=600_000, help="synthetic ratings to prepare (600k → ≥ 500k train events)")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--variants", default="kafka-python,confluent,kafka-python-in-process,confluent-in-process,"
                                         "kafka-python-gradient-push,two-workers,confluent-graph-512,kafka-python-graph-512")
    p.add_argument("--learner-arg", action="append", default=[], help="extra learner flag (repeatable)")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--work-dir", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lfm-bench-learner-"))
    work.mkdir(parents=True, exist_ok=True)
    stack = None
    if not (args.redis_url and args.bootstrap):
        from lfm_local.stack import LocalStack

        stack = LocalStack(work / "stack", use_env=False).start()
    redis_url = args.redis_url or stack.redis_url
    bootstrap = args.bootstrap or stack.bootstrap
    out: dict = {"events_requested": args.events, "dim": 32, "partitions": args.partitions, "variants": {}}
    try:
        data = work / f"syn{args.events}"
        if not (data / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "producer.prepare", "--synthetic", str(args.events), "--out",
                            str(data), "--force"], cwd=ROOT, env=env(), check=True, capture_output=True)
        man = json.loads((data / "manifest.json").read_text())
        n = int(man["train_records"])
        topics: dict[int, str] = {}

        def filled(partitions: int) -> str:
            if partitions not in topics:
                topics[partitions] = f"bench-{uuid.uuid4().hex[:6]}"
                subprocess.run([sys.executable, "-m", "producer.replay", "--data-dir", str(data), "--bootstrap",
                                bootstrap, "--topic", topics[partitions], "--rate", "0", "--partitions",
                                str(partitions), "--acks", "1", "--state-file",
                                str(work / f"replay{partitions}-{topics[partitions]}.state")],
                               cwd=ROOT, env=env(), check=True, capture_output=True)
            return topics[partitions]

        t = time.time()
        topic = filled(args.partitions)
        out["topic_events"] = n
        out["fill_seconds"] = round(time.time() - t, 1)
        out["raw_consume_kafka_python_per_s"] = round(consume_ceiling_kafka_python(bootstrap, topic, n))
        out["raw_consume_confluent_per_s"] = round(consume_ceiling_confluent(bootstrap, topic, n))
        for name in args.variants.split(","):
            ns = f"b{uuid.uuid4().hex[:8]}"
            if name == "two-workers":
                out["variants"][name] = two_workers(filled(max(2, args.partitions)), ns, work, redis_url, bootstrap,
                                                    VARIANTS[name] + args.learner_arg)
                print(f"{name}: {json.dumps(out['variants'][name])}", file=sys.stderr, flush=True)
                continue
            metrics = work / f"{name}-{ns}.jsonl"
            cmd = learner_cmd(redis_url, bootstrap, topic, ns, metrics, VARIANTS[name] + args.learner_arg)
            with MachineCpu() as cpu:
                subprocess.run(cmd, cwd=ROOT, env=env(), check=True, stderr=subprocess.DEVNULL)
            recs = [json.loads(x) for x in metrics.read_text().splitlines()]
            end = recs[-1]
            train = [r for r in recs if r["event"] == "train"][:-1]  # the last one is written after the stream
            busy = cpu.busy_cores(train[0]["time"], train[-1]["time"]) if len(train) > 1 else None
            span_events = train[-1]["events"] - train[0]["events"] if len(train) > 1 else 0
            stages = end.get("stage_seconds", {})
            out["variants"][name] = {
                "events": end["events"], "events_per_s": end["stream_events_per_s"],
                "stream_seconds": end["stream_seconds"], "stage_seconds": stages,
                "binding_stage": max(stages, key=stages.get) if stages else None,
                "machine_busy_cores": round(busy, 2) if busy is not None else None,
                "machine_core_us_per_event": round(busy * (train[-1]["time"] - train[0]["time"]) / span_events * 1e6, 1)
                if busy is not None and span_events else None,
                "args": VARIANTS[name] + args.learner_arg,
            }
            print(f"{name}: {json.dumps(out['variants'][name])}", file=sys.stderr, flush=True)
    finally:
        if stack is not None:
            stack.stop()
    out["note"] = "measured on a 2-core machine shared with other jobs unless stated otherwise"
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
