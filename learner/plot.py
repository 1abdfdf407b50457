"""``python -m learner.plot METRICS... -o auc.png``: AUC and loss against events from learner metrics files.

One panel of AUC (prequential on the train window; test AUC on all test rows and on warm rows) and one panel
per loss type (logloss and MSE never share an axis), all against the number of events, so runs with
different micro-batch sizes line up.  Every logged point has a marker (a run with two log points still shows
two points); test points are filled circles drawn above hollow warm squares, so equal values stay visible.
Several files draw several runs (e.g. the defaults and ``--preset seed``), one colour per run.  Draws
with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lfm_stream.version import add_version_flag

#: Panel title of each loss type a learner reports (``loss_type`` of a train record).
LOSS_LABELS = {"logloss": "logloss per event (window)", "mse": "MSE per event (window)"}
UNKNOWN_LOSS = "loss per event (window; loss type not recorded)"


def load(path: str | Path) -> list[dict]:
    """The JSON objects of a metrics file.  A line that is not JSON (a record torn when a learner was killed
    mid-write) is skipped with a warning naming file and line; a file with no JSON line at all is an error."""
    out, torn = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                torn.append(f"{path}:{n}: not a JSON object ({exc.msg})")
    if torn and not out:
        raise ValueError(torn[0])
    for msg in torn:
        print(f"learner.plot: skipped {msg}", file=sys.stderr)
    return out


@dataclass
class Run:
    """The series of one metrics file, each a list of ``(events, value)`` points."""

    name: str
    prequential_auc: list[tuple[int, float]] = field(default_factory=list)
    test_auc: list[tuple[int, float]] = field(default_factory=list)
    warm_auc: list[tuple[int, float]] = field(default_factory=list)
    loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # panel label -> points


def series(name: str, records: list[dict]) -> Run:
    """The points of one run: train records give prequential AUC and loss, test records the test AUCs.

    The ``end`` record repeats the last test evaluation; it adds a point only when no test record has its
    event count (metrics files of older learners)."""
    run = Run(name)
    tested: set[int] = set()
    for rec in records:
        kind, events = rec.get("event"), rec.get("events")
        if events is None:
            continue
        if kind == "train":
            if rec.get("auc") is not None:
                run.prequential_auc.append((events, rec["auc"]))
            if rec.get("loss") is not None:
                label = LOSS_LABELS.get(rec.get("loss_type"), UNKNOWN_LOSS)
                run.loss.setdefault(label, []).append((events, rec["loss"]))
        elif kind in ("test", "end") and rec.get("test_auc") is not None:
            if kind == "end" and events in tested:
                continue
            tested.add(events)
            run.test_auc.append((events, rec["test_auc"]))
            if rec.get("warm_auc") is not None:
                run.warm_auc.append((events, rec["warm_auc"]))
    return run


def _xy(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def figure(runs: list[Run], title: str | None = None):
    """The matplotlib figure of ``runs``: the AUC panel first, then one panel per loss type.

    A plain :class:`matplotlib.figure.Figure` (no pyplot): no GUI backend, nothing to close."""
    from matplotlib.figure import Figure

    loss_panels = list(dict.fromkeys(label for run in runs for label in run.loss))  # in order of appearance
    fig = Figure(figsize=(9, 3.2 + 2.6 * len(loss_panels)), layout="constrained")
    axes = fig.subplots(1 + len(loss_panels), 1, sharex=True, squeeze=False)
    ax_auc, ax_loss = axes[0, 0], {label: axes[i + 1, 0] for i, label in enumerate(loss_panels)}
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        if run.prequential_auc:
            ax_auc.plot(*_xy(run.prequential_auc), "-", marker=".", ms=5, color=color, alpha=0.8,
                        label=f"{run.name}: prequential AUC")
        if run.warm_auc:
            ax_auc.plot(*_xy(run.warm_auc), ":", marker="s", ms=10, mfc="none", mew=1.5, color=color, zorder=3,
                        label=f"{run.name}: warm test AUC")
        if run.test_auc:
            ax_auc.plot(*_xy(run.test_auc), "--", marker="o", ms=6, color=color, zorder=4,
                        label=f"{run.name}: test AUC")
        for label, points in run.loss.items():
            ax_loss[label].plot(*_xy(points), "-", marker=".", ms=5, color=color, label=run.name)
    ax_auc.set_ylabel("AUC")
    ax_auc.axhline(0.5, color="grey", lw=0.5)
    ax_auc.set_title("AUC", fontsize=10)
    for label, ax in ax_loss.items():
        ax.set_ylabel("loss")
        ax.set_title(label, fontsize=10)
    for ax in axes[:, 0]:
        ax.grid(True, lw=0.3, alpha=0.5)
        if ax.lines and any(not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("events")
    fig.suptitle(title or "LFM Stream learner")
    return fig


def plot(paths: list[str], out: str, title: str | None = None) -> Path:
    """Draw the runs in the metrics files ``paths`` into the image file ``out`` (one run per file)."""
    runs = [series(Path(path).stem, load(path)) for path in paths]
    for path, run in zip(paths, runs):
        if not (run.prequential_auc or run.test_auc or run.loss):
            print(f"learner.plot: {path}: no train or test record with a value to draw", file=sys.stderr)
    figure(runs, title).savefig(out, dpi=110)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m learner.plot", description=__doc__.split("\n\n")[0])
    add_version_flag(p)
    p.add_argument("metrics", nargs="+", help="metrics file(s) written by the learner's --metrics")
    p.add_argument("-o", "--out", default="auc.png", help="image file to write")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    try:
        path = plot(args.metrics, args.out, args.title)
    except (OSError, ValueError) as exc:
        print(f"learner.plot: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
