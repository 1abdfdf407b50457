"""learner.plot on hand-made metrics files: what the figure holds, checked through matplotlib's objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learner import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _two_points(loss_type: str | None = "logloss", batch: int = 64) -> list[dict]:
    """Two train log points and one test evaluation (repeated by the end record), as a learner writes them."""
    typed = {} if loss_type is None else {"loss_type": loss_type}
    return [
        {"event": "assign", "step": 0, "events": 0, "partitions": [0]},
        {"event": "train", "step": 10, "events": 10 * batch, "auc": 0.61, "loss": 0.69, **typed},
        {"event": "train", "step": 20, "events": 20 * batch, "auc": 0.66, "loss": 0.64, **typed},
        {"event": "test", "step": 20, "events": 20 * batch, "test_auc": 0.70, "warm_auc": 0.70},
        {"event": "checkpoint", "step": 20, "events": 20 * batch, "path": "x.npz"},
        {"event": "end", "step": 20, "events": 20 * batch, "test_auc": 0.70, "warm_auc": 0.70, "reason": "max"},
    ]


def _line(ax, label: str):
    found = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(found) == 1, f"no single line {label!r} in {[x.get_label() for x in ax.get_lines()]}"
    return found[0]


def _render(tmp_path: Path, runs: list[plot.Run]):
    fig = plot.figure(runs)
    out = tmp_path / "fig.png"
    fig.savefig(out, dpi=50)  # renders every artist with Agg
    assert out.read_bytes()[:8] == PNG_MAGIC
    return fig


def test_two_point_run_shows_every_point_against_events(tmp_path):
    path = _write(tmp_path / "default.jsonl", _two_points())
    fig = _render(tmp_path, [plot.series("default", plot.load(path))])
    ax_auc, ax_loss = fig.axes
    assert ax_auc.get_ylabel() == "AUC"
    assert ax_loss.get_title() == "logloss per event (window)"
    assert ax_loss.get_xlabel() == "events"
    assert ax_auc.get_shared_x_axes().joined(ax_auc, ax_loss)

    preq = _line(ax_auc, "default: prequential AUC")
    assert list(preq.get_xdata()) == [640, 1280]  # events, not steps (10, 20)
    assert list(preq.get_ydata()) == [0.61, 0.66]
    assert preq.get_marker() not in (None, "None", "", " ")

    loss = _line(ax_loss, "default")
    assert list(loss.get_xdata()) == [640, 1280] and list(loss.get_ydata()) == [0.69, 0.64]
    assert loss.get_marker() not in (None, "None", "", " ")

    test = _line(ax_auc, "default: test AUC")
    warm = _line(ax_auc, "default: warm test AUC")
    assert list(test.get_xdata()) == [1280]  # the end record repeats the last test: one point, not two
    assert list(warm.get_xdata()) == [1280] and list(warm.get_ydata()) == [0.70]
    # equal values stay visible: different shapes, the warm marker hollow and larger, the test marker on top
    assert test.get_marker() != warm.get_marker()
    assert warm.get_markerfacecolor() == "none"
    assert warm.get_markersize() > test.get_markersize()
    assert test.get_zorder() > warm.get_zorder()


def test_loss_types_get_their_own_panels_and_runs_align_on_events(tmp_path):
    default = _write(tmp_path / "metrics-default.jsonl", _two_points("logloss", batch=64))
    seed = _write(tmp_path / "metrics-seed.jsonl", _two_points("mse", batch=8))
    runs = [plot.series(p.stem, plot.load(p)) for p in (default, seed)]
    fig = _render(tmp_path, runs)
    assert [ax.get_title() for ax in fig.axes] == ["AUC", "logloss per event (window)", "MSE per event (window)"]
    ax_auc, ax_logloss, ax_mse = fig.axes
    assert [line.get_label() for line in ax_logloss.get_lines()] == ["metrics-default"]
    assert [line.get_label() for line in ax_mse.get_lines()] == ["metrics-seed"]
    assert list(_line(ax_auc, "metrics-seed: prequential AUC").get_xdata()) == [80, 160]
    assert list(_line(ax_auc, "metrics-default: prequential AUC").get_xdata()) == [640, 1280]
    # one colour per run, shared by its AUC and loss lines
    assert _line(ax_mse, "metrics-seed").get_color() == _line(ax_auc, "metrics-seed: test AUC").get_color()
    assert _line(ax_logloss, "metrics-default").get_color() != _line(ax_mse, "metrics-seed").get_color()
    for ax in fig.axes:
        assert ax.get_legend() is not None


def test_metrics_without_a_loss_type_get_a_labelled_panel(tmp_path):
    path = _write(tmp_path / "old.jsonl", _two_points(loss_type=None))
    fig = _render(tmp_path, [plot.series("old", plot.load(path))])
    assert [ax.get_title() for ax in fig.axes] == ["AUC", plot.UNKNOWN_LOSS]


def test_cli_writes_a_png_of_a_two_point_file(tmp_path, capsys):
    path = _write(tmp_path / "m.jsonl", _two_points())
    out = tmp_path / "auc.png"
    assert plot.main([str(path), "-o", str(out), "--title", "two points"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_cli_names_a_file_with_no_json(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert plot.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert f"{bad}:1" in capsys.readouterr().err


def test_torn_line_is_skipped_with_its_position(tmp_path, capsys):
    path = tmp_path / "torn.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _two_points()) + '{"event": "tra')
    run = plot.series("torn", plot.load(path))
    assert len(run.prequential_auc) == 2
    assert f"{path}:7" in capsys.readouterr().err


@pytest.mark.parametrize("records", [[], [{"event": "assign", "events": 0}]])
def test_a_run_with_nothing_to_draw_still_renders(tmp_path, records, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "e.png"
    assert plot.main([str(path), "-o", str(out)]) == 0
    assert "no train or test record" in capsys.readouterr().err
    assert out.read_bytes()[:8] == PNG_MAGIC
