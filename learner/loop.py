"""The streaming loop: consume → pull → predict → step → push (fenced) → activity log → commit.

The only module doing Redis I/O, and (through :mod:`learner.kafka_io`) Kafka I/O.

Exactly-once: every push carries ``Fence(group, topic, {partition: next offset})`` of the records
it covers, and the PS stores those offsets in the same atomic step.  When partitions are assigned
the consumer seeks to the PS-stored offsets, so a learner killed at any point (SIGKILL) resumes
exactly after the last applied batch; a replayed push whose fence is already covered is skipped.
Kafka commits follow each push (the PS offsets remain the source of truth).  On revocation the
in-flight batch is finished and everything consumed but not pushed is dropped (the new owner
resumes from the PS offsets).  SIGTERM finishes the batch, pushes, commits, evaluates, checkpoints
and exits 0.  Redis errors are retried with capped exponential backoff; nothing is committed that
was not applied.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from learner.config import LearnerConfig
from learner.evaluate import ItemMirror, evaluate, ppop_ids
from learner.input import InputFn, shard_paths
from learner.kafka_io import Chunk, DeadLetters, Fetcher, make_source
from learner.metrics import AUCUtils, top_k
from learner.model import MFModel, index_batch, make_input, recall_scores

HR_EVERY = 10  # prequential HR@k is sampled on every 10th batch


def _tf_threads(n: int) -> None:
    """Run TF ops on ``n`` threads (0 = TF's default, one per core).  The step's ops are tiny; on a small
    machine TF's spinning thread pools only take cores from Redis, the broker and the consumer thread."""
    import tensorflow as tf

    if n > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:  # already initialized in this process (tests run several learners)
            pass


class Learner:
    """One learner process of the consumer group (see the module docstring)."""

    def __init__(self, cfg: LearnerConfig, ps=None, log=None):
        from ps_redis import ParameterServer
        from ps_redis.activity import ActivityLog

        self.cfg = cfg
        m = cfg.model
        self.ps = ps or ParameterServer.get(cfg.redis_url, cfg.namespace, m.dim, init_scale=m.init_std, seed=m.seed)
        self.activity = log or ActivityLog(self.ps)
        _tf_threads(int(os.environ.get("LFM_TF_THREADS", "1")))
        self.model = MFModel(m, jit=cfg.xla)
        # the prefetch / activity threads hold the GIL in pure-Python stretches; a short switch interval keeps
        # the main thread's many short GIL re-acquisitions (tensor conversions around the TF step) from
        # waiting the default 5 ms each
        sys.setswitchinterval(float(os.environ.get("LFM_SWITCH_INTERVAL", "0.0002")))
        self.input = InputFn()
        self.mode = "gradient" if cfg.gradient_push else "assign"
        self.lock = threading.RLock()
        self.pending: list[Chunk] = []
        self.pending_n = 0
        self.window = AUCUtils()
        self.all_labels: list[np.ndarray] = []
        self.all_preds: list[np.ndarray] = []
        self.step = 0
        self.events = 0  # valid events trained
        self.records = 0  # stream records consumed and handled (valid + poison)
        self.poison = 0
        self.skipped = 0
        self.hr_hits = 0
        self.hr_n = 0
        self.ret_loss = 0.0
        self.user_period: dict[int, int] = {}
        self.mirror = ItemMirror(m.dim) if cfg.hr_sample > 0 else None
        self._pop: dict[int, np.ndarray] = {}  # local positive counts per period (prequential HR prior)
        self._pop_total = np.zeros(0)
        self._rng = np.random.default_rng(m.seed)
        self._stop = False
        self._metrics = open(cfg.metrics_path, "a") if cfg.metrics_path else None
        self.dlq = DeadLetters(cfg.bootstrap, cfg.dlq_topic) if cfg.dlq else None
        self.test = None
        if cfg.data_dir:
            self.test = self.input.read_all(shard_paths(cfg.data_dir, "test"))
        self.t0 = time.time()
        self.fetcher: Fetcher | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lfm-activity")
        self._activity_job = None
        self.stage: dict[str, float] = {}  # cumulative seconds per stage of _process
        self._first_batch_t: float | None = None
        self._last_batch_t = 0.0
        self._assigned_at = 0.0
        self._assigned: list[int] = []

    # ----------------------------------------------------------------------------- logging
    def say(self, text: str) -> None:
        print(f"[learner {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def emit(self, event: str, **fields) -> dict:
        rec = {"event": event, "step": self.step, "events": self.events, "records": self.records,
               "time": round(time.time(), 3), "elapsed": round(time.time() - self.t0, 3), **fields}
        if self._metrics:
            self._metrics.write(json.dumps(rec) + "\n")
            self._metrics.flush()
        return rec

    # ----------------------------------------------------------------------------- I/O edge
    def _retry(self, what: str, fn, *args, **kwargs):
        """Call ``fn`` until it succeeds, backing off on Redis errors (returns (result, attempts))."""
        from ps_redis import PSConnectionError
        import redis

        delay, attempt = 0.1, 0
        while True:
            try:
                return fn(*args, **kwargs), attempt
            except (PSConnectionError, redis.ConnectionError, redis.TimeoutError) as exc:
                attempt += 1
                self.say(f"{what} failed ({type(exc).__name__}: {exc}); retry {attempt} in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max_s)

    def on_assign(self, partitions: list[int]) -> dict[int, int]:
        stored, _ = self._retry("reading PS offsets", self.ps.offsets, self.cfg.group, self.cfg.topic)
        seek = {p: stored[p] for p in partitions if p in stored}
        self._assigned_at = time.monotonic()
        self._assigned = list(partitions)
        self.say(f"assigned partitions {partitions}; resuming from PS offsets {seek or '(none: committed/earliest)'}")
        self.emit("assign", partitions=partitions, resume=seek)
        return seek

    def on_revoke(self, partitions: list[int]) -> None:
        with self.lock:  # waits for the in-flight batch to be pushed
            if self.fetcher is not None:
                self.fetcher.generation += 1
                self.fetcher.drain()
            self.pending, self.pending_n = [], 0
            self._assigned_at, self._assigned = time.monotonic(), []
        self.say(f"partitions {partitions} revoked; unpushed records dropped (the next owner resumes from the PS)")

    # ----------------------------------------------------------------------------- main loop
    def run(self) -> dict:
        """Consume until max_events, idle_timeout or SIGTERM; returns the final summary."""
        cfg = self.cfg
        B = cfg.model.batch_size
        prev = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        self.fetcher = Fetcher(lambda: make_source(cfg, self.on_assign, self.on_revoke, max(4 * B, 10000)),
                               cfg.prefetch, log=self.say)
        self.say(f"consuming {cfg.topic!r} as group {cfg.group!r} ({cfg.backend}, {self.mode} pushes, "
                 f"batch {B}, dim {cfg.model.dim})")
        last_rec = time.monotonic()
        flush_s = cfg.flush_ms / 1000.0
        reason = "stopped"
        try:
            while True:
                t = time.perf_counter()
                chunk = self.fetcher.get(timeout=min(0.1, flush_s) if flush_s > 0 else 0.1)
                if self._first_batch_t is not None and chunk is not None:
                    self._tick("wait_consume", t)
                now = time.monotonic()
                with self.lock:
                    if chunk is not None and chunk.gen == self.fetcher.generation:
                        self.pending.append(chunk)
                        self.pending_n += len(chunk)
                        last_rec = now
                    while self.pending_n >= B and not self._limit_reached() and not self._stop:
                        self._process(self._take(B))
                    idle = now - last_rec
                    if self.pending_n and idle >= flush_s and not self._limit_reached() and not self._stop:
                        self._process(self._take(self.pending_n))
                    if chunk is not None:
                        last_rec = time.monotonic()  # idle time counts from the end of its processing
                if self._limit_reached():
                    reason = "max_events"
                    break
                if self._stop:
                    reason = "signal"
                    break
                # idle counts from the last record or the last assignment; before the first assignment the
                # group join (about half the session timeout on Tansu, longer after a crash) is allowed too
                idle = now - max(last_rec, self._assigned_at)
                allowance = 0.0 if self._assigned else 2 * cfg.session_timeout_ms / 1000
                if cfg.idle_timeout and idle >= cfg.idle_timeout + allowance and not self.pending_n:
                    reason = "idle_timeout"
                    break
        finally:
            summary = self._finish(reason)
            for s, h in prev.items():
                signal.signal(s, h)
        return summary

    def _on_signal(self, signum, frame) -> None:
        self.say(f"signal {signum}: finishing the batch, then push, commit, checkpoint, exit")
        self._stop = True

    def _limit_reached(self) -> bool:
        return bool(self.cfg.max_events) and self.records >= self.cfg.max_events

    def _take(self, n: int) -> Chunk:
        if self.cfg.max_events:
            n = min(n, self.cfg.max_events - self.records)
        parts, offs, vals, keys, got = [], [], [], [], 0
        while got < n:
            c = self.pending[0]
            k = min(len(c) - 0, n - got)
            parts.append(c.parts[:k])
            offs.append(c.offsets[:k])
            vals.extend(c.values[:k])
            keys.extend(c.keys[:k] if c.keys else [None] * k)
            got += k
            if k == len(c):
                self.pending.pop(0)
            else:
                self.pending[0] = Chunk(c.parts[k:], c.offsets[k:], c.values[k:], c.keys[k:] if c.keys else [], c.gen)
        self.pending_n -= got
        return Chunk(np.concatenate(parts), np.concatenate(offs), vals, keys)

    # ----------------------------------------------------------------------------- one batch
    def _tick(self, name: str, t: float) -> float:
        now = time.perf_counter()
        self.stage[name] = self.stage.get(name, 0.0) + now - t
        return now

    def _process(self, batch: Chunk) -> None:
        t = time.perf_counter()
        if self._first_batch_t is None:
            self._first_batch_t = time.time()
        self._process_batch(batch, t)
        self._last_batch_t = time.time()

    def _process_batch(self, batch: Chunk, t: float) -> None:
        cfg, m = self.cfg, self.cfg.model
        fence_offsets = {int(p): int(batch.offsets[batch.parts == p].max()) + 1 for p in np.unique(batch.parts)}
        parsed = self.input.parse(batch.values)
        if parsed.bad:
            self._dead_letters(batch, parsed.bad)
        t = self._tick("parse", t)
        self.records += len(batch)
        from ps_redis import Fence, Update

        fence = Fence(cfg.group, cfg.topic, fence_offsets)
        if len(parsed) == 0:
            self._retry("fenced push", self.ps.push, {}, mode=self.mode, fence=fence)
            self.fetcher.commit(fence_offsets)
            return
        c = parsed.columns
        n = len(parsed)
        y = c["label"].astype(np.float32)
        uu, uinv, ucnt = index_batch(c["user_id"], m.batch_size)
        ii, iinv, icnt = index_batch(c["movie_id"], m.batch_size)
        raw_u = np.empty(len(uu), np.int64)
        raw_u[uinv[:n]] = c["raw_user_id"]
        raw_i = np.empty(len(ii), np.int64)
        raw_i[iinv[:n]] = c["raw_movie_id"]
        kk, kinv, kcnt = np.zeros(1, np.int64), np.zeros(m.batch_size, np.int32), np.zeros(1, np.int64)
        kpop = c["timestamp"] // m.pop_seconds if m.pop_seconds else None
        # every row this batch reads or writes, in one round trip: the push then finds them all in the PS's
        # row cache and is one MSET (see ps_redis.fastpath)
        req = {"user": (uu, raw_u), "item": (ii, raw_i)}
        if m.period_days > 0:
            k = (c["timestamp"] // int(m.period_seconds)).astype(np.int64)
            kk, kinv, kcnt = index_batch(k, m.batch_size)
            req["period"] = kk
            last = np.zeros(len(uu), np.int64)
            np.maximum.at(last, uinv[:n], k)
            self.user_period.update(zip(uu.tolist(), last.tolist()))
        if m.learn_mu:
            req["global"] = np.zeros(1, np.int64)
        pid = pcnt = None
        if kpop is not None:
            pos = y > 0.5
            if pos.any():
                pid, pcnt = np.unique(ppop_ids(kpop[pos], c["raw_movie_id"][pos]), return_counts=True)
                req["ppop"] = pid
            req["user_ctx"] = uu
        # assign mode: one writer per row, so new rows are written by this batch's push (no create round trip)
        pulled, _ = self._retry("pull", self.ps.pull_many, req, defer_create=self.mode == "assign")
        urows, irows, prow = pulled["user"], pulled["item"], pulled.get("period")
        stored_ivec = irows.vec
        if m.item_scale != 1.0:
            fresh = irows.count == 0
            if fresh.any():
                irows.vec = irows.vec.copy()
                irows.vec[fresh] *= m.item_scale
        mu = mu_acc = 0.0
        if m.learn_mu:
            mu, mu_acc = float(pulled["global"].bias[0]), float(pulled["global"].accum[0, -1])
        t = self._tick("pull", t)
        if self.mirror is not None and self.step % HR_EVERY == 0:
            self._prequential_hr(c, y, urows, uinv[:n], prow, kinv[:n], kpop)
        t = self._tick("prequential_hr", t)
        x = make_input(m, user_rows=urows, item_rows=irows, period_rows=prow, mu=mu, mu_acc=mu_acc,
                       uinv=uinv[:n], iinv=iinv[:n], kinv=kinv[:n], label=y)
        out = self.model.step(x)
        t = self._tick("step", t)
        nu, ni, nk = len(uu), len(ii), len(kk)
        grad = self.mode == "gradient"
        sgd = m.optimizer == "sgd"

        def update(ids, rows, stored_vec, vec, bias, acc, count, with_bias=True):
            if grad:
                return Update(ids, vec=(stored_vec - vec).astype(np.float32),
                              bias=(rows.bias - bias).astype(np.float32) if with_bias else None,
                              accum=None if sgd else (acc - rows.accum).astype(np.float32), count=count)
            return Update(ids, vec=vec, bias=bias if with_bias else None, accum=None if sgd else acc, count=count)

        ups = {
            "user": update(uu, urows, urows.vec, out.user_vec[:nu], out.user_bias[:nu], out.user_acc[:nu], ucnt, m.use_bias),
            "item": update(ii, irows, stored_ivec, out.item_vec[:ni], out.item_bias[:ni], out.item_acc[:ni], icnt, m.use_bias),
        }
        if prow is not None:
            ups["period"] = update(kk, prow, prow.vec, out.period_vec[:nk], prow.bias, out.period_acc[:nk], kcnt, False)
        if m.learn_mu:
            acc = np.zeros((1, m.dim + 1), np.float32)
            acc0 = acc.copy()
            acc[0, -1], acc0[0, -1] = out.mu_acc[0], mu_acc
            g = np.zeros(1, np.int64)
            if grad:
                ups["global"] = Update(g, bias=np.float32([mu - out.mu[0]]),
                                       accum=None if sgd else acc - acc0, count=np.int64([n]))
            else:
                ups["global"] = Update(g, bias=out.mu.astype(np.float32), accum=None if sgd else acc,
                                       count=np.int64([n]))
        if kpop is not None:
            self._pop_updates(ups, pid, pcnt, kpop, uu, uinv[:n], ucnt, pulled["user_ctx"], grad)
        applied, attempts = self._retry("fenced push", self.ps.push, ups, mode=self.mode, fence=fence)
        applied = applied or attempts > 0  # an earlier attempt may have landed before its reply was lost
        t = self._tick("push", t)
        if applied:  # recorded on a background thread (one call in flight), overlapping the next batch
            self._wait_activity()
            self._activity_job = self._pool.submit(
                self._retry, "activity log", self.activity.record, uu[uinv[:n]], c["raw_user_id"],
                c["raw_movie_id"], c["movie_id"], y, c["timestamp"])
        else:
            self.skipped += 1
            self.say(f"fenced push for {fence_offsets} skipped: the PS already holds it")
        t = self._tick("activity", t)
        self.fetcher.commit(fence_offsets)
        if self.mirror is not None:
            self.mirror.update(ii, raw_i, out.item_vec[:ni], out.item_bias[:ni])
            if kpop is not None:
                pos = y > 0.5
                cols = self.mirror.columns(c["movie_id"][pos])
                size = len(self.mirror.ids)
                if len(self._pop_total) < size:
                    self._pop_total = np.r_[self._pop_total, np.zeros(size - len(self._pop_total))]
                np.add.at(self._pop_total, cols, 1.0)
                kp = kpop[pos]
                for k in np.unique(kp).tolist():
                    row = self._pop.get(k)
                    if row is None or len(row) < size:
                        grown = np.zeros(size)
                        if row is not None:
                            grown[: len(row)] = row
                        row = self._pop[k] = grown
                    np.add.at(row, cols[kp == k], 1.0)
        pred = out.pred[:n]
        self.window.add(y, pred, out.loss_sum)
        self.all_labels.append(y)
        self.all_preds.append(pred.astype(np.float32))
        self.ret_loss += out.ret_loss
        self.events += n
        self.step += 1
        if self.step % cfg.train_log_steps == 0:
            self._log_train()
        t = self._tick("metrics", t)
        if cfg.test_log_steps and self.step % cfg.test_log_steps == 0:
            self._test_and_checkpoint()

    def _wait_activity(self) -> None:
        if self._activity_job is not None:
            self._activity_job.result()
            self._activity_job = None

    def _pop_updates(self, ups: dict, pid, pcnt, kpop, uu, uinv, ucnt, ctx_rows, grad: bool) -> None:
        """Positive counts per (period, movie) into ``ppop``; each user's last period into ``user_ctx``."""
        from ps_redis import Update

        if pid is not None:
            ups["ppop"] = Update(pid, count=pcnt.astype(np.int64))
        last = np.full(len(uu), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(last, uinv, kpop)
        new = last.astype(np.float32)
        if grad:  # gradient mode subtracts: send old − new (a user lives on one partition, one writer)
            new = (ctx_rows.bias - new).astype(np.float32)
        ups["user_ctx"] = Update(uu, bias=new, count=ucnt.astype(np.int64))

    def _tau(self, k: int, n: int) -> np.ndarray:
        """The local time-aware popularity prior of period ``k`` over the first ``n`` mirror items."""
        m = self.cfg.model
        window = np.zeros(n)
        for kk in range(k - m.pop_window, k + m.pop_window + 1):
            row = self._pop.get(kk)
            if row is not None:
                r = row[:n]
                window[: len(r)] += r
        total = np.zeros(n)
        t = self._pop_total[:n]
        total[: len(t)] = t
        return np.log(m.pop_smooth + window + m.pop_total_w * total)

    def _prequential_hr(self, c, y, urows, uinv, prow, kinv, kpop) -> None:
        """Before the update: is each sampled positive's movie in its user's current top k?"""
        # every HR_EVERY-th batch, HR_EVERY times the sampling rate: same expected sample, less overhead
        rate = min(1.0, self.cfg.hr_sample * HR_EVERY)
        pos = np.flatnonzero((y > 0.5) & (self._rng.random(len(y)) < rate))
        if not len(pos) or self.mirror.n == 0:
            return
        m = self.cfg.model
        q = urows.vec[uinv[pos]].astype(np.float32)
        if prow is not None:
            q = q + prow.vec[kinv[pos]]
        n = self.mirror.n
        scores = recall_scores(m, q, self.mirror.vec[:n], self.mirror.bias[:n]).astype(np.float64)
        if kpop is not None and m.pop_weight > 0:
            taus = {}
            for r, e in enumerate(pos):
                k = int(kpop[e])
                if k not in taus:
                    taus[k] = self._tau(k, n)
                scores[r] += m.pop_weight * taus[k]
        seen_sets, _ = self._retry("activity seen", self.activity.seen_many, c["raw_user_id"][pos].tolist())
        for r, seen in enumerate(seen_sets):
            scores[r, self.mirror.raw_columns(seen)] = -np.inf
        target = self.mirror.columns(c["movie_id"][pos])
        top = top_k(scores, self.cfg.hr_k)
        hit = (top == target[:, None]).any(1) & (target >= 0)
        self.hr_hits += int(hit.sum())
        self.hr_n += len(pos)

    def _dead_letters(self, batch: Chunk, bad: list[tuple[int, str]]) -> None:
        for idx, reason in bad:
            p, o = int(batch.parts[idx]), int(batch.offsets[idx])
            self.poison += 1
            self.say(f"poison record at {self.cfg.topic}[{p}]@{o}: {reason}")
            self.emit("poison", partition=p, offset=o, reason=reason)
            if self.dlq is not None:
                key = batch.keys[idx] if batch.keys else None
                self._retry_kafka("dead-letter send", self.dlq.send, batch.values[idx], key, self.cfg.topic, p, o, reason)
        if self.dlq is not None:  # dead letters are durable before the batch's offsets can be committed
            self._retry_kafka("dead-letter flush", self.dlq.flush)

    def _retry_kafka(self, what: str, fn, *args) -> None:
        delay = 0.1
        while True:
            try:
                fn(*args)
                return
            except Exception as exc:
                self.say(f"{what} failed ({type(exc).__name__}: {exc}); retrying in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max_s)

    # ----------------------------------------------------------------------------- logs, eval, end
    def prequential_auc(self) -> float:
        from learner.metrics import auc_exact

        if not self.all_labels:
            return 0.5
        self.all_labels = [np.concatenate(self.all_labels)]
        self.all_preds = [np.concatenate(self.all_preds)]
        return auc_exact(self.all_labels[0], self.all_preds[0])

    def _log_train(self) -> None:
        w = self.window
        if not w.n:
            return
        rate = self.events / max(time.time() - self.t0, 1e-9)
        hr = self.hr_hits / self.hr_n if self.hr_n else None
        self.say(f"step {self.step} events {self.events}: train {w.calc_str()}"
                 + (f" preq_hr@{self.cfg.hr_k}={hr:.4f} (n={self.hr_n})" if hr is not None else "")
                 + f" {rate:,.0f} ev/s")
        self.emit("train", auc=None if w.one_class else round(w.cal(), 6), loss=round(w.loss(), 6), window=w.n,
                  positives=w.positives, negatives=w.negatives, **{f"preq_hr_at_{self.cfg.hr_k}": hr},
                  hr_samples=self.hr_n, events_per_s=round(rate, 1), poison=self.poison)
        w.reset()

    def _test_and_checkpoint(self) -> dict:
        self._wait_activity()
        res = {}
        if self.test is not None:
            t = time.time()
            r, _ = self._retry("test evaluation", evaluate, self.ps, self.activity, self.cfg.model, self.test,
                               user_period=self.user_period or None)
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
        if self.fetcher is not None:
            self.fetcher.close()
        self._wait_activity()
        self._pool.shutdown()
        test = self._test_and_checkpoint() if self.step or self.test is not None else {}
        if self.dlq is not None:
            self.dlq.close()
        secs = time.time() - self.t0
        hr = self.hr_hits / self.hr_n if self.hr_n else None
        span = (self._last_batch_t - self._first_batch_t) if self._first_batch_t else 0.0
        summary = self.emit("end", reason=reason, seconds=round(secs, 3), prequential_auc=self.prequential_auc(),
                            stream_seconds=round(span, 3),
                            stream_events_per_s=round(self.events / span, 1) if span > 0 else None,
                            stage_seconds={k: round(v, 3) for k, v in self.stage.items()},
                            **{f"prequential_hr_at_{self.cfg.hr_k}": hr}, hr_samples=self.hr_n,
                            poison=self.poison, skipped_pushes=self.skipped, **test)
        self.say(f"done ({reason}): {self.events} events in {secs:.1f}s, prequential AUC "
                 f"{summary['prequential_auc']:.4f}, poison {self.poison}, skipped pushes {self.skipped}")
        if self._metrics:
            self._metrics.close()
        return summary
