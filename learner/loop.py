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
from pathlib import Path

from learner.config import LearnerConfig
from learner.backoff import retry
from learner.batch import gather_run, index_chunk, run_index, scatter_run
from learner.evaluate import evaluate
from learner.input import InputFn, shard_paths
from learner.consumer_process import ProcessFetcher
from learner.dedup import SeqFilter, valid_seqs
from learner.kafka_io import Chunk, Fetcher, make_source
from learner.metrics import AUCUtils
from learner import runtime
from learner.model import MFModel
from learner.pending import Pending
from learner.poison import PoisonRecords
from learner.probe import HRProbe
from learner.live import Live
from learner.report import MetricsFile, say
from learner.sync import WindowSync
from lfm_stream.version import version
from ps_redis import mask_url

CHUNK_EVENTS = 8192  # events indexed and pulled together, whole micro-batches (the unit between two syncs)
READ_AHEAD_EVENTS = 32768  # consumed records whose rows are pulled before a background write


class Learner:
    """One learner process of the consumer group (see the module docstring)."""

    def __init__(self, cfg: LearnerConfig, ps=None, log=None):
        from ps_redis import ParameterServer
        from ps_redis.activity import ActivityLog

        self.cfg = cfg
        m = cfg.model
        self.ps = ps or ParameterServer.get(cfg.redis_url, cfg.namespace, m.dim, init_scale=m.init_std, seed=m.seed)
        self.activity = log or ActivityLog(self.ps)
        runtime.configure()
        self.model = MFModel(m, jit=cfg.xla, max_batches=max(1, CHUNK_EVENTS // m.batch_size))
        self.input = InputFn(cfg.limits)
        self.mode = "gradient" if cfg.gradient_push else "assign"
        self.lock = threading.RLock()
        self.pending = Pending()
        self.window = AUCUtils()  # prequential AUC and loss of the current log window
        self.stream_auc = AUCUtils()  # prequential AUC over the whole stream
        self.step = 0
        self.events = 0  # valid events trained
        self.records = 0  # stream records consumed and handled (valid + poison)
        self._stop = False
        self.rebuilds = 0  # times the PS lost state and the learner replayed (--on-ps-loss rebuild)
        self.seqs = SeqFilter()  # drops re-sent records already applied (learner.dedup)
        self._closing = False  # leaving the group at the end: its revocation is no news
        self._metrics = MetricsFile(cfg.metrics_path)
        self.live = Live(cfg, self.say, getattr(self.ps, "redis", None))  # progress, /metrics, dashboard records
        self.poison = PoisonRecords(cfg, self.say, self.emit)
        self.test = None
        if cfg.data_dir:
            self.test = self.input.read_all(shard_paths(cfg.data_dir, "test"))
        self.t0 = time.time()
        self.fetcher: Fetcher | None = None
        from ps_redis import Fence

        self.sync = WindowSync(self.ps, self.activity, m.dim, self.mode,
                               fence=lambda offsets: Fence(cfg.group, cfg.topic, offsets),
                               commit=self._commit, retry=self._retry,
                               say=self.say, tick=self._tick)
        self.probe = HRProbe(m, cfg.hr_k, cfg.hr_sample, self.activity, self.sync, self._retry) \
            if cfg.hr_sample > 0 else None
        self.stage: dict[str, float] = {}  # cumulative seconds per stage of _process
        self._first_batch_t: float | None = None
        self._last_batch_t = 0.0
        self._assigned_at = 0.0
        self._assigned: list[int] = []

    # ----------------------------------------------------------------------------- logging
    def say(self, text: str) -> None:
        say(text)

    def emit(self, event: str, **fields) -> dict:
        rec = {"event": event, "step": self.step, "events": self.events, "records": self.records,
               "time": round(time.time(), 3), "elapsed": round(time.time() - self.t0, 3), **fields}
        self._metrics.write(rec)
        self.live.record(rec)
        return rec

    # ----------------------------------------------------------------------------- I/O edge
    def _retry(self, what: str, fn, *args, **kwargs):
        """Call ``fn`` until it succeeds, backing off on Redis errors (returns (result, failed attempts))."""
        from ps_redis import PSConnectionError
        import redis

        t = time.perf_counter()
        out = retry(what, fn, *args, errors=(PSConnectionError, redis.ConnectionError, redis.TimeoutError),
                    say=self.say, max_s=self.cfg.retry_max_s, **kwargs)
        self.live.call(what, time.perf_counter() - t, out[1])
        return out

    def _commit(self, offsets: dict[int, int]) -> None:
        """Kafka commit after a PS write (none before the consumer exists: the PS offsets are the truth)."""
        if self.fetcher is not None:
            self.fetcher.commit(offsets)

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
            if self.fetcher is not None:
                self.fetcher.generation += 1
                self.fetcher.drain()
            dropped = self.pending.n  # consumed, not trained: the next owner consumes them again
            self.pending.clear()
            self._assigned_at, self._assigned = time.monotonic(), []
            self.live.assign([])
        if partitions and not self._closing:  # kafka-python also calls this with [] when a member first joins
            self.say(f"partitions {partitions} revoked; trained events written to the PS"
                     + (f", {dropped} consumed records not trained yet left to the next owner" if dropped else ""))

    # ----------------------------------------------------------------------------- main loop
    def run(self) -> dict:
        """Consume until max_events, idle_timeout or SIGTERM; returns the final summary."""
        cfg = self.cfg
        B = cfg.model.batch_size
        prev = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        poll_records = max(4 * B, 10000)
        self._write_contract()
        self.fetcher = self._open_fetcher(poll_records)
        self.say(f"lfm-learner {version()}: consuming {cfg.topic!r} from {cfg.bootstrap} as group {cfg.group!r}, "
                 f"PS {mask_url(cfg.redis_url)} namespace {cfg.namespace!r} ({cfg.backend}"
                 f"{' in a child process' if cfg.in_child else ''}, {self.mode} pushes, batch {B}, dim {cfg.model.dim})")
        last_rec = time.monotonic()
        flush_s = cfg.flush_ms / 1000.0
        reason = "stopped"
        try:
            while True:
                t, handled = time.perf_counter(), self.records
                chunk = self.fetcher.get(timeout=min(0.1, flush_s) if flush_s > 0 else 0.1)
                if self._first_batch_t is not None and chunk is not None:
                    self._tick("wait_consume", t)
                now = time.monotonic()
                with self.lock:
                    if chunk is not None and chunk.gen == self.fetcher.generation:
                        self.pending.add(chunk)
                        self.live.arrived(chunk)
                        last_rec = now
                    while self.pending.n >= B and not self._limit_reached() and not self._stop:
                        self._process(self._take(self._chunk_size()))
                    idle = now - last_rec
                    if self.pending.n and idle >= flush_s and not self._limit_reached() and not self._stop:
                        self._process(self._take(self.pending.n))
                    # caught up with the stream: make what was trained visible now
                    if self.sync.due(self.pending.n < B and not self.fetcher.backlog() and self.fetcher.at_end,
                                     cfg.sync_ms):
                        self.sync.sync(wait=False)
                    if chunk is not None:
                        last_rec = time.monotonic()  # idle time counts from the end of its processing
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
                    self._rebuild(poll_records)
                    last_rec = time.monotonic()
                # idle counts from the last record or the last assignment; before the first assignment the
                # group join (about half the session timeout on Tansu, longer after a crash) is allowed too
                idle = now - max(last_rec, self._assigned_at)
                allowance = 0.0 if self._assigned else 2 * cfg.session_timeout_ms / 1000
                if cfg.idle_timeout and idle >= cfg.idle_timeout + allowance and not self.pending.n:
                    reason = "idle_timeout"
                    break
        finally:
            summary = self._finish(reason)
            for s, h in prev.items():
                signal.signal(s, h)
        return summary

    def _open_fetcher(self, poll_records: int):
        """The consumer (in a child process or on a prefetch thread); it joins the group."""
        cfg = self.cfg
        if cfg.in_child:
            return ProcessFetcher(cfg, poll_records, self.on_assign, self.on_revoke, log=self.say,
                                  decode=self.input.decode)
        return Fetcher(lambda: make_source(cfg, self.on_assign, self.on_revoke, poll_records, say=self.say),
                       cfg.prefetch, log=self.say, decode=self.input.decode)

    def _rebuild(self, poll_records: int) -> None:
        """``--on-ps-loss rebuild``: drop what is held and consumed, leave the group and join again, so every
        partition resumes from the PS offsets (the earliest where the PS has none) and the lost events are
        trained again."""
        lost = self.sync.lost
        self.rebuilds += 1
        self.say(f"the PS lost state ({lost}); rebuilding: replaying from the PS offsets (the earliest where none)")
        self.emit("rebuild", error=str(lost))
        self.fetcher.close()
        with self.lock:
            self.pending.clear()
            self.sync.reset()
            self.seqs.reset()
        # a Redis that lost everything lost the namespace's description and the score contract too: readers (the
        # recall service, dim=None) need both
        self._retry("writing the PS metadata", self.ps.write_meta)
        self._write_contract()
        self.fetcher = self._open_fetcher(poll_records)

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
        B, T = self.cfg.model.batch_size, self.cfg.test_log_steps
        k = min(self.pending.n // B, self.model.max_batches)
        if T:
            k = min(k, T - self.step % T)
        return k * B

    def _take(self, n: int) -> Chunk:
        if self.cfg.max_events:
            n = min(n, self.cfg.max_events - self.records)
        return self.pending.take(n)

    # ----------------------------------------------------------------------------- one batch
    def _tick(self, name: str, t: float) -> float:
        now = time.perf_counter()
        self.stage[name] = self.stage.get(name, 0.0) + now - t
        self.live.stage(name, now - t)
        return now

    def _process(self, batch: Chunk) -> None:
        t = time.perf_counter()
        if self._first_batch_t is None:
            self._first_batch_t = time.time()
        step = self.step
        self._process_batch(batch, t)
        self.live.handled(self.sync.offsets)  # this chunk's partitions' next offsets (and earlier ones since the sync)
        self._last_batch_t = time.time()
        T = self.cfg.test_log_steps
        if T and self.step > step and self.step % T == 0:
            self._test_and_checkpoint()

    def _process_batch(self, batch: Chunk, t: float) -> None:
        """One chunk of records (whole micro-batches, one partial at the end of the stream): decode, index,
        hold its rows (one pull of those not held), add its counters, then train its micro-batches in runs
        (one TF call each, :meth:`_run`)."""
        m = self.cfg.model
        parsed = batch.decoded.parsed() if batch.decoded is not None else self.input.parse(batch.values)
        if parsed.bad:
            self.poison.handle(batch, parsed.bad)
        # re-sent valid records already applied are not trained again; the offsets of the whole chunk move on
        seqs = valid_seqs(batch.seqs, parsed.valid_mask(len(batch)))
        parsed = parsed.taking(self.seqs.keep(batch.parts, seqs))
        t = self._tick("parse", t)
        if len(parsed) == 0:
            self._sync_due()
            self.sync.add_batch(batch.parts, batch.offsets, seqs)  # the offsets move with the next sync
            self.records += len(batch)
            return
        c = parsed.columns
        ci = index_chunk(c, m)
        # a single writer reads the rows it lacks before the previous window's write starts (a read queued
        # behind that transaction would wait for it); gradient pushes write first (their rows are re-read)
        slots = self.sync.hold(ci.wanted) if self.mode == "assign" else None
        if self.sync.background and self.sync.due(False, self.cfg.sync_ms):
            self._read_ahead()
        t = self._tick("pull", t)
        dropped = self._sync_due()  # its time counts as "push"
        t = time.perf_counter()
        if dropped or slots is None:
            slots = self.sync.hold(ci.wanted)
        self.sync.add_batch(batch.parts, batch.offsets, seqs)
        self.records += len(batch)
        self.sync.count(ci, slots)
        # each event's row slot per table, and the packed row views of this chunk
        ev = {"user": slots["user"][ci.uinv], "item": slots["item"][ci.iinv]}
        packed = {"user": self.sync.packed("user"), "item": self.sync.packed("item")}
        g = None
        if m.learn_mu:
            g, packed["global"] = int(slots["global"][0]), self.sync.packed("global")
        t = self._tick("pull", t)
        if self.probe is not None:
            self.probe.plan(c, ci, self.step, ev["item"])
        # one TF call per run of micro-batches; a run ends before a micro-batch the probe scores
        B = m.batch_size
        cuts = [s for s in range(B, ci.n, B) if self.probe is not None and self.probe.due(slice(s, s + B))]
        for lo, hi in zip([0, *cuts], [*cuts, ci.n]):
            t = self._run(c, ci, lo, hi, ev, packed, g, t)
        self.sync.add_events(c["raw_user_id"], c["raw_movie_id"], c["movie_id"], ci.labels, c["timestamp"],
                             batch.parts[parsed.valid], batch.offsets[parsed.valid])
        if self.probe is not None:
            self.probe.refresh()
        self._tick("prequential_hr", t)

    def _read_ahead(self) -> None:
        """Before a background write starts, pull the rows of the records already consumed (pending, plus up to
        READ_AHEAD_EVENTS the fetcher holds): a pull sent during the write would wait for its transaction.  Safe:
        in assign mode the learner is the rows' only writer, and a held row is written only once trained."""
        if self.fetcher is not None:
            self.pending.absorb(self.fetcher, READ_AHEAD_EVENTS)
        cols = self.pending.columns()
        if cols is not None and len(cols["label"]):
            self.sync.hold(index_chunk(cols, self.cfg.model).wanted)

    def _sync_due(self) -> bool:
        """Write the window if it is ``sync_ms`` old (or after every chunk with gradient pushes); returns
        whether that dropped the held rows."""
        if not self.sync.due(False, self.cfg.sync_ms):
            return False
        return self.sync.sync(wait=False)

    def _run(self, c, ci, lo: int, hi: int, ev: dict, packed: dict, g: int | None, t: float) -> float:
        """Chunk events ``lo:hi`` (whole micro-batches but the last): gather their rows, predict and step each
        micro-batch in one TF call, write the rows back, then log each micro-batch."""
        cfg, m = self.cfg, self.cfg.model
        B, d = m.batch_size, m.dim
        r = run_index({table: at[lo:hi] for table, at in ev.items()}, ci.target[lo:hi], B)
        state, mu = gather_run(r, packed, g, d)
        t = self._tick("pull", t)
        if self.probe is not None and self.probe.due(slice(lo, hi)):
            self.probe.score(slice(lo, min(lo + B, hi)), state["user"][r.rows[0, 0]], mu[0], r.index[0])
        t = self._tick("prequential_hr", t)
        pred, losses, *rows, mu = self.model.run(state["user"], state["item"], mu, r.rows, r.index, r.target)
        t = self._tick("step", t)
        scatter_run(r, packed, g, d, rows, mu)
        if self.probe is not None:
            self.probe.trained(r.held["item"], slice(lo, hi))
        # the run's micro-batches in stretches that end where a train log is due (one add per stretch)
        y, p, k = ci.labels[lo:hi], pred.reshape(-1)[: hi - lo], len(pred)
        L = cfg.train_log_steps
        j = 0
        while j < k:
            e = min(k, j + L - self.step % L)
            a, b = j * B, min(e * B, hi - lo)
            self.window.add(y[a:b], p[a:b], float(losses[j:e].sum()))
            self.stream_auc.add(y[a:b], p[a:b])
            self.events += b - a
            self.step += e - j
            if self.step % L == 0:
                self._log_train()
            j = e
        return self._tick("metrics", t)

    # ----------------------------------------------------------------------------- logs, eval, end
    def _log_train(self) -> None:
        w = self.window
        if not w.n:
            return
        rate = self.live.rate() or 0.0  # over active time: waits for records do not count
        hr, hr_n = self.probe.rate(wait=False) if self.probe is not None else (None, 0)
        self.say(f"step {self.step} events {self.events}: train {w.calc_str()}"
                 + (f" preq_hr@{self.cfg.hr_k}={hr:.4f} (n={hr_n})" if hr is not None else "")
                 + f" {rate:,.0f} ev/s")
        self.emit("train", auc=None if w.one_class else round(w.cal(), 6), loss=round(w.loss(), 6),
                  loss_type=self.cfg.model.loss, window=w.n,
                  positives=w.positives, negatives=w.negatives, **{f"preq_hr_at_{self.cfg.hr_k}": hr},
                  hr_samples=hr_n, events_per_s=round(rate, 1), poison=self.poison.count)
        w.reset()

    def _test_and_checkpoint(self) -> dict:
        self.sync.sync()  # the evaluation and the checkpoint read the PS
        res = {}
        if self.test is not None:
            t = time.time()
            r, _ = self._retry("test evaluation", evaluate, self.ps, self.activity, self.cfg.model, self.test)
            res = r.metrics
            self.say("test " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items())
                     + f" ({time.time() - t:.1f}s)")
            self.emit("test", **res)
        if self.cfg.checkpoint_dir:
            d = Path(self.cfg.checkpoint_dir)
            d.mkdir(parents=True, exist_ok=True)
            path, _ = self._retry("checkpoint", self.ps.save, d / f"{self.cfg.namespace}-step{self.step:08d}.npz")
            for old in sorted(d.glob(f"{self.cfg.namespace}-step*.npz"))[:-2]:
                old.unlink()
            self.emit("checkpoint", path=str(path))
        return res

    def _finish(self, reason: str) -> dict:
        with self.lock:
            if self.window.n:
                self._log_train()
            self.sync.close()
        if self.fetcher is not None:
            self._closing = True
            self.fetcher.close()
        lost = self.sync.lost
        if lost is not None:  # nothing was written or committed after the loss: no evaluation, no checkpoint
            self.say(f"error: {lost}. The PS lost events this learner had written (a Redis restart without "
                     "persistence, a flush, an older snapshot); nothing more was written or committed. Restarting "
                     "the learner resumes from the PS offsets (partitions without any replay from the earliest); "
                     "--on-ps-loss rebuild does that without stopping.")
        test = self._test_and_checkpoint() if (self.step or self.test is not None) and lost is None else {}
        self.poison.close()
        if self.probe is not None:
            self.probe.close()
        secs = time.time() - self.t0
        hr, hr_n = self.probe.rate() if self.probe is not None else (None, 0)
        span = (self._last_batch_t - self._first_batch_t) if self._first_batch_t else 0.0
        summary = self.emit("end", reason=reason, seconds=round(secs, 3), prequential_auc=self.stream_auc.cal(),
                            stream_seconds=round(span, 3), stream_start=self._first_batch_t,
                            stream_end=self._last_batch_t if self._first_batch_t else None,
                            stream_events_per_s=round(self.events / span, 1) if span > 0 else None,
                            stage_seconds={k: round(v, 3) for k, v in self.stage.items()},
                            **{f"prequential_hr_at_{self.cfg.hr_k}": hr}, hr_samples=hr_n,
                            poison=self.poison.count, poison_by_reason=dict(self.poison.by_reason),
                            skipped_pushes=self.sync.skipped, rebuilds=self.rebuilds, duplicates=self.seqs.duplicates,
                            ps_state_lost=None if lost is None else str(lost), **test)
        active, mean = self.live.tracker.active_s, self.live.mean_rate()
        self.say(f"done ({reason}): {self.events} events in {secs:.1f}s ({active:.1f} s active"
                 + (f", {mean:,.0f} ev/s" if mean else "") + f"), prequential AUC "
                 f"{summary['prequential_auc']:.4f}, poison {self.poison.count}, skipped pushes {self.sync.skipped}"
                 f", duplicates {self.seqs.duplicates}")
        self.live.close()
        self._metrics.close()
        return summary
