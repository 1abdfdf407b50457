"""Benchmark of the replay producer; prints one JSON object.

Measured in the same run, against the same broker, with the same records and producer settings:

- ``raw``: kafka-python's produce ceiling: a tight ``producer.send`` loop over pre-built lists of
  values, keys, partitions and timestamps (what the replay sends), then ``flush``;
- ``raw_default_partitioner``: the same without explicit partitions (kafka-python hashes every key);
- ``replay_rate0``: ``producer.replay.run`` at ``--rate 0`` (reading shards, merging, keys, throttle,
  acknowledgement tracking); ``ratio`` = replay / raw;
- ``replay_rate``: ``--rate R`` for a few seconds: events delivered vs target and the most events
  released in any 100 ms window (sliding by 10 ms) vs its share ``R / 10``.

    python bench/producer.py                       # own Tansu broker, synthetic 100k records
    python bench/producer.py --data-dir data/prepared --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

# this file is bench/producer.py: keep its directory off sys.path so `producer` is the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from lfm_stream.config import env_default, env_help  # noqa: E402


def _raw(bootstrap: str, topic: str, values, keys, parts, ts_ms, pcfg, explicit: bool) -> float:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks=pcfg.publish_acks, retries=0, enable_idempotence=False,
                      linger_ms=pcfg.linger_ms, batch_size=pcfg.batch_size,
                      max_in_flight_requests_per_connection=pcfg.max_in_flight, allow_auto_create_topics=False)
    p.partitions_for(topic)
    send = p.send
    t = time.perf_counter()
    if explicit:
        for v, k, part, ts in zip(values, keys, parts, ts_ms):
            send(topic, v, k, None, part, ts)
    else:
        for v, k, ts in zip(values, keys, ts_ms):
            send(topic, v, k, None, None, ts)
    p.flush()
    dt = time.perf_counter() - t
    p.close()
    return len(values) / dt


def _windows(times: list[tuple[float, int]], width: float = 0.1, step: float = 0.01) -> int:
    """Most events released in any ``width`` window (window starts every ``step`` seconds)."""
    t = np.repeat([a for a, _ in times], [n for _, n in times])
    t = t - t[0]
    starts = np.arange(0.0, max(t[-1] - width, 0.0) + step, step)
    lo = np.searchsorted(t, starts, side="left")
    hi = np.searchsorted(t, starts + width, side="left")
    return int((hi - lo).max())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="prepared data (default: synthetic, see --synthetic)")
    ap.add_argument("--synthetic", type=int, default=100_000, help="records of the synthetic set (default 100000)")
    ap.add_argument("--bootstrap", default=env_default("KAFKA_BOOTSTRAP"),
                    help=env_help("broker (default: start an own Tansu)", "KAFKA_BOOTSTRAP"))
    ap.add_argument("--repeat", type=int, default=5, help="interleaved runs of raw and replay (median reported)")
    ap.add_argument("--rate", type=float, default=1000.0, help="rate for the accuracy run")
    ap.add_argument("--rate-seconds", type=float, default=5.0, help="length of the accuracy run (30 for the spec)")
    ap.add_argument("--acks", default="all", choices=["0", "1", "all"])
    ap.add_argument("--max-in-flight", type=int, default=1)
    ap.add_argument("--switch-interval", type=float, default=0.001,
                    help="sys.setswitchinterval for raw and replay alike (the replay's own setting)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    from lfm_local.stack import TansuBroker
    from producer.manifest import load_manifest
    from producer.publish import PublishConfig, Publisher
    from producer.replay import ReplayConfig, run
    from producer.stream import iter_batches
    from producer.throttle import ThrottleConfig

    tmp = Path(tempfile.mkdtemp(prefix="lfm-bench-producer-"))
    broker = None
    try:
        if args.data_dir is None:
            from producer.prepare import main as prepare_main

            data = tmp / "data"
            with open(os.devnull, "w") as null:
                old, sys.stdout = sys.stdout, null
                try:
                    prepare_main(["--synthetic", str(args.synthetic), "--out", str(data)])
                finally:
                    sys.stdout = old
        else:
            data = args.data_dir
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker = TansuBroker(tmp / "run")
            broker.start()
            bootstrap = broker.bootstrap
        manifest = load_manifest(data)
        base = PublishConfig(bootstrap=bootstrap, topic="x", acks=args.acks, max_in_flight=args.max_in_flight)

        # the exact records / keys / partitions / timestamps the replay sends (also warms TensorFlow up)
        probe = Publisher(PublishConfig(**{**base.__dict__, "topic": f"bench-probe-{uuid.uuid4().hex[:6]}"}),
                          notify=lambda m: None)
        probe.connect()
        values, keys, parts, ts_ms = [], [], [], []
        for b in iter_batches(manifest):
            k, p = probe.keys_for(b.user_ids)
            values += b.values
            keys += k
            parts += p
            ts_ms += (b.timestamps * 1000).tolist()
        probe.close()

        class P:  # the settings the raw loop shares with the replay
            publish_acks = {"0": 0, "1": 1, "all": "all"}[args.acks]
            linger_ms, batch_size, max_in_flight = base.linger_ms, base.batch_size, base.max_in_flight

        raw, raw_default, replay = [], [], []
        sys.setswitchinterval(args.switch_interval)

        def fresh_topic(prefix: str) -> str:
            topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
            creator = Publisher(PublishConfig(**{**base.__dict__, "topic": topic}), notify=lambda m: None)
            creator.connect()
            creator.close()  # idle clients would keep background threads competing for the GIL
            return topic

        def run_replay() -> float:
            cfg = ReplayConfig(data_dir=data, publish=PublishConfig(**{**base.__dict__, "topic": fresh_topic("bench-replay")}),
                               throttle=ThrottleConfig(rate=0), verify=False, state_file=tmp / "state.json",
                               progress_s=3600, switch_interval_s=args.switch_interval)
            return run(cfg, progress_tty=False).rate

        for r in range(args.repeat):  # interleaved, so that load changes hit all variants alike
            raw.append(_raw(bootstrap, fresh_topic("bench-raw"), values, keys, parts, ts_ms, P, True))
            replay.append(run_replay())
            raw_default.append(_raw(bootstrap, fresh_topic("bench-rawdp"), values, keys, parts, ts_ms, P, False))

        # rate accuracy
        times: list[tuple[float, int]] = []
        n_target = int(args.rate * args.rate_seconds)
        cfg = ReplayConfig(data_dir=data, publish=PublishConfig(**{**base.__dict__,
                                                                    "topic": f"bench-rate-{uuid.uuid4().hex[:8]}"}),
                           throttle=ThrottleConfig(rate=args.rate), verify=False, max_events=n_target,
                           state_file=tmp / "state.json", progress_s=3600)
        s = run(cfg, progress_tty=False, on_send=lambda i, n: times.append((time.monotonic(), n)))
        span = times[-1][0] - times[0][0]
        share = args.rate * 0.1
        med = float(np.median(raw))
        result = {
            "records": len(values), "record_bytes": round(float(np.mean([len(v) for v in values])), 1),
            "bootstrap": bootstrap if args.bootstrap else "own tansu", "acks": args.acks,
            "max_in_flight": args.max_in_flight, "linger_ms": base.linger_ms, "batch_size": base.batch_size,
            "crc32c_c_extension": _has_crc32c(),
            "switch_interval_s": args.switch_interval,
            "raw_msgs_per_s": [round(x) for x in raw], "raw_default_partitioner_msgs_per_s": [round(x) for x in raw_default],
            "replay_rate0_events_per_s": [round(x) for x in replay],
            "ratio_replay_to_raw": round(float(np.median(replay)) / med, 3),
            "ratio_per_round": [round(a / b, 3) for a, b in zip(replay, raw)],
            "rate_run": {"target_rate": args.rate, "events": s.events, "target_events": n_target,
                         "release_span_s": round(span, 3),
                         "achieved_rate": round((s.events - 1) / span, 1) if span > 0 else None,
                         "count_error_pct_vs_rate_x_span": round(100 * ((s.events - 1) / (args.rate * span) - 1), 3)
                         if span > 0 else None,
                         "max_events_in_100ms": _windows(times), "share_per_100ms": share},
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(result, indent=1))
        return 0
    finally:
        if broker is not None:
            broker.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _has_crc32c() -> bool:
    """Whether the ``crc32c`` C extension is installed (kafka-python uses it for record-batch CRCs)."""
    return importlib.util.find_spec("crc32c") is not None


if __name__ == "__main__":
    raise SystemExit(main())
