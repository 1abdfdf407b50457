"""Replay the prepared train shards as a time-ordered Kafka rating stream at a controlled rate.

    python producer/replay.py --rate 1000          # or: python -m producer.replay, lfm-replay

Each train record goes to the topic unchanged (value = serialized ``tf.train.Example``), keyed by the
hashed user id (ASCII decimal), stamped with the event time (ms) and numbered by header ``lfm-seq`` (its
global index: the same number in a resumed replay and when re-sent), in global timestamp order
(:mod:`producer.stream`), paced by :mod:`producer.throttle`, published at-least-once by
:mod:`producer.publish` (with the idempotent producer where the broker supports it).  The test shards are
never streamed.  TLS / SASL: the ``--kafka-*`` flags or the ``KAFKA_*`` variables (:mod:`lfm_stream.kafka_security`).

Resume position: the global index (0-based) of the next record of the time-ordered stream that has
not been acknowledged by the broker.  It is printed in the summary (also on Ctrl-C / SIGTERM, after
flushing) and saved per topic in a small state file (default ``<data-dir>/replay-state.json``, also
rewritten every progress interval); ``--resume`` continues from the saved position, ``--resume N``
from record N.  Exit codes: 0 done, 1 bad input data, 2 bad arguments, 3 broker unreachable or failing
beyond the retry budget (position saved), 130 / 143 stopped by SIGINT / SIGTERM (position saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lfm_stream import kafka_security
from lfm_stream.config import (DATA_DIR_ENV, DEFAULT_TOPIC, KAFKA_BOOTSTRAP_ENV, TOPIC_ENV, default_bootstrap,
                               default_data_dir, env_default, env_help)
from lfm_stream.quiet import import_tensorflow
from lfm_stream.version import add_version_flag, version
from producer.manifest import DataError, load_manifest, verify_shards
from producer.progress import Progress, iso
from producer.publish import Interrupted, PublishConfig, Publisher, PublishError
from producer.resume import STATE_NAME, load_position, save_position, start_position
from producer.stream import iter_batches, prefetch
from producer.throttle import Throttle, ThrottleConfig

# The public names; STATE_NAME, load_position, save_position (producer.resume), Progress and iso
# (producer.progress) lived here before and are still importable from here.
__all__ = ["ReplayConfig", "Summary", "Stop", "run", "print_summary", "build_parser", "config_from_args", "main",
           "parse_ts", "STATE_NAME", "load_position", "save_position", "Progress", "iso"]


@dataclass(frozen=True)
class ReplayConfig:
    """Everything one replay run needs (tests build it directly)."""

    data_dir: Path
    publish: PublishConfig
    throttle: ThrottleConfig
    max_events: int | None = None
    start_ts: int | None = None
    resume: str | None = None  # None: from the start (or start_ts); "state": saved position; "N": record N
    state_file: Path | None = None
    verify: bool = True
    batch_size: int = 16384
    switch_interval_s: float | None = 0.001  # see run()
    progress_s: float = 5.0
    stop_flush_s: float = 10.0
    json_summary: bool = False
    metrics_port: int = 0  # Prometheus /metrics (producer.prom); 0 = not served
    metrics_host: str = "127.0.0.1"

    @property
    def state_path(self) -> Path:
        """Where the resume position is saved."""
        return self.state_file or self.data_dir / STATE_NAME


@dataclass
class Summary:
    """Outcome of a run (printed at the end)."""

    events: int = 0
    seconds: float = 0.0
    start: int = 0
    resume: int = 0
    total: int = 0
    last_ts: int | None = None
    recoveries: int = 0
    resent: int = 0
    stopped_by: str | None = None

    @property
    def rate(self) -> float:
        """Events per second achieved (acknowledged events / wall seconds)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Stop:
    """Set by SIGINT / SIGTERM; the loop drains, flushes and saves the position."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def install(self) -> dict:
        """Handle SIGINT and SIGTERM (a second signal aborts immediately); returns the previous handlers."""
        def handler(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def parse_ts(text: str) -> int:
    """Unix seconds from an integer or an ISO-8601 date/time (UTC when no zone is given)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--start-ts: expected unix seconds or an ISO date (got {text!r})") from exc
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())


# -- the run -----------------------------------------------------------------------------------------
def run(cfg: ReplayConfig, stop: Stop | None = None, progress_tty: bool | None = None,
        on_send: Callable[[int, int], None] | None = None) -> Summary:
    """Replay the stream; returns the summary (``stopped_by`` set when interrupted).

    ``on_send(index, n)`` (optional) is called after records ``index .. index + n - 1`` were handed to
    the producer (the benchmark uses it to time the releases).

    Raises:
        DataError: bad data directory, manifest, shard or state file.
        PublishError: the broker stayed unreachable or failing beyond the retry budget (the position
            is saved first; the exception carries ``summary``).
    """
    stop = stop or Stop()
    manifest = load_manifest(cfg.data_dir)
    if cfg.verify:
        verify_shards(manifest)
    start = start_position(manifest, cfg.resume, cfg.state_path, cfg.publish.topic, cfg.start_ts)
    remaining = manifest.train_records - start
    quota = remaining if cfg.max_events is None else min(cfg.max_events, remaining)
    summary = Summary(start=start, resume=start, total=manifest.train_records)
    throttle = Throttle(cfg.throttle)
    progress = Progress(quota, throttle, cfg.progress_s, progress_tty)
    pub = Publisher(cfg.publish, should_stop=stop, notify=progress.message)
    metrics = None
    if cfg.metrics_port:
        from producer import prom

        metrics = prom.serve(prom.ReplayCollector(pub, start, quota, cfg.throttle.rate, lambda: progress.t0),
                             cfg.metrics_port, cfg.metrics_host)
        progress.message(f"Prometheus metrics at http://{cfg.metrics_host}:{metrics.server_address[1]}/metrics")
    t0 = time.monotonic()
    save_error = None
    summary.seconds = 0.0

    def checkpoint() -> None:
        nonlocal save_error
        summary.resume = pub.acked
        summary.events = pub.acked - start
        summary.last_ts = None if pub.last_acked_ts_ms is None else pub.last_acked_ts_ms // 1000
        err = save_position(cfg.state_path, cfg.publish.topic, manifest, cfg.publish.bootstrap,
                            next_index=summary.resume, total=summary.total, last_ts=summary.last_ts)
        if err and not save_error:
            save_error = err
            progress.message(err)

    # kafka-python's sender thread and this loop share the GIL; with the default 5 ms switch interval
    # each GIL-releasing call here (TensorFlow reads, sockets) waits up to 5 ms to get it back.
    # 1 ms measured +35% for a raw kafka-python send loop here (bench/producer.py uses the same).
    old_switch = sys.getswitchinterval()
    if cfg.switch_interval_s:
        sys.setswitchinterval(cfg.switch_interval_s)
    batches = prefetch(iter_batches(manifest, start, None, cfg.batch_size)) if quota else iter(())
    try:
        pub.connect(start)
        left = quota
        first = True
        for batch in batches:
            if first:  # the rate achieved counts from the first send
                t0 = progress.t0 = time.monotonic()
                first = False
            if stop() or left <= 0:
                break
            n = min(len(batch), left)
            ts = batch.timestamps[:n]
            keys, parts = pub.keys_for(batch.user_ids[:n])
            ts_ms = (ts * 1000).tolist()
            values = batch.values
            i = 0
            while i < n and not stop():
                k = throttle.take(ts, i)
                if k:
                    j = i + k
                    pub.send(batch.index + i, values[i:j], keys[i:j], ts_ms[i:j], parts[i:j])
                    if on_send is not None:
                        on_send(batch.index + i, k)
                    i = j
                pub.poll()
                if progress.due():
                    progress.show(pub.sent_to - start, pub.acked, int(ts[i]) if i < n else None,
                                  int(ts[i - 1]) if i else None)
                    checkpoint()
            left -= i
        if stop():
            pub.flush(timeout=cfg.stop_flush_s)
        else:
            pub.flush()
        last = None if pub.last_acked_ts_ms is None else pub.last_acked_ts_ms // 1000
        progress.show(pub.sent_to - start, pub.acked, None, last)
    except Interrupted:
        pass
    except PublishError as exc:
        summary.seconds = time.monotonic() - t0
        checkpoint()
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    except DataError as exc:  # a bad shard met mid-stream: keep what was delivered, save the position
        try:
            pub.flush(timeout=cfg.stop_flush_s)
        except (PublishError, Interrupted):
            pass
        summary.seconds = time.monotonic() - t0
        checkpoint()
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        if hasattr(batches, "close"):
            batches.close()  # stops the reader thread
        sys.setswitchinterval(old_switch)
        progress.close()
        pub.close()
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
    summary.seconds = time.monotonic() - t0
    summary.recoveries, summary.resent = pub.recoveries, pub.resent
    if stop.signum is not None:
        summary.stopped_by = signal.Signals(stop.signum).name
    checkpoint()
    return summary


def describe_pace(throttle: ThrottleConfig) -> str:
    """The pace in words: ``1000 events/s``, ``speedup x60`` or ``as fast as possible``."""
    return (f"{throttle.rate:g} events/s" if throttle.mode == "rate" else
            f"speedup x{throttle.speedup:g}" if throttle.mode == "speedup" else "as fast as possible")


def print_summary(cfg: ReplayConfig, s: Summary, out=None) -> None:
    """The final report: events, seconds, rate achieved, last timestamp, resume position."""
    out = out or sys.stdout
    target = describe_pace(cfg.throttle)
    head = f"stopped by {s.stopped_by}: " if s.stopped_by else ""
    print(f"{head}replayed {s.events} events in {s.seconds:.1f} s ({s.rate:.0f} events/s; target {target}) "
          f"to topic {cfg.publish.topic!r} at {cfg.publish.bootstrap}", file=out)
    print(f"last event time: {iso(s.last_ts)} ({s.last_ts})", file=out)
    if s.recoveries:
        print(f"broker recoveries: {s.recoveries} ({s.resent} records re-sent, at-least-once: a record may be on the "
              "topic twice, each copy with its lfm-seq)", file=out)
    end = " (end of stream)" if s.resume >= s.total else "; `--resume` continues there"
    print(f"resume position: {s.resume} of {s.total} (index of the next record in time order){end}", file=out)
    if cfg.json_summary:
        print(json.dumps({"events": s.events, "seconds": round(s.seconds, 3), "rate": round(s.rate, 1),
                          "start": s.start, "resume": s.resume, "total": s.total, "last_ts": s.last_ts,
                          "recoveries": s.recoveries, "resent": s.resent, "stopped_by": s.stopped_by}), file=out)
    out.flush()


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every option falls back to an environment variable shown in ``--help``."""
    p = argparse.ArgumentParser(prog="python producer/replay.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    add_version_flag(p)
    e = env_default
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help=env_help("prepared data directory (output of producer.prepare)", DATA_DIR_ENV,
                                 default_data_dir()))
    p.add_argument("--bootstrap", default=default_bootstrap(),
                   help=env_help("Kafka bootstrap servers", KAFKA_BOOTSTRAP_ENV, default_bootstrap()))
    p.add_argument("--topic", default=e(TOPIC_ENV, DEFAULT_TOPIC), help=env_help("topic", TOPIC_ENV, DEFAULT_TOPIC))
    p.add_argument("--rate", type=float, default=None,
                   help=env_help("events per second, 0 = as fast as possible (default 1000 unless --speedup)",
                                 "LFM_REPLAY_RATE"))
    p.add_argument("--speedup", type=float, default=_num(e("LFM_REPLAY_SPEEDUP")),
                   help=env_help("replay the original inter-arrival times divided by X (instead of --rate)",
                                 "LFM_REPLAY_SPEEDUP"))
    p.add_argument("--max-events", type=int, default=_num(e("LFM_REPLAY_MAX_EVENTS"), int),
                   help=env_help("stop after this many events", "LFM_REPLAY_MAX_EVENTS", "all"))
    p.add_argument("--partitions", type=int, default=int(e("LFM_PARTITIONS", "1")),
                   help=env_help("partitions when creating the topic (an existing topic is kept)", "LFM_PARTITIONS", 1))
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start-ts", type=parse_ts, default=_ts(e("LFM_REPLAY_START_TS")),
                       help=env_help("start at the first event at or after this time (unix s or ISO date)",
                                     "LFM_REPLAY_START_TS"))
    start.add_argument("--resume", nargs="?", const="state", default=e("LFM_REPLAY_RESUME"), metavar="N",
                       help=env_help("continue from the saved position (no value) or from record N", "LFM_REPLAY_RESUME"))
    p.add_argument("--state-file", type=Path, default=_path(e("LFM_REPLAY_STATE")),
                   help=env_help("resume state file", "LFM_REPLAY_STATE", f"<data-dir>/{STATE_NAME}"))
    p.add_argument("--acks", choices=["0", "1", "all"], default=e("LFM_KAFKA_ACKS", "all"),
                   help=env_help("broker acknowledgements (0 = none: no delivery guarantee)", "LFM_KAFKA_ACKS", "all"))
    p.add_argument("--retry-budget", type=float, default=float(e("LFM_RETRY_BUDGET", "60")),
                   help=env_help("seconds the broker may be unreachable before giving up", "LFM_RETRY_BUDGET", 60))
    p.add_argument("--idempotent", action=argparse.BooleanOptionalAction,
                   default=e("LFM_KAFKA_IDEMPOTENT", "1") not in ("0", "false", "no", "off"),
                   help=env_help("use the idempotent producer with --acks all where the broker supports it (its own "
                                 "retries are then deduplicated by the broker)", "LFM_KAFKA_IDEMPOTENT=0 turns it off",
                                 "on"))
    p.add_argument("--retries", type=int, default=_num(e("LFM_REPLAY_RETRIES"), int),
                   help=env_help("recoveries (reconnect + re-send) allowed per run", "LFM_REPLAY_RETRIES", "unlimited"))
    p.add_argument("--linger-ms", type=int, default=int(e("LFM_KAFKA_LINGER_MS", "20")),
                   help=env_help("producer linger", "LFM_KAFKA_LINGER_MS", 20))
    p.add_argument("--batch-bytes", type=int, default=int(e("LFM_KAFKA_BATCH_BYTES", str(256 * 1024))),
                   help=env_help("producer batch size in bytes", "LFM_KAFKA_BATCH_BYTES", 256 * 1024))
    p.add_argument("--progress-interval", type=float, default=float(e("LFM_PROGRESS_INTERVAL", "5")),
                   help=env_help("seconds between progress lines when not on a TTY", "LFM_PROGRESS_INTERVAL", 5))
    p.add_argument("--no-verify", action="store_true", default=e("LFM_REPLAY_NO_VERIFY") == "1",
                   help=env_help("skip the up-front CRC and record-count check of the shards", "LFM_REPLAY_NO_VERIFY=1"))
    p.add_argument("--metrics-port", type=int, default=int(e("LFM_REPLAY_METRICS_PORT", "0")),
                   help=env_help("serve Prometheus /metrics on this port during the run (0 = off; compose uses 9102)",
                                 "LFM_REPLAY_METRICS_PORT", 0))
    p.add_argument("--metrics-host", default=e("LFM_METRICS_HOST", "127.0.0.1"),
                   help=env_help("interface of /metrics", "LFM_METRICS_HOST", "127.0.0.1"))
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    kafka_security.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="show kafka-python's own log messages")
    return p


def _num(text: str | None, kind=float):
    return None if text is None else kind(text)


def _ts(text: str | None) -> int | None:
    return None if text is None else parse_ts(text)


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    """Validate the flags and build the frozen config (ValueError names the bad flag)."""
    rate = args.rate if args.rate is not None else _num(env_default("LFM_REPLAY_RATE"))
    if args.speedup is not None and rate:
        raise ValueError(f"use either --rate ({rate:g}) or --speedup ({args.speedup:g}), not both")
    if rate is None:
        rate = 0.0 if args.speedup is not None else 1000.0
    if args.max_events is not None and args.max_events < 0:
        raise ValueError(f"--max-events must be >= 0 (got {args.max_events})")
    if args.resume not in (None, "state"):
        try:
            if int(args.resume) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"--resume takes no value or a record index >= 0 (got {args.resume!r})") from None
    throttle = ThrottleConfig(rate=rate, speedup=args.speedup)
    publish = PublishConfig(bootstrap=args.bootstrap, topic=args.topic, partitions=args.partitions, acks=args.acks,
                            retry_budget_s=args.retry_budget, retries=args.retries, linger_ms=args.linger_ms,
                            batch_size=args.batch_bytes, idempotent=args.idempotent,
                            security=kafka_security.from_args(args))
    return ReplayConfig(data_dir=args.data_dir, publish=publish, throttle=throttle, max_events=args.max_events,
                        start_ts=args.start_ts, resume=args.resume, state_file=args.state_file,
                        verify=not args.no_verify, progress_s=args.progress_interval, json_summary=args.json,
                        metrics_port=args.metrics_port, metrics_host=args.metrics_host)


def main(argv: list[str] | None = None) -> int:
    """``python producer/replay.py``: see ``--help``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    import_tensorflow()  # quietly, before the shards are read with TensorFlow
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its retries are reported by producer.publish
    print(f"replay {version()}: {cfg.data_dir} to topic {cfg.publish.topic!r} at {cfg.publish.bootstrap}, "
          f"{describe_pace(cfg.throttle)}", file=sys.stderr, flush=True)
    stop = Stop()
    previous = stop.install()
    try:
        summary = run(cfg, stop)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        s = getattr(exc, "summary", None)
        if s is not None:
            print_summary(cfg, s)
        return 1
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        s = getattr(exc, "summary", None)
        if s is not None:
            print_summary(cfg, s)
        return 3
    except ValueError as exc:  # a flag the run could not honour (--metrics-port taken)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aborted by a second signal; the last saved position is in {cfg.state_path}", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print_summary(cfg, summary)
    if summary.stopped_by:
        return 128 + int(signal.Signals[summary.stopped_by])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
