"""The streaming loop: consume → decode → chunk → pull rows not held → per micro-batch predict + step → sync.

With :mod:`learner.sync` (the PS writes) the only module doing Redis I/O, and (through :mod:`learner.kafka_io`)
Kafka I/O.

The loop takes consumed records a chunk (up to CHUNK_EVENTS events, whole micro-batches) at a time: it indexes
the chunk (:mod:`learner.batch`), pulls the rows it does not hold (one MGET), adds the chunk's row counts, and
trains its micro-batches in order on the held rows, consecutive micro-batches in one TF call (``MFModel.run``; a
run ends before a micro-batch the prequential HR probe scores). A *sync* (:mod:`learner.sync`) writes the rows
changed since the previous one, between chunks only: once the consumer has reached the end of its partitions and
at least every ``sync_ms`` while a backlog drains; before a background write starts, the loop pulls the rows of
the records it consumed already (read-ahead: a pull queued behind the write's transaction would wait for it).
Details, cluster and gradient mode: docs/design.md.

Exactly-once: the PS stores the offsets in the same atomic step as the rows.  When partitions are assigned
the consumer seeks to the PS-stored offsets, so a learner killed at any point (SIGKILL) resumes exactly
after the last written window; a replayed write whose fence is already covered is skipped.  Kafka commits
follow each write (the PS offsets remain the source of truth).  On revocation the in-flight chunk is
finished and written, the held rows are dropped, and everything consumed but not trained is dropped (the new
owner resumes from the PS offsets).  SIGTERM finishes the chunk, writes, commits, evaluates, checkpoints and
exits 0.  Redis errors are retried with capped exponential backoff; nothing is committed that was not applied.
"""

from __future__ import annotations

import signal
import threading
import time

from learner.backoff import retry
from learner.batch import index_chunk
from learner.config import LearnerConfig
from learner.dedup import SeqFilter, valid_seqs
from learner.input import InputFn
from learner.kafka_io import Chunk
from learner import runtime
from learner.poison import PoisonRecords
from learner.probe import HRProbe
from learner.live import Live
from learner.model import MFModel
from learner.report import Reporter, say
from learner.source import RecordSource
from learner.sync import WindowSync
from learner.trainer import ChunkTrainer
from lfm_stream.version import version
from ps_redis import mask_url

CHUNK_EVENTS = 8192  # events indexed and pulled together, whole micro-batches (the unit between two syncs)
READ_AHEAD_EVENTS = 32768  # consumed records whose rows are pulled before a background write


class Learner:
    """One learner process of the consumer group: the pipeline of its stages (see the module docstring).

    ``source`` (:class:`learner.source.RecordSource`) consumes; the learner parses, dead-letters and deduplicates
    each chunk and holds its rows; ``trainer`` (:class:`learner.trainer.ChunkTrainer`) trains it; ``sync``
    (:class:`learner.sync.WindowSync`) writes the window to the PS with its offsets; ``report``
    (:class:`learner.report.Reporter`) logs, evaluates and checkpoints.
    """

    def __init__(self, cfg: LearnerConfig, ps=None, log=None):
        from ps_redis import Fence, ParameterServer
        from ps_redis.activity import ActivityLog

        self.cfg = cfg
        model_cfg = cfg.model
        self.ps = ps or ParameterServer.get(cfg.redis_url, cfg.namespace, model_cfg.dim, init_scale=model_cfg.init_std,
                                            seed=model_cfg.seed)
        self.activity = log or ActivityLog(self.ps)
        runtime.configure()
        # compiled first, while no other thread writes to stderr (learner.model mutes XLA's start-up notices)
        model = MFModel(model_cfg, jit=cfg.xla, max_batches=max(1, CHUNK_EVENTS // model_cfg.batch_size))
        self.input = InputFn(cfg.limits)
        self.mode = "gradient" if cfg.gradient_push else "assign"
        self.lock = threading.RLock()
        self.records = 0  # stream records consumed and handled (valid + poison)
        self.rebuilds = 0  # times the PS lost state and the learner replayed (--on-ps-loss rebuild)
        self.seqs = SeqFilter()  # drops re-sent records already applied (learner.dedup)
        self.stage: dict[str, float] = {}  # cumulative seconds per stage of _process
        self._stop = False
        self._closing = False  # leaving the group at the end: its revocation is no news
        self.live = Live(cfg, say, getattr(self.ps, "redis", None))  # progress, /metrics, dashboard records
        self.report = Reporter(cfg, self.ps, self.activity, self.live, self._retry, self._position)
        self.say, self.emit = self.report.say, self.report.emit
        self.poison = PoisonRecords(cfg, self.say, self.emit)
        self.source = RecordSource(cfg, self.input.decode, self.on_assign, self.on_revoke, self.say)
        self.sync = WindowSync(self.ps, self.activity, model_cfg.dim, self.mode,
                               fence=lambda offsets: Fence(cfg.group, cfg.topic, offsets),
                               commit=self.source.commit, retry=self._retry, say=self.say, tick=self._tick)
        self.probe = HRProbe(model_cfg, cfg.hr_k, cfg.hr_sample, self.activity, self.sync, self._retry) \
            if cfg.hr_sample > 0 else None
        self.trainer = ChunkTrainer(model, self.sync, self.probe, cfg.train_log_steps, self._log_train, self._tick)
        self._first_batch_t: float | None = None
        self._last_batch_t = 0.0
        self._assigned_at = 0.0
        self._assigned: list[int] = []

    def _position(self) -> dict:
        return {"step": self.trainer.step, "events": self.trainer.events, "records": self.records}

    # ----------------------------------------------------------------------------- I/O edge
    def _retry(self, what: str, fn, *args, **kwargs):
        """Call ``fn`` until it succeeds, backing off on Redis errors (returns (result, failed attempts))."""
        from ps_redis import PSConnectionError
        import redis

        started = time.perf_counter()
        out = retry(what, fn, *args, errors=(PSConnectionError, redis.ConnectionError, redis.TimeoutError),
                    say=self.say, max_s=self.cfg.retry_max_s, **kwargs)
        self.live.call(what, time.perf_counter() - started, out[1])
        return out

    def on_assign(self, partitions: list[int]) -> dict[int, int]:
        (stored, marks), _ = self._retry("reading PS offsets", self.ps.fence_state, self.cfg.group, self.cfg.topic)
        self.seqs.resume(marks, partitions)  # the event seqs applied with those offsets: re-sends are dropped
        # the PS offsets are the truth: a partition without any was never applied to this namespace (or the PS lost
        # it), so it replays from the earliest offset, not from the group's Kafka commit
        seek = {p: stored.get(p, 0) for p in partitions}
        self.sync.resume({p: stored[p] for p in partitions if p in stored})
        self._assigned_at = time.monotonic()
        self._assigned = list(partitions)
        self.live.assign(partitions)
        self.say(f"assigned partitions {partitions}; resuming from PS offsets {seek} (0: the earliest)")
        self.emit("assign", partitions=partitions, resume=seek)
        return seek

    def on_revoke(self, partitions: list[int]) -> None:
        with self.lock:  # waits for the in-flight batch, then writes what was trained
            self.sync.sync()
            self.sync.forget()  # the next owner of these partitions changes their rows
            dropped = self.source.revoke()  # consumed, not trained: the next owner consumes them again
            self._assigned_at, self._assigned = time.monotonic(), []
            self.live.assign([])
        if partitions and not self._closing:  # kafka-python also calls this with [] when a member first joins
            self.say(f"partitions {partitions} revoked; trained events written to the PS"
                     + (f", {dropped} consumed records not trained yet left to the next owner" if dropped else ""))

    # ----------------------------------------------------------------------------- main loop
    def run(self) -> dict:
        """Consume until max_events, idle_timeout or SIGTERM; returns the final summary."""
        cfg = self.cfg
        batch_size = cfg.model.batch_size
        previous_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        self._write_contract()
        self.source.open()
        self.say(f"lfm-learner {version()}: consuming {cfg.topic!r} from {cfg.bootstrap} as group {cfg.group!r}, "
                 f"PS {mask_url(cfg.redis_url)} namespace {cfg.namespace!r} ({cfg.backend}"
                 f"{' in a child process' if cfg.in_child else ''}, {self.mode} pushes, batch {batch_size}, "
                 f"dim {cfg.model.dim})")
        last_record_at = time.monotonic()
        flush_s = cfg.flush_ms / 1000.0
        reason = "stopped"
        try:
            while True:
                waited_from, handled = time.perf_counter(), self.records
                chunk = self.source.fetch(timeout=min(0.1, flush_s) if flush_s > 0 else 0.1)
                if self._first_batch_t is not None and chunk is not None:
                    self._tick("wait_consume", waited_from)
                now = time.monotonic()
                with self.lock:
                    if chunk is not None and self.source.accept(chunk):
                        self.live.arrived(chunk)
                        last_record_at = now
                    while self.source.n_pending >= batch_size and not self._limit_reached() and not self._stop:
                        self._process(self._take(self._chunk_size()))
                    idle = now - last_record_at
                    if self.source.n_pending and idle >= flush_s and not self._limit_reached() and not self._stop:
                        self._process(self._take(self.source.n_pending))
                    # caught up with the stream: make what was trained visible now
                    if self.sync.due(self.source.n_pending < batch_size and self.source.caught_up(), cfg.sync_ms):
                        self.sync.sync(wait=False)
                    if chunk is not None:
                        last_record_at = time.monotonic()  # idle time counts from the end of its processing
                self.live.tick(self.records, waiting=chunk is None and self.records == handled)
                if self._limit_reached():
                    reason = "max_events"
                    break
                if self._stop:
                    reason = "signal"
                    break
                if self.sync.lost is not None:  # a write found the PS lost what it had stored
                    if cfg.on_ps_loss != "rebuild":
                        reason = "ps_state_lost"
                        break
                    self._rebuild()
                    last_record_at = time.monotonic()
                # idle counts from the last record or the last assignment; before the first assignment the
                # group join (about half the session timeout on Tansu, longer after a crash) is allowed too
                idle = now - max(last_record_at, self._assigned_at)
                allowance = 0.0 if self._assigned else 2 * cfg.session_timeout_ms / 1000
                if cfg.idle_timeout and idle >= cfg.idle_timeout + allowance and not self.source.n_pending:
                    reason = "idle_timeout"
                    break
        finally:
            summary = self._finish(reason)
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
        return summary

    def _rebuild(self) -> None:
        """``--on-ps-loss rebuild``: drop what is held and consumed, leave the group and join again, so every
        partition resumes from the PS offsets (the earliest where the PS has none) and the lost events are
        trained again."""
        lost = self.sync.lost
        self.rebuilds += 1
        self.say(f"the PS lost state ({lost}); rebuilding: replaying from the PS offsets (the earliest where none)")
        self.emit("rebuild", error=str(lost))
        self.source.close()
        with self.lock:
            self.source.pending.clear()
            self.sync.reset()
            self.seqs.reset()
        # a Redis that lost everything lost the namespace's description and the score contract too: readers (the
        # recall service, dim=None) need both
        self._retry("writing the PS metadata", self.ps.write_meta)
        self._write_contract()
        self.source.open()

    def _write_contract(self) -> None:
        """Publish the recall score contract (``<ns>:@contract``) the recall service ranks with."""
        from lfm_stream.scoring import contract_key

        contract = self.cfg.score_contract
        self._retry("writing the score contract", self.ps.redis.set, contract_key(self.cfg.namespace),
                    contract.to_json())

    def _on_signal(self, signum, frame) -> None:
        self.say(f"signal {signum}: finishing the batch, then push, commit, checkpoint, exit")
        self._stop = True

    def _limit_reached(self) -> bool:
        return bool(self.cfg.max_events) and self.records >= self.cfg.max_events

    def _chunk_size(self) -> int:
        """Records for the next chunk: whole micro-batches, up to CHUNK_EVENTS, never past a test-log step (the
        evaluation follows a sync)."""
        batch_size, test_every = self.cfg.model.batch_size, self.cfg.test_log_steps
        n_batches = min(self.source.n_pending // batch_size, self.trainer.max_batches)
        if test_every:
            n_batches = min(n_batches, test_every - self.trainer.step % test_every)
        return n_batches * batch_size

    def _take(self, n: int) -> Chunk:
        if self.cfg.max_events:
            n = min(n, self.cfg.max_events - self.records)
        return self.source.take(n)

    # ----------------------------------------------------------------------------- one chunk
    def _tick(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.stage[name] = self.stage.get(name, 0.0) + now - since
        self.live.stage(name, now - since)
        return now

    def _process(self, chunk: Chunk) -> None:
        started = time.perf_counter()
        if self._first_batch_t is None:
            self._first_batch_t = time.time()
        step = self.trainer.step
        self._process_chunk(chunk, started)
        self.live.handled(self.sync.offsets)  # this chunk's partitions' next offsets (and earlier ones since the sync)
        self._last_batch_t = time.time()
        test_every = self.cfg.test_log_steps
        if test_every and self.trainer.step > step and self.trainer.step % test_every == 0:
            self._test_and_checkpoint()

    def _process_chunk(self, chunk: Chunk, started: float) -> None:
        """One chunk of records (whole micro-batches, one partial at the end of the stream): parse it, dead-letter
        its poison, drop the re-sent records, hold its rows (one pull of those not held) and add its counters,
        then train it (:class:`~learner.trainer.ChunkTrainer`)."""
        parsed = chunk.decoded.parsed() if chunk.decoded is not None else self.input.parse(chunk.values)
        if parsed.bad:
            self.poison.handle(chunk, parsed.bad)
        # re-sent valid records already applied are not trained again; the offsets of the whole chunk move on
        seqs = valid_seqs(chunk.seqs, parsed.valid_mask(len(chunk)))
        parsed = parsed.taking(self.seqs.keep(chunk.parts, seqs))
        now = self._tick("parse", started)
        if len(parsed) == 0:
            self._sync_due()
            self.sync.add_batch(chunk.parts, chunk.offsets, seqs)  # the offsets move with the next sync
            self.records += len(chunk)
            return
        columns = parsed.columns
        index = index_chunk(columns, self.cfg.model)
        # a single writer reads the rows it lacks before the previous window's write starts (a read queued
        # behind that transaction would wait for it); gradient pushes write first (their rows are re-read)
        slots = self.sync.hold(index.wanted) if self.mode == "assign" else None
        if self.sync.background and self.sync.due(False, self.cfg.sync_ms):
            self._read_ahead()
        self._tick("pull", now)
        dropped = self._sync_due()  # its time counts as "push"
        now = time.perf_counter()
        if dropped or slots is None:
            slots = self.sync.hold(index.wanted)
        self.sync.add_batch(chunk.parts, chunk.offsets, seqs)
        self.records += len(chunk)
        self.sync.count(index, slots)
        self.trainer.train(columns, index, slots, chunk.parts[parsed.valid], chunk.offsets[parsed.valid], now)

    def _read_ahead(self) -> None:
        """Before a background write starts, pull the rows of the records already consumed (pending, plus up to
        READ_AHEAD_EVENTS the consumer holds): a pull sent during the write would wait for its transaction.  Safe:
        in assign mode the learner is the rows' only writer, and a held row is written only once trained."""
        columns = self.source.consumed_columns(READ_AHEAD_EVENTS)
        if columns is not None and len(columns["label"]):
            self.sync.hold(index_chunk(columns, self.cfg.model).wanted)

    def _sync_due(self) -> bool:
        """Write the window if it is ``sync_ms`` old (or after every chunk with gradient pushes); returns
        whether that dropped the held rows."""
        if not self.sync.due(False, self.cfg.sync_ms):
            return False
        return self.sync.sync(wait=False)

    # ----------------------------------------------------------------------------- logs, eval, end
    def _log_train(self) -> None:
        self.report.train_line(self.trainer.window, self.probe, self.poison.count)

    def _test_and_checkpoint(self) -> dict:
        self.sync.sync()  # the evaluation and the checkpoint read the PS
        return self.report.test_and_checkpoint(self.trainer.step)

    def _finish(self, reason: str) -> dict:
        with self.lock:
            if self.trainer.window.n:
                self._log_train()
            self.sync.close()
        self._closing = True
        self.source.close()
        lost = self.sync.lost
        if lost is not None:  # nothing was written or committed after the loss: no evaluation, no checkpoint
            self.say(f"error: {lost}. The PS lost events this learner had written (a Redis restart without "
                     "persistence, a flush, an older snapshot); nothing more was written or committed. Restarting "
                     "the learner resumes from the PS offsets (partitions without any replay from the earliest); "
                     "--on-ps-loss rebuild does that without stopping.")
        trained = self.trainer
        test = self._test_and_checkpoint() if (trained.step or self.report.test is not None) and lost is None else {}
        self.poison.close()
        if self.probe is not None:
            self.probe.close()
        seconds = time.time() - self.report.started
        hr, hr_n = self.probe.rate() if self.probe is not None else (None, 0)
        span = (self._last_batch_t - self._first_batch_t) if self._first_batch_t else 0.0
        summary = self.emit("end", reason=reason, seconds=round(seconds, 3), prequential_auc=trained.stream_auc.cal(),
                            stream_seconds=round(span, 3), stream_start=self._first_batch_t,
                            stream_end=self._last_batch_t if self._first_batch_t else None,
                            stream_events_per_s=round(trained.events / span, 1) if span > 0 else None,
                            stage_seconds={k: round(v, 3) for k, v in self.stage.items()},
                            **{f"prequential_hr_at_{self.cfg.hr_k}": hr}, hr_samples=hr_n,
                            poison=self.poison.count, poison_by_reason=dict(self.poison.by_reason),
                            skipped_pushes=self.sync.skipped, rebuilds=self.rebuilds, duplicates=self.seqs.duplicates,
                            ps_state_lost=None if lost is None else str(lost), **test)
        active, mean = self.live.tracker.active_s, self.live.mean_rate()
        self.say(f"done ({reason}): {trained.events} events in {seconds:.1f}s ({active:.1f} s active"
                 + (f", {mean:,.0f} ev/s" if mean else "") + f"), prequential AUC "
                 f"{summary['prequential_auc']:.4f}, poison {self.poison.count}, skipped pushes {self.sync.skipped}"
                 f", duplicates {self.seqs.duplicates}")
        self.live.close()
        self.report.close()
        return summary
