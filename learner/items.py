"""The item channel worker: the rating stream → co-occurrence neighbours, recent movies and stream popularity in Redis.

``python -m learner.items`` (``lfm-items``) consumes the same topic as the learner in a consumer group of its own
(``<group>-items`` by default), and per poll:

1. decodes and validates the records (:class:`learner.input.InputFn`; poison records are skipped and counted —
   the learner dead-letters them);
2. reads the recent movies of users it does not hold yet (one MGET);
3. computes the chunk's pairs, degrees, popularity counts and new recent lists (:mod:`learner.covisit`);
4. writes them with the chunk's Kafka offsets in one fenced MULTI/EXEC (:class:`ps_redis.covisit.Covisit`):
   a replayed chunk whose offsets are already stored is skipped, so each event counts once across crashes; a
   write that finds less stored than the worker resumed from or wrote (Redis lost state) writes nothing, and the
   worker exits 3 (a restart resumes from what the PS holds);
5. commits the offsets to Kafka (the PS offsets stay the truth: on assignment it seeks to them).

It holds only the recent lists of the users it has seen (dropped on revocation); the counts live in Redis,
bounded by ``neighbors`` per movie.  The parameters come from the score contract (:mod:`lfm_stream.scoring`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import numpy as np

from learner.backoff import retry
from learner.config import LearnerConfig
from learner.covisit import NeighbourLists, chunk_update, encode_many
from learner.dedup import SeqFilter, valid_seqs
from learner.report import say as learner_say
from lfm_stream.scoring import ScoreContract, pair_weights

GROUP_ENV = "LFM_ITEMS_GROUP"
WINDOW_SECONDS = 1.0  # longest a polled record waits for its window's write
DEFAULT_GROUP = "lfm-items"


def say(text: str) -> None:
    learner_say(f"items: {text}")


def _call(what: str, fn, *args):
    """Call ``fn`` once (the shape of a retry wrapper: returns (result, failed attempts))."""
    return fn(*args), 0


class ChannelCounter:
    """The item channel's counting state between writes — each user's recent movies and the neighbour lists
    held, the applied-event count — and :meth:`write`, one window of ratings in one fenced write (steps 2–4 of
    the module docstring).  The worker feeds it from Kafka; benchmarks and tests feed it ratings directly.

    Args:
        store: the namespace's :class:`ps_redis.covisit.Covisit`.
        contract: the channel's parameters (``pair_window``, ``pair_decay``, ``recent_items``, ``neighbors``,
            ``neighbor_hold``, ``bucket_events``).
        call: how Redis calls are made (``call(what, fn, *args)`` → (result, failed attempts)): the worker's
            retry; default: once.
    """

    def __init__(self, store, contract: ScoreContract, call=_call):
        self.store, self.contract, self.call = store, contract, call
        self.kept: dict[int, np.ndarray] = {}  # raw user → recent movies
        self.lists = NeighbourLists(contract.neighbors, contract.neighbor_hold)
        self.events = 0  # stream events applied

    @property
    def keep(self) -> int:
        """Movies kept per user: enough for the pair window and the recall query."""
        return max(self.contract.pair_window - 1, self.contract.recent_items)

    def forget(self) -> None:
        """Drop the recent movies and neighbour lists held (Redis has them; they are read again when needed)."""
        self.kept.clear()
        self.lists.clear()

    def write(self, users: np.ndarray, movies: np.ndarray, labels: np.ndarray, fence) -> bool:
        """Count one window of ratings (raw ids, stream order) and write it with ``fence``; returns whether the
        write was applied (False: its offsets were applied before — nothing held is updated then)."""
        users = np.asarray(users, np.int64)
        missing = [u for u in np.unique(users).tolist() if u not in self.kept]
        if missing:
            got, _ = self.call("reading recent movies", self.store.recent, missing)
            for user, (_, recent) in got.items():
                self.kept[user] = recent
        c = self.contract
        update = chunk_update(users, movies, labels, self.kept, self.events, c.pair_window, self.keep,
                              c.bucket_events, pair_weights(c.pair_window, c.pair_decay))
        need = self.lists.missing(update.pair_a)
        if need:
            got, _ = self.call("reading neighbour lists", self.store.neighbours, need)
            self.lists.keep(dict(zip(need, got)))
        lists = self.lists.merged(update)
        applied, _ = self.call("item channel write", self.store.apply, update, encode_many(lists),
                               self.events + update.events, c.bucket_events, fence)
        if applied:
            self.events += update.events
            self.kept.update(zip(update.users.tolist(), update.recent))
            self.lists.keep(lists)
        return applied


class ItemChannel:
    """One item-channel worker (see the module docstring).

    Args:
        cfg: servers, topic, group (use a group of its own, not the learner's), backend and timeouts.
        contract: the channel's parameters (``pair_window``, ``pair_decay``, ``recent_items``, ``neighbors``,
            ``bucket_events``).
        ps: a ParameterServer (default: from ``cfg``).
        poll_records: most records per poll.
        window_events: most records per fenced write while a backlog drains (a caught-up worker writes after
            every poll, and at least every WINDOW_SECONDS): each write rewrites every neighbour list the window
            touched, so larger windows cost less per event.
    """

    def __init__(self, cfg: LearnerConfig, contract: ScoreContract, ps=None, poll_records: int = 10000,
                 window_events: int = 50000):
        from learner.input import InputFn
        from ps_redis import ParameterServer
        from ps_redis.covisit import Covisit

        self.cfg = cfg
        self.ps = ps or self._namespace(ParameterServer)
        self.store = Covisit(self.ps)
        self.counter = ChannelCounter(self.store, contract, self._retry)  # its events: read on assignment
        self.input = InputFn()
        self.seq = SeqFilter()  # re-sent records (same lfm-seq) are dropped, as the learner drops them
        self.stored: dict[int, int] = {}  # {partition: next offset} the PS is known to hold (Fence.stored)
        self.records = 0
        self.poison = 0
        self.skipped = 0
        self.poll_records = poll_records
        self.window_events = window_events
        self._buffer: list[tuple] = []  # polled records not applied yet (one window)
        self._buffered = 0
        self._buffer_t = 0.0
        self.fetcher = None
        self._stop = False

    def _namespace(self, ParameterServer):
        """The learner's namespace, once it exists (its dim is the learner's: the worker never sets it)."""
        from ps_redis import PSError

        cfg, delay, told = self.cfg, 0.1, False
        while True:
            try:
                return ParameterServer.get(cfg.redis_url, cfg.namespace, dim=None)
            except PSError as exc:
                if "is empty" not in str(exc):
                    raise
                if not told:
                    say(f"waiting for the learner to create namespace {cfg.namespace!r}")
                    told = True
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _retry(self, what: str, fn, *args, **kwargs):
        import redis

        from ps_redis import PSConnectionError

        return retry(what, fn, *args, errors=(PSConnectionError, redis.ConnectionError, redis.TimeoutError),
                     say=say, max_s=self.cfg.retry_max_s, **kwargs)

    @property
    def contract(self) -> ScoreContract:
        """The parameters the worker counts with."""
        return self.counter.contract

    @contract.setter
    def contract(self, contract: ScoreContract) -> None:
        self.counter.contract = contract

    @property
    def events(self) -> int:
        """Stream events applied (the PS's count, read on assignment)."""
        return self.counter.events

    def published_contract(self, fallback: ScoreContract) -> ScoreContract:
        """The learner's contract from Redis (its channel parameters are the ones to count with); ``fallback``
        when no learner has written one yet — then it is published (SET NX) so the recall service agrees."""
        from lfm_stream.scoring import contract_key

        key = contract_key(self.cfg.namespace)
        raw, _ = self._retry("reading the score contract", self.ps.redis.get, key)
        if raw is not None:
            try:
                return ScoreContract.from_json(raw)
            except ValueError as exc:
                say(f"the score contract at {key} is unusable ({exc}); counting with the flags' parameters")
                return fallback
        published = fallback.replace(dim=self.ps.dim)
        self._retry("writing the score contract", self.ps.redis.set, key, published.to_json(), nx=True)
        return published

    def on_assign(self, partitions: list[int]) -> dict[int, int]:
        """Resume from the PS offsets; the applied-event count and recent lists are re-read from Redis."""
        (stored, marks), _ = self._retry("reading PS offsets", self.ps.fence_state, self.cfg.group, self.cfg.topic)
        self.seq.resume(marks, partitions)
        self.counter.events, _ = self._retry("reading the item channel", self.store.events_applied)
        self.counter.forget()
        # the PS offsets are the truth: a partition without any was never applied here (or the PS lost it), so it
        # replays from the earliest offset, not from the group's Kafka commit
        seek = {p: stored.get(p, 0) for p in partitions}
        self.stored = {p: stored[p] for p in partitions if p in stored}  # a write finding less: PSStateLost
        say(f"assigned partitions {partitions}; resuming from PS offsets {seek} (0: the earliest)")
        return seek

    def on_revoke(self, partitions: list[int]) -> None:
        self._flush()  # the window consumed so far is written (fenced) before another worker takes over
        self.counter.forget()

    def _hold(self, values: list[bytes], parts: np.ndarray, offsets: np.ndarray, seqs: np.ndarray) -> None:
        if not self._buffered:
            self._buffer_t = time.monotonic()
        self._buffer.append((values, parts, offsets, seqs))
        self._buffered += len(values)

    def _flush(self) -> None:
        """Apply the records held since the last write, as one window."""
        if not self._buffer:
            return
        held, self._buffer, self._buffered = self._buffer, [], 0
        self.process([v for values, *_ in held for v in values], np.concatenate([h[1] for h in held]),
                     np.concatenate([h[2] for h in held]), np.concatenate([h[3] for h in held]))

    def process(self, values: list[bytes], parts: np.ndarray, offsets: np.ndarray,
                seqs: np.ndarray | None = None) -> bool:
        """Apply one window's records; returns whether the write was applied (False: already applied before).
        Records whose event seq (``lfm-seq``) was applied already are skipped; their offsets still move."""
        from ps_redis import Fence

        fence_offsets = {int(p): int(offsets[parts == p].max()) + 1 for p in np.unique(parts).tolist()}
        self.records += len(values)
        parsed = self.input.parse(values)
        self.poison += len(parsed.bad)
        if seqs is not None:  # re-sent valid records applied already are skipped (poison never moves a mark)
            parsed = parsed.taking(self.seq.keep(parts, valid_seqs(seqs, parsed.valid_mask(len(values)))))
        cols = parsed.columns
        fence = Fence(self.cfg.group, self.cfg.topic, fence_offsets, stored=dict(self.stored),
                      seqs={p: m for p, m in self.seq.marks.items() if p in fence_offsets and m >= 0})
        applied = self.counter.write(cols["raw_user_id"], cols["raw_movie_id"], cols["label"], fence)
        if not applied:  # written before (a lost reply or a replay): Redis has it, re-read what depends on it
            self.skipped += 1
            self.counter.events, _ = self._retry("reading the item channel", self.store.events_applied)
            (_, marks), _ = self._retry("reading PS offsets", self.ps.fence_state, self.cfg.group, self.cfg.topic)
            self.seq.resume(marks, list(fence_offsets))
            self.counter.forget()
        self.stored.update(fence_offsets)  # applied now or before: the PS holds them
        if self.fetcher is not None:
            self.fetcher.commit(fence_offsets)
        return applied

    def run(self) -> dict:
        """Consume until ``max_events`` records, ``idle_timeout`` or SIGTERM/SIGINT; returns a summary."""
        from learner.kafka_io import Fetcher, make_source

        cfg = self.cfg
        prev = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        self.fetcher = Fetcher(lambda: make_source(cfg, self.on_assign, self.on_revoke, self.poll_records),
                               prefetch=False, log=say)
        say(f"consuming {cfg.topic!r} as group {cfg.group!r}: pairs within {self.contract.pair_window} ratings "
            f"(decay {self.contract.pair_decay:g}), {self.contract.neighbors} neighbours per movie, popularity buckets of {self.contract.bucket_events} "
            f"events")
        t0 = last = time.monotonic()
        reason = "stopped"
        try:
            while True:
                chunk = self.fetcher.get(timeout=0.2)
                now = time.monotonic()
                if chunk is not None and len(chunk):
                    take = len(chunk)
                    if cfg.max_events:
                        take = min(take, cfg.max_events - self.records - self._buffered)
                    self._hold(chunk.values[:take], chunk.parts[:take], chunk.offsets[:take], chunk.seqs[:take])
                    last = time.monotonic()
                # a window is written once it is large, old, or the consumer has caught up (a short poll)
                if self._buffered and (chunk is None or len(chunk) < self.poll_records
                                       or self._buffered >= self.window_events
                                       or now - self._buffer_t >= WINDOW_SECONDS):
                    self._flush()
                if cfg.max_events and self.records + self._buffered >= cfg.max_events:
                    self._flush()
                    reason = "max_events"
                    break
                if self._stop:
                    self._flush()
                    reason = "signal"
                    break
                if cfg.idle_timeout and now - last >= cfg.idle_timeout + 2 * cfg.session_timeout_ms / 1000 * \
                        (self.records == 0):
                    reason = "idle_timeout"
                    break
        finally:
            self.fetcher.close()
            for s, h in prev.items():
                signal.signal(s, h)
        secs = time.monotonic() - t0
        summary = {"reason": reason, "records": self.records, "events": self.events, "poison": self.poison,
                   "duplicates": self.seq.duplicates,
                   "skipped_writes": self.skipped, "seconds": round(secs, 3)}
        say(f"done ({reason}): {self.records} records, {self.events} events applied in all, poison {self.poison}")
        return summary

    def _on_signal(self, signum, frame) -> None:
        say(f"signal {signum}: finishing the chunk, then exit")
        self._stop = True


def build_parser() -> argparse.ArgumentParser:
    from learner.config import BACKENDS
    from lfm_stream.config import (DEFAULT_NAMESPACE, DEFAULT_TOPIC, KAFKA_BOOTSTRAP_ENV, NAMESPACE_ENV, REDIS_URL_ENV,
                                   TOPIC_ENV, default_bootstrap, default_redis_url, env_default, env_help)
    from lfm_stream import kafka_security
    from lfm_stream.version import add_version_flag

    p = argparse.ArgumentParser(prog="lfm-items", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_version_flag(p)
    p.add_argument("--redis-url", default=default_redis_url(), help=env_help("Redis URL of the PS", REDIS_URL_ENV))
    p.add_argument("--bootstrap", default=default_bootstrap(),
                   help=env_help("Kafka bootstrap servers", KAFKA_BOOTSTRAP_ENV))
    p.add_argument("--topic", default=env_default(TOPIC_ENV, DEFAULT_TOPIC), help=env_help("ratings topic", TOPIC_ENV))
    p.add_argument("--group", default=env_default(GROUP_ENV, DEFAULT_GROUP),
                   help=env_help("consumer group (not the learner's)", GROUP_ENV))
    p.add_argument("--namespace", default=env_default(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                   help=env_help("PS namespace", NAMESPACE_ENV))
    p.add_argument("--backend", choices=BACKENDS, default="kafka-python", help="Kafka client")
    p.add_argument("--session-timeout-ms", type=int, default=6000, help="consumer-group session timeout")
    p.add_argument("--max-events", type=int, default=0, help="stop after this many records (0 = no limit)")
    p.add_argument("--idle-timeout", type=float, default=0.0,
                   help="stop after this many seconds without a record (0 = never)")
    p.add_argument("--poll-records", type=int, default=10000, help="most records per poll")
    p.add_argument("--window-events", type=int, default=50000,
                   help="most records per fenced write while a backlog drains (caught up: every poll)")
    p.add_argument("--retry-budget", type=float, default=float(env_default("LFM_RETRY_BUDGET", "60")),
                   help=env_help("seconds the Kafka broker may stay away before the worker stops with an error "
                                 "(0 = wait forever)", "LFM_RETRY_BUDGET"))
    defaults = ScoreContract()
    for name in ("pair_window", "recent_items", "neighbors", "neighbor_hold", "bucket_events"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                       help=f"score contract: {name}")
    p.add_argument("--pair-decay", type=float, default=defaults.pair_decay,
                   help="score contract: pair_decay (how much less the farthest pair counts than the nearest, [0, 1))")
    kafka_security.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from lfm_stream.quiet import import_tensorflow

    args = build_parser().parse_args(argv)
    import_tensorflow()  # quietly, before InputFn uses TensorFlow
    try:
        from lfm_stream import kafka_security

        cfg = LearnerConfig(redis_url=args.redis_url, bootstrap=args.bootstrap, topic=args.topic, group=args.group,
                            namespace=args.namespace, backend=args.backend,
                            session_timeout_ms=args.session_timeout_ms, max_events=args.max_events,
                            idle_timeout=args.idle_timeout, retry_budget_s=args.retry_budget,
                            kafka_security=kafka_security.from_args(args))
        contract = ScoreContract(pair_window=args.pair_window, pair_decay=args.pair_decay,
                                 recent_items=args.recent_items,
                                 neighbors=args.neighbors, neighbor_hold=max(args.neighbor_hold, args.neighbors),
                                 bucket_events=args.bucket_events)
    except ValueError as exc:
        print(f"lfm-items: {exc}", file=sys.stderr)
        return 2
    for name in ("poll_records", "window_events"):
        if getattr(args, name) < 1:
            print(f"lfm-items: --{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})", file=sys.stderr)
            return 2
    worker = ItemChannel(cfg, contract, poll_records=args.poll_records, window_events=args.window_events)
    worker.contract = worker.published_contract(contract)
    from learner.kafka_guard import KafkaFailure
    from ps_redis import PSStateLost

    try:
        worker.run()
    except KafkaFailure as exc:  # the broker stayed away past --retry-budget
        print(f"lfm-items: error: {exc}", file=sys.stderr)
        return 3
    except PSStateLost as exc:  # nothing was written: a restart resumes from what the PS holds
        print(f"lfm-items: error: {exc}. The PS lost item-channel writes this worker had made (a Redis restart "
              "without persistence, a flush, an older snapshot); nothing more was written or committed. Restarting "
              "the worker resumes from the PS offsets (partitions without any replay from the earliest).",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
