"""``python -m learner.plot METRICS -o auc.png``: AUC and loss against step and events from a metrics file.

Top: prequential (train-window) AUC and test AUC (all rows and warm rows) against the step; bottom: the
train-window loss against the number of events.  Several metrics files draw several runs (e.g. the
defaults and ``--preset seed``).  Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def plot(paths: list[str], out: str, title: str | None = None) -> Path:
    """Draw the runs in ``paths`` into the image file ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_auc, ax_loss) = plt.subplots(2, 1, figsize=(9, 7), constrained_layout=True)
    for path in paths:
        recs = load(path)
        name = Path(path).stem
        train = [r for r in recs if r.get("event") == "train" and r.get("auc") is not None]
        test = [r for r in recs if r.get("event") in ("test", "end") and "test_auc" in r]
        if train:
            ax_auc.plot([r["step"] for r in train], [r["auc"] for r in train], label=f"{name}: prequential AUC")
            ax_loss.plot([r["events"] for r in train], [r["loss"] for r in train], label=f"{name}: train loss")
        if test:
            ax_auc.plot([r["step"] for r in test], [r["test_auc"] for r in test], "o-", label=f"{name}: test AUC")
            ax_auc.plot([r["step"] for r in test], [r["warm_auc"] for r in test], "s--", label=f"{name}: warm AUC")
    ax_auc.set_xlabel("step (micro-batches)")
    ax_auc.set_ylabel("AUC")
    ax_auc.axhline(0.5, color="grey", lw=0.5)
    ax_auc.legend(fontsize=8)
    ax_loss.set_xlabel("events")
    ax_loss.set_ylabel("loss per event (window)")
    ax_loss.legend(fontsize=8)
    fig.suptitle(title or "LFM Stream learner")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m learner.plot", description=__doc__.split("\n\n")[0])
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
