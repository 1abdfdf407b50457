"""The chaos bench's figures (``bench/chaos.py``): poison per kind, recovery times, totals and targets."""

from __future__ import annotations

import statistics

from bench.chaos_poison import Injected, PoisonRecord


def poison_report(poison: list[PoisonRecord], injected: Injected | None, letters: list[tuple[bytes | None, dict]],
                  counted: set[int], in_topic: dict[int, int] | None) -> dict:
    """Poison published / found in the topic / counted by the learner / dead-lettered, per kind.

    Args:
        poison: the records planned.
        injected: what the injector published (each record's offset), None when it never ran.
        letters: ``(key, headers)`` of every dead letter (:func:`bench.chaos_state.dead_letters`).
        counted: offsets of the poison records the learner reported (``poison`` metrics events, every process).
        in_topic: record number → offset of the poison records read back from the topic (None: not read).
    """
    published = injected.offsets if injected else {}
    by_n = {p.n: p for p in poison}
    reasons: dict[int, list[str]] = {}
    others = 0
    for key, headers in letters:
        if key and key.startswith(b"poison-"):
            reasons.setdefault(int(key[7:]), []).append(headers.get("lfm-reason", ""))
        else:
            others += 1
    kinds: dict[str, dict] = {}
    for n, offset in published.items():
        p = by_n[n]
        k = kinds.setdefault(p.kind, {"reason": p.reason, "published": 0, "in_topic": 0, "dead_lettered": 0,
                                      "counted_by_learner": 0, "wrong_reason": 0})
        k["published"] += 1
        k["in_topic"] += in_topic is not None and in_topic.get(n) == offset
        k["dead_lettered"] += n in reasons
        k["counted_by_learner"] += offset in counted
        k["wrong_reason"] += any(r != p.reason for r in reasons.get(n, []))
    dead = sum(n in reasons for n in published)
    return {"published": len(published), "planned": len(poison), "kinds": len(kinds),
            "in_topic": sum(k["in_topic"] for k in kinds.values()) if in_topic is not None else None,
            "counted_by_learner": sum(k["counted_by_learner"] for k in kinds.values()),
            "dead_lettered": dead, "dead_lettered_share": round(dead / len(published), 4) if published else None,
            "dead_letter_copies": sum(len(v) for v in reasons.values()),
            "wrong_reason": sum(k["wrong_reason"] for k in kinds.values()),
            "good_records_dead_lettered": others, "injector_error": injected.error if injected else None,
            "by_kind": kinds}


def recovery_summary(faults: list[dict]) -> dict:
    """Recovery seconds per (fault kind, role): count, median, max, and faults without recovery."""
    per: dict[str, list] = {}
    for f in faults:
        for role, s in f.get("recovery_s", {}).items():
            per.setdefault(f"{f['kind']}/{role}", []).append(s)
    return {k: {"n": len(v), "median": statistics.median([s for s in v if s is not None] or [0]),
                "max": max([s for s in v if s is not None] or [0]), "not_recovered": sum(s is None for s in v)}
            for k, v in per.items()}


def summarize(phases: dict[str, dict]) -> dict:
    """Totals over the faulted phases and the targets."""
    faulted = {k: v for k, v in phases.items() if k != "reference"}
    tot = {"expected": 0, "applied": 0, "lost": 0, "applied_twice": 0}
    for ph in faulted.values():
        users = ph.get("events", {}).get("users", {})
        for k in tot:
            tot[k] += users.get(k, 0)
    checks = []
    for name, ph in faulted.items():
        ev = ph.get("events")
        if ev is None:
            checks.append((name, "figures", False))
            continue
        ok = all(ev[t]["lost"] == 0 and ev[t]["applied_twice"] == 0 and ev[t]["unexpected_rows"] == 0
                 for t in ("users", "movies", "mu", "activity_positives")) and ev["activity_ratings_missing"] == 0
        checks.append((name, "exactly_once", ok and ph.get("topic_end") is not None))
        if "item_channel" in ph:
            ic = ph["item_channel"]
            checks.append((name, "item_channel_exactly_once", all(
                ic[k]["lost"] == 0 and ic[k]["applied_twice"] == 0 and ic[k]["unexpected_rows"] == 0
                for k in ("events", "deg", "pop", "pop_by_bucket")) and ic["recent_users_off"] == 0))
        if "poison" in ph:
            p = ph["poison"]
            checks.append((name, "poison_dead_lettered", p["published"] == p["planned"] > 0
                           and p["dead_lettered"] == p["published"] and p["wrong_reason"] == 0
                           and p["good_records_dead_lettered"] == 0))
        checks.append((name, "no_unexpected_exit", not ph["learner"]["unexpected_exits"]))
        checks.append((name, "no_traceback", ph["learner"]["tracebacks"] == 0
                       and ph.get("item_channel_worker", {}).get("tracebacks", 0) == 0))
        checks.append((name, "learner_up", bool(ph["learner"].get("up"))))
        if "item_channel_worker" in ph:
            checks.append((name, "item_channel_up", bool(ph["item_channel_worker"].get("up"))))
        if "recall" in ph:
            checks.append((name, "recall_up", all(v["up"] for k, v in ph["recall"].items() if k != "user")))
        if "events" in ph:
            checks.append((name, "namespace_described", all(ph["events"]["namespace_described"].values())))
        checks.append((name, "every_fault_recovered", all(v is not None for f in ph["faults"]
                                                          for v in f["recovery_s"].values())))
        checks.append((name, "no_fault_skipped", not ph["skipped_faults"]))
        checks.append((name, "no_error", ph["error"] is None))
    out = {"events": tot, "targets": {f"{n}/{c}": ok for n, c, ok in checks},
           "all_targets_met": all(ok for _, _, ok in checks)}
    poison = [ph["poison"] for ph in faulted.values() if "poison" in ph]
    out["poison"] = {"published": sum(p["published"] for p in poison),
                     "dead_lettered": sum(p["dead_lettered"] for p in poison),
                     "counted_by_learner": sum(p["counted_by_learner"] for p in poison)}
    out["recovery_s"] = recovery_summary([f for ph in faulted.values() for f in ph["faults"]])
    out["test_auc_by_phase"] = {name: ph["learner"]["end"].get("test_auc") for name, ph in phases.items()}
    ref, chaos = phases.get("reference"), phases.get("chaos")
    if ref and chaos:
        a, b = ref["learner"]["end"].get("test_auc"), chaos["learner"]["end"].get("test_auc")
        out["test_auc"] = {"reference": a, "chaos": b,
                           "difference": None if a is None or b is None else round(b - a, 4)}
    return out
