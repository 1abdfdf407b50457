"""The chaos bench's fast subset (``bench/chaos.py``, phase ``chaos``) on a small synthetic stream: the learner
SIGKILLed three times and the item channel once while they follow a live replay, Redis SIGKILLed and restarted
from its append-only file, 1% poison records of every kind beside the replay, the recall service running
throughout and started again at the end.  Every event is applied once (PS rows, activity log, item channel),
every poison record dead-lettered with its reason, and the learner, the item channel and the recall service are
up at the end."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos import ChaosConfig, run  # noqa: E402
from bench.chaos_poison import kind_count  # noqa: E402
from bench.chaos_state import compare_counts  # noqa: E402
from learner_fixtures import syn_dir  # noqa: E402, F401 (fixture)

#: a quick restart on this small stream: no XLA compilation, a short group session
LEARNER = ("--no-xla", "--session-timeout-ms", "3000", "--heartbeat-interval-ms", "500", "--dim", "8")


def test_compare_counts_by_hand():
    got = compare_counts({7: 3, 8: 1, 9: 2}, {7: 3, 8: 2, 9: 0, 5: 4})
    assert got == {"expected": 6, "applied": 5, "lost": 2, "applied_twice": 1, "rows_off": 2, "unexpected_rows": 1,
                   "unexpected_events": 4}


def test_kills_a_redis_restart_and_poison_leave_every_event_applied_once(syn_dir, tmp_path):
    cfg = ChaosConfig(data_dir=syn_dir, rate=80, kills=3, items_kills=1, kill_gap_s=1.0, phases=("chaos",),
                      learner_args=LEARNER, items_args=("--session-timeout-ms", "3000"), progress_timeout_s=120)
    result = run(cfg, tmp_path)
    ph = result["phases"]["chaos"]
    assert ph["error"] is None, ph["error"]

    kinds = [f["kind"] for f in ph["faults"]]
    assert (kinds.count("learner_sigkill"), kinds.count("items_sigkill"), kinds.count("redis_aof")) == (3, 1, 1), kinds
    kill_points = [f["baseline"]["learner"] for f in ph["faults"] if f["kind"] == "learner_sigkill"]
    assert kill_points == sorted(set(kill_points)) and kill_points[0] > 0  # each kill after a write of its own
    assert all(s is not None for f in ph["faults"] for s in f["recovery_s"].values()), ph["faults"]

    ev = ph["events"]
    assert ev["users"]["expected"] == result["events"] > 4000
    for table in ("users", "movies", "mu", "activity_positives"):
        t = ev[table]
        assert (t["lost"], t["applied_twice"], t["unexpected_rows"]) == (0, 0, 0), (table, t)
    assert ev["activity_ratings_missing"] == 0
    assert ph["topic_end"] == result["events"] + ph["poison"]["published"]
    topic = ph["topic"]  # the stream as the broker holds it, read back
    assert (topic["records"], topic["offsets_without_record"], topic["events"]) == \
        (ph["topic_end"], 0, result["events"]), topic
    ic = ph["item_channel"]
    for key in ("events", "deg", "pop", "pop_by_bucket"):
        assert (ic[key]["lost"], ic[key]["applied_twice"], ic[key]["unexpected_rows"]) == (0, 0, 0), (key, ic[key])
    assert ic["events"]["applied"] == result["events"] and ic["recent_users_off"] == 0

    p = ph["poison"]
    assert p["published"] == p["planned"] == p["in_topic"] >= kind_count() and p["kinds"] == kind_count()
    assert not p["injector_error"]
    assert p["dead_lettered"] == p["counted_by_learner"] == p["published"], p
    assert p["wrong_reason"] == 0 and p["good_records_dead_lettered"] == 0

    learner = ph["learner"]
    assert learner["up"] and learner["end"]["reason"] == "signal" and learner["end"]["test_auc"] > 0.5
    assert not learner["unexpected_exits"] and learner["tracebacks"] == 0 and learner["processes"] == 4
    assert ph["item_channel_worker"]["up"] and ph["item_channel_worker"]["tracebacks"] == 0
    for service in ("through_the_run", "started_at_end"):
        assert ph["recall"][service]["up"], ph["recall"]
    assert result["summary"]["all_targets_met"], result["summary"]["targets"]
