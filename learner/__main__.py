"""``python -m learner`` / ``lfm-learner``: the online learner of one consumer-group member.

Example (after ``python -m producer.prepare`` and ``python -m producer.replay``)::

    python -m learner --data-dir data/prepared --metrics /tmp/metrics.jsonl --idle-timeout 10
    python -m learner --preset seed ...        # the seed's configuration, for the before/after
    python -m learner.plot /tmp/metrics.jsonl -o auc.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from lfm_stream.config import (DATA_DIR_ENV, DEFAULT_NAMESPACE, DEFAULT_TOPIC, KAFKA_BOOTSTRAP_ENV, NAMESPACE_ENV,
                               PREPARED_DEFAULT_HELP, REDIS_URL_ENV, TOPIC_ENV, default_bootstrap, default_redis_url,
                               env_default, env_help, prepared_data_dir)
from lfm_stream import kafka_security
from lfm_stream.quiet import quiet_tensorflow
from lfm_stream.version import add_version_flag
from learner.config import BACKENDS, ON_PS_LOSS, PRESETS, PUSH_MODES, LearnerConfig, ModelConfig, preset
from learner.validate import RecordLimits

GROUP_ENV = "LFM_GROUP"
RETRY_BUDGET_ENV = "LFM_RETRY_BUDGET"
ON_PS_LOSS_ENV = "LFM_ON_PS_LOSS"
METRICS_PORT_ENV, METRICS_HOST_ENV, PROGRESS_ENV = "LFM_LEARNER_METRICS_PORT", "LFM_METRICS_HOST", "LFM_PROGRESS_INTERVAL"
DEFAULT_GROUP = "lfm-learner"
_MODEL_TYPES = typing.get_type_hints(ModelConfig)


def _model_flag(f: dataclasses.Field) -> tuple[str, dict]:
    typ = _MODEL_TYPES[f.name]
    name = "--" + f.name.replace("_", "-")
    if typ is bool:
        return name, dict(action=argparse.BooleanOptionalAction, default=None,
                          help=f"(preset default: {f.default})")
    conv = {int: int, float: float, str: str}.get(typ, float)
    return name, dict(type=conv, default=None, help=f"(preset default: {f.default})")


def _threshold(text: str) -> float | None:
    """``--pos-threshold``: a number, or ``none``."""
    return None if text.strip().lower() == "none" else float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lfm-learner", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version_flag(p)
    io = p.add_argument_group("servers and stream")
    io.add_argument("--redis-url", default=default_redis_url(), help=env_help("Redis URL of the PS", REDIS_URL_ENV))
    io.add_argument("--bootstrap", default=default_bootstrap(), help=env_help("Kafka bootstrap servers", KAFKA_BOOTSTRAP_ENV))
    io.add_argument("--topic", default=env_default(TOPIC_ENV, DEFAULT_TOPIC), help=env_help("ratings topic", TOPIC_ENV))
    io.add_argument("--group", default=env_default(GROUP_ENV, DEFAULT_GROUP), help=env_help("consumer group", GROUP_ENV))
    io.add_argument("--namespace", default=env_default(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                    help=env_help("PS namespace", NAMESPACE_ENV))
    io.add_argument("--data-dir", default=prepared_data_dir(),
                    help=env_help(f"prepared data directory (test shards for the test AUC; {PREPARED_DEFAULT_HELP})",
                                  DATA_DIR_ENV))
    io.add_argument("--backend", choices=BACKENDS, default="kafka-python", help="Kafka client")
    io.add_argument("--session-timeout-ms", type=int, default=6000,
                    help="consumer-group session timeout (Tansu joins take about half of it)")
    io.add_argument("--heartbeat-interval-ms", type=int, default=1000, help="consumer-group heartbeat")
    io.add_argument("--workers", type=int, default=1,
                    help="learners in the group (> 1: gradient-mode pushes under --push-mode auto)")
    io.add_argument("--push-mode", choices=PUSH_MODES, default="auto", help="PS push mode")
    io.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                    help="consume on a background thread")
    io.add_argument("--consumer-process", action=argparse.BooleanOptionalAction, default=None,
                    help="consume in a child process, off the training loop's GIL (default: on with --prefetch)")
    io.add_argument("--dlq", action=argparse.BooleanOptionalAction, default=True,
                    help="copy poison records to <topic>.dlq")
    io.add_argument("--retry-budget", type=float, default=float(env_default(RETRY_BUDGET_ENV, "60")),
                    help=env_help("seconds the Kafka broker may stay away before the learner stops with an error "
                                  "(exit 3; 0 = wait forever)", RETRY_BUDGET_ENV))
    io.add_argument("--on-ps-loss", choices=ON_PS_LOSS, default=env_default(ON_PS_LOSS_ENV, "fail"),
                    help=env_help("when a PS write finds the PS lost what this learner wrote (Redis restarted "
                                  "without persistence, a flush): fail = stop with an error (exit 3), rebuild = "
                                  "replay from the PS offsets (the earliest where none)", ON_PS_LOSS_ENV, "fail"))
    chk = p.add_argument_group("record checks (a record outside these goes to <topic>.dlq with its reason)")
    chk.add_argument("--min-timestamp", type=int, default=0, help="earliest event time accepted (epoch seconds)")
    chk.add_argument("--max-timestamp", type=int, default=None,
                     help="latest event time accepted (epoch seconds; default: one day after the clock)")
    chk.add_argument("--min-rating", type=float, default=0.5, help="lowest rating accepted")
    chk.add_argument("--max-rating", type=float, default=5.0, help="highest rating accepted")
    chk.add_argument("--pos-threshold", type=_threshold, default=4.0,
                     help="the label must be 1 iff rating >= this (prepare's --pos-threshold); "
                          "'none': only check that it is 0 or 1")
    run = p.add_argument_group("run and logging")
    run.add_argument("--max-events", type=int, default=0, help="stop after this many records (0 = no limit)")
    run.add_argument("--idle-timeout", type=float, default=0.0, help="stop after this many idle seconds (0 = never)")
    run.add_argument("--flush-ms", type=int, default=200, help="flush a partial batch after this idle time")
    run.add_argument("--sync-ms", type=int, default=1000,
                     help="while draining a backlog, write the rows trained locally to the PS at least this often "
                          "(a learner at the end of the stream syncs after every chunk; 0 = every chunk)")
    run.add_argument("--train-log-steps", type=int, default=800, help="batches between prequential AUC lines")
    run.add_argument("--test-log-steps", type=int, default=0,
                     help="batches between test evaluations + checkpoints (0 = at the end only)")
    run.add_argument("--hr-sample", type=float, default=0.02, help="share of positives scored for prequential HR@k")
    run.add_argument("--hr-k", type=int, default=50, help="k of the prequential hit rate")
    run.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                     help="compile the TF loop over a chunk's micro-batches with XLA (one compilation at start, "
                          "~5 s): a micro-batch costs about the same whatever its size")
    run.add_argument("--metrics", default=None, help="JSON-lines metrics file (one object per log event)")
    run.add_argument("--checkpoint-dir", default=None, help="PS checkpoints after each test evaluation")
    run.add_argument("--progress-interval", type=float, default=float(env_default(PROGRESS_ENV, "5")),
                     help=env_help("seconds between progress lines (events, ev/s while active, consumer lag, state) "
                                   "when stderr is not a TTY; a TTY gets a bar; 0 = neither. The lag is taken from "
                                   "the partitions' high watermarks: Tansu reports the start of the last batch + 1 "
                                   "there, so the lag undercounts by up to one producer batch", PROGRESS_ENV))
    run.add_argument("--metrics-port", type=int, default=int(env_default(METRICS_PORT_ENV, "0")),
                     help=env_help("serve Prometheus /metrics on this port (0 = off; compose uses 9101)",
                                   METRICS_PORT_ENV))
    run.add_argument("--metrics-host", default=env_default(METRICS_HOST_ENV, "127.0.0.1"),
                     help=env_help("interface of /metrics", METRICS_HOST_ENV))
    kafka_security.add_arguments(p)
    mod = p.add_argument_group("model (override the preset)")
    mod.add_argument("--preset", choices=sorted(PRESETS), default="default", help="model preset")
    for f in dataclasses.fields(ModelConfig):
        name, kw = _model_flag(f)
        mod.add_argument(name, dest=f"m_{f.name}", **kw)
    return p


def config_from_args(args: argparse.Namespace) -> LearnerConfig:
    """The frozen configs from parsed flags (errors name the bad value)."""
    overrides = {f.name: getattr(args, f"m_{f.name}") for f in dataclasses.fields(ModelConfig)}
    model = preset(args.preset, **overrides)
    return LearnerConfig(
        model=model, redis_url=args.redis_url, bootstrap=args.bootstrap, topic=args.topic, group=args.group,
        namespace=args.namespace, data_dir=args.data_dir, metrics_path=args.metrics, checkpoint_dir=args.checkpoint_dir,
        backend=args.backend, session_timeout_ms=args.session_timeout_ms, heartbeat_interval_ms=args.heartbeat_interval_ms,
        max_events=args.max_events, idle_timeout=args.idle_timeout, flush_ms=args.flush_ms, sync_ms=args.sync_ms, workers=args.workers,
        push_mode=args.push_mode, prefetch=args.prefetch, consumer_process=args.consumer_process,
        train_log_steps=args.train_log_steps,
        test_log_steps=args.test_log_steps, hr_sample=args.hr_sample, hr_k=args.hr_k, dlq=args.dlq,
        on_ps_loss=args.on_ps_loss, retry_budget_s=args.retry_budget, kafka_security=kafka_security.from_args(args),
        limits=RecordLimits(min_timestamp=args.min_timestamp, max_timestamp=args.max_timestamp,
                            min_rating=args.min_rating, max_rating=args.max_rating, pos_threshold=args.pos_threshold),
        xla=args.xla, progress_s=args.progress_interval, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host)


def main(argv: list[str] | None = None) -> int:
    """Run one learner until end of stream (``--max-events`` / ``--idle-timeout``) or SIGTERM."""
    quiet_tensorflow()  # before anything imports TensorFlow
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"lfm-learner: error: {exc}", file=sys.stderr)
        return 2
    from learner.loop import Learner
    from ps_redis import PSConnectionError, PSError

    try:
        learner = Learner(cfg)
    except (FileNotFoundError, ValueError, PSError) as exc:  # a PSError: Redis refused the password, or is away
        print(f"lfm-learner: error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, PSConnectionError) else 2
    from learner.kafka_guard import KafkaFailure

    try:
        summary = learner.run()
    except KafkaFailure as exc:  # the broker stayed away past --retry-budget, or no longer holds the PS offsets
        print(f"lfm-learner: error: {exc}", file=sys.stderr)
        return 3
    return 3 if summary.get("reason") == "ps_state_lost" else 0


if __name__ == "__main__":
    raise SystemExit(main())
