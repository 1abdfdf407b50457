"""What the learner reports: human-readable lines on stderr and one JSON object per log event in the metrics file
(``--metrics``; read back by :mod:`learner.plot`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable


_line_writer: Callable[[str], bool] | None = None


def set_line_writer(writer: Callable[[str], bool] | None) -> None:
    """Route :func:`say`'s lines through ``writer`` (e.g. a progress bar's ``message``, which prints a line above
    the bar; it returns False when it printed nothing), or back to plain stderr with None."""
    global _line_writer
    _line_writer = writer


def say(text: str) -> None:
    """One timestamped line on stderr (above the progress bar when there is one)."""
    line = f"[learner {time.strftime('%H:%M:%S')}] {text}"
    writer = _line_writer
    if writer is None or not writer(line):
        print(line, file=sys.stderr, flush=True)


def open_metrics(path):
    """Open the metrics file for appending; a last record torn by a killed learner ends its own line first."""
    path = Path(path)
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    f = open(path, "a")
    if torn:
        f.write("\n")
    return f


class MetricsFile:
    """The JSON-lines metrics file (or nothing when ``path`` is None): one flushed line per record."""

    def __init__(self, path) -> None:
        self._f = open_metrics(path) if path else None

    def write(self, rec: dict) -> None:
        """Append one record (a JSON object on its own line) and flush it."""
        if self._f:
            self._f.write(json.dumps(rec) + "\n")
            self._f.flush()

    def close(self) -> None:
        """Close the file."""
        if self._f:
            self._f.close()
            self._f = None


class Reporter:
    """The evaluate/report stage of one learner: the log lines and metrics records, the train log lines, the test
    evaluation against the PS and the checkpoints.

    Args:
        cfg: the learner's configuration (metrics path, test data, checkpoint directory, log steps).
        ps: the parameter server; ``activity``: its activity log (what each user rated, for the test HR).
        live: the learner's :class:`learner.live.Live` (progress, Prometheus metrics, dashboard records).
        retry: the learner's Redis retry (``retry(what, fn, *args)`` → (result, failed attempts)).
        position: the learner's counters now (``step``, ``events``, ``records``), stamped on every record.
    """

    def __init__(self, cfg, ps, activity, live, retry, position: Callable[[], dict]):
        from learner.input import InputFn, shard_paths

        self.cfg, self.ps, self.activity, self.live = cfg, ps, activity, live
        self._retry, self._position = retry, position
        self._metrics = MetricsFile(cfg.metrics_path)
        self.started = time.time()
        self.test = InputFn(cfg.limits).read_all(shard_paths(cfg.data_dir, "test")) if cfg.data_dir else None

    def say(self, text: str) -> None:
        say(text)

    def emit(self, event: str, **fields) -> dict:
        """Write one metrics record (``event``, the counters, the time, ``fields``) and hand it to ``live``."""
        now = time.time()
        rec = {"event": event, **self._position(), "time": round(now, 3), "elapsed": round(now - self.started, 3),
               **fields}
        self._metrics.write(rec)
        self.live.record(rec)
        return rec

    def train_line(self, window, probe, poison: int) -> None:
        """The train log line and record of the window's prequential AUC and loss; resets the window."""
        if not window.n:
            return
        cfg = self.cfg
        rate = self.live.rate() or 0.0  # over active time: waits for records do not count
        hr, hr_n = probe.rate(wait=False) if probe is not None else (None, 0)
        position = self._position()
        self.say(f"step {position['step']} events {position['events']}: train {window.calc_str()}"
                 + (f" preq_hr@{cfg.hr_k}={hr:.4f} (n={hr_n})" if hr is not None else "")
                 + f" {rate:,.0f} ev/s")
        self.emit("train", auc=None if window.one_class else round(window.cal(), 6), loss=round(window.loss(), 6),
                  loss_type=cfg.model.loss, window=window.n,
                  positives=window.positives, negatives=window.negatives, **{f"preq_hr_at_{cfg.hr_k}": hr},
                  hr_samples=hr_n, events_per_s=round(rate, 1), poison=poison)
        window.reset()

    def test_and_checkpoint(self, step: int) -> dict:
        """Evaluate the PS on the test set (when there is one) and save a checkpoint (with ``--checkpoint-dir``,
        keeping the last two); returns the test metrics.  The caller syncs first: both read the PS."""
        from learner.evaluate import evaluate

        cfg = self.cfg
        metrics = {}
        if self.test is not None:
            started = time.time()
            result, _ = self._retry("test evaluation", evaluate, self.ps, self.activity, cfg.model, self.test)
            metrics = result.metrics
            self.say("test " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in metrics.items()) + f" ({time.time() - started:.1f}s)")
            self.emit("test", **metrics)
        if cfg.checkpoint_dir:
            directory = Path(cfg.checkpoint_dir)
            directory.mkdir(parents=True, exist_ok=True)
            path, _ = self._retry("checkpoint", self.ps.save, directory / f"{cfg.namespace}-step{step:08d}.npz")
            for old in sorted(directory.glob(f"{cfg.namespace}-step*.npz"))[:-2]:
                old.unlink()
            self.emit("checkpoint", path=str(path))
        return metrics

    def close(self) -> None:
        """Close the metrics file."""
        self._metrics.close()
