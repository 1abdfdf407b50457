"""Chaos bench: crashes, outages and poison records against the whole pipeline; JSON on stdout.

    python bench/chaos.py                          # the full ml-latest-small stream, every phase (~20 min)
    python bench/chaos.py --max-events 20000 --kills 5 --phases chaos

Each phase runs on servers of its own on loopback (redis-server with the append-only file fsynced every second,
the local stack's default, and a Tansu broker), in a namespace and topic of its own: the prepared stream replayed
live by ``python -m producer.replay`` (one partition), the learner (``python -m learner``, default flags) and the
item channel (``python -m learner.items``) following it, and the faults of the phase:

* ``reference``: no fault (run beside ``chaos``, at the same rate): the unfaulted run the AUC is compared with;
* ``chaos``: ``--kills`` random SIGKILLs of the learner (each once it has made progress since its restart, after a
  random 0..``--kill-gap`` s) and ``--items-kills`` of the item channel, restarted at once; one SIGKILL of Redis
  halfway, restarted from its files; a recall service running from the learner's first write on;
* ``ps-loss-fail`` / ``ps-loss-rebuild`` (learner ``--on-ps-loss fail`` / ``rebuild``): Redis SIGKILLed and
  restarted from its files, then restarted from a copy of its files taken seconds earlier (the tail of the
  append-only file lost, as in a host crash before the fsync), then restarted empty.  Under ``fail`` the learner
  must stop with exit 3 and "PS state lost" (the bench restarts it, as a supervisor would), under ``rebuild``
  replay by itself; either way it must end with every event applied once.  The item channel does not run here: it
  has no state-loss detection;
* ``broker``: the broker SIGKILLed while the learner and the item channel follow the replay, restarted after
  ``--broker-down`` s.  Tansu keeps topics in memory (its only file-less storage; its other engines are S3 and
  Postgres), so the restarted broker has lost the topic: the bench stops the replay, and once the broker is back
  publishes the stream again from its start (the same records, offsets and lfm-seq), fast up to where the replay
  stopped, then at the phase's rate.  What it checks: learner and item channel ride out the outage (no exit, no
  traceback), wait at their PS offsets until the new topic reaches them and go on, every event applied once.  No
  poison here (the dead-letter topic dies with the broker).

In every phase but ``reference`` a recall service is started once every event is applied (it must answer
``/healthz`` and a u2i for a user of the stream).

Poison (``--poison-share``, 1% of the events; every kind of ``bench/chaos_poison.py`` in turn) is published beside
the replay in every phase but ``broker``.

Figures per phase: events expected / applied / lost / applied twice from the PS rows' event counts (users, movies,
μ), the activity log, the item channel (against one pass over the stream), PS offsets against the topic's end, the
topic itself read back (records, offsets without one, events and their copies); poison published / found in the
topic / counted by the learner / dead-lettered (distinct; the reason each dead letter gives); every
fault with its recovery time (from the restart to the next fenced write of the learner, resp. the item channel);
exits the bench did not cause; the learner's final test AUC (vs the reference run); whether the learner and the
recall service (``/healthz`` and a u2i answer) are up at the end.  Targets: 0 lost, 0 applied twice, every poison
record dead-lettered, no unexpected exit, learner and recall service up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_phase import PHASES, ChaosConfig, Phase, PhaseSpec, say  # noqa: E402
from bench.chaos_report import summarize  # noqa: E402
from bench.chaos_state import stream_values  # noqa: E402

__all__ = ["ChaosConfig", "PHASES", "phase_specs", "run", "main"]


def phase_specs(cfg: ChaosConfig) -> dict[str, PhaseSpec]:
    """The phases (see the module docstring), each with the sentence the JSON gives as what it checks."""
    loss = ("Redis SIGKILL + restart from its files (AOF everysec), then from a copy taken seconds earlier (the "
            "AOF tail lost), then empty; learner --on-ps-loss {}: {}; every event applied once at the end")
    return {
        "reference": PhaseSpec("reference", cfg.rate, "no fault: the unfaulted run (same stream, same rate)",
                               recall_at_end=False),
        "chaos": PhaseSpec(
            "chaos", cfg.rate, f"{cfg.kills} learner SIGKILLs and {cfg.items_kills} item-channel SIGKILLs while "
            "following the live replay, one Redis SIGKILL + restart from its files halfway, poison; exactly once, "
            "every poison record dead-lettered, learner and recall service up at the end",
            kills=cfg.kills, items_kills=cfg.items_kills, redis_faults=("aof",),
            redis_fault_at_kill=cfg.kills // 2 if cfg.kills else None,
            recall_through=True),
        "ps-loss-fail": PhaseSpec("ps-loss-fail", cfg.fault_rate, loss.format(
            "fail", "it stops with exit 3 naming the lost state (the bench restarts it)"),
            redis_faults=("aof", "older", "empty"), items=False),
        "ps-loss-rebuild": PhaseSpec("ps-loss-rebuild", cfg.fault_rate, loss.format(
            "rebuild", "it replays from the PS offsets by itself"),
            redis_faults=("aof", "older", "empty"), items=False, on_ps_loss="rebuild"),
        "broker": PhaseSpec(
            "broker", cfg.fault_rate, "broker SIGKILL + restart (memory storage: the topic is gone; the stream is "
            "published again from its start); learner and item channel ride it out without exit or traceback and "
            "apply every event once", broker=True, poison=False),
    }


def _cpu_sample() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def run(cfg: ChaosConfig, run_dir: Path) -> dict:
    """Every phase of ``cfg`` (``reference`` beside ``chaos``, the others one after the other); the JSON figures."""
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
    values = stream_values(cfg.data_dir, cfg.max_events)
    specs = phase_specs(cfg)
    load0, cpu0, t0 = os.getloadavg(), _cpu_sample(), time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    say(f"{len(values)} events from {cfg.data_dir}; phases {', '.join(cfg.phases)}; seed {seed}; files in {run_dir}")
    phases: dict[str, Phase] = {}
    for i, name in enumerate(cfg.phases):
        phases[name] = Phase(specs[name], cfg, values, run_dir / name, seed + i)
    results: dict[str, dict] = {}
    beside = phases.get("reference") if "chaos" in phases else None  # light (no restarts): run beside chaos
    thread = threading.Thread(target=lambda: results.__setitem__("reference", beside.run()), daemon=True)
    if beside is not None:
        thread.start()
    loads = []
    for name, ph in phases.items():
        if ph is not beside:
            say(f"phase {name}: {ph.spec.checks}")
            results[name] = ph.run()
            loads.append((name, os.getloadavg()))
        if name == "chaos" and beside is not None:
            thread.join()
    ref_nb = phases["reference"].nb if "reference" in phases else None
    for name, ph in phases.items():
        if ref_nb is not None and ph.nb is not None and name != "reference" and "item_channel" in results[name]:
            results[name]["item_channel"]["neighbour_lists_unlike_unfaulted_run"] = \
                sum(ph.nb.get(m) != s for m, s in ref_nb.items()) + len(set(ph.nb) - set(ref_nb))
    cpu1 = _cpu_sample()
    busy = 1 - (cpu1[1] - cpu0[1]) / max(1, cpu1[0] - cpu0[0])
    return {
        "bench": "chaos", "started": started, "seconds": round(time.monotonic() - t0, 1),
        "machine": {"cores": os.cpu_count(), "load_at_start": [round(x, 2) for x in load0],
                    "load_after_phase": {n: round(x[0], 2) for n, x in loads},
                    "load_at_end": [round(x, 2) for x in os.getloadavg()],
                    "busy_cores_mean": round(busy * (os.cpu_count() or 1), 2)},
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}, "seed": seed},
        "events": len(values),
        "summary": summarize({n: results[n] for n in cfg.phases if n in results}),
        "phases": {n: results[n] for n in cfg.phases if n in results},
    }


def _default_data_dir(args: argparse.Namespace) -> Path:
    """The prepared ml-latest-small (``--ratings``, else ``$LFM_DATA`` / ``../shared/data``), made once."""
    import subprocess

    ratings = Path(args.ratings) if args.ratings else \
        Path(os.environ.get("LFM_DATA") or ROOT.parent / "shared" / "data") / "ml-latest-small" / "ratings.csv"
    out = Path("/tmp/lfm-bench-data") / ratings.parent.name
    subprocess.run([sys.executable, "-m", "producer.prepare", "--ratings", str(ratings), "--out", str(out),
                    "--if-missing"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/chaos.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = ChaosConfig(Path("."))
    p.add_argument("--data-dir", default=None, help="prepared data (default: ml-latest-small prepared under /tmp)")
    p.add_argument("--ratings", default=None, help="ratings file to prepare (default: $LFM_DATA or ../shared/data)")
    p.add_argument("--max-events", type=int, default=None, help="the first N events of the stream (default: all)")
    p.add_argument("--rate", type=float, default=d.rate,
                   help="replay events/s of the reference and chaos phases (the stream must outlast the kills: "
                        "a restarted learner takes ~10 s to its first write)")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate, help="replay events/s of the other phases")
    p.add_argument("--kills", type=int, default=d.kills, help="learner SIGKILLs in the chaos phase")
    p.add_argument("--items-kills", type=int, default=d.items_kills, help="item-channel SIGKILLs in the chaos phase")
    p.add_argument("--kill-gap", type=float, default=d.kill_gap_s,
                   help="a kill follows a worker's progress after a random 0..this many seconds")
    p.add_argument("--poison-share", type=float, default=d.poison_share, help="poison records per event")
    p.add_argument("--broker-down", type=float, default=d.broker_down_s, help="seconds the broker stays away")
    p.add_argument("--phases", default=",".join(PHASES), help="phases to run")
    p.add_argument("--learner-arg", action="append", default=[], help="extra learner flag (repeatable)")
    p.add_argument("--items-arg", action="append", default=[], help="extra learner.items flag (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault timing (default: random, reported)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    phases = tuple(x for x in args.phases.split(",") if x)
    unknown = [x for x in phases if x not in PHASES]
    if unknown:
        p.error(f"--phases: unknown {unknown} (choose from {', '.join(PHASES)})")
    if args.rate <= 0 or args.fault_rate <= 0:
        p.error("--rate and --fault-rate must be > 0 (a live replay)")
    data_dir = Path(args.data_dir) if args.data_dir else _default_data_dir(args)
    cfg = replace(d, data_dir=data_dir, max_events=args.max_events, rate=args.rate, fault_rate=args.fault_rate,
                  kills=args.kills, items_kills=args.items_kills, kill_gap_s=args.kill_gap,
                  poison_share=args.poison_share, broker_down_s=args.broker_down, phases=phases,
                  learner_args=tuple(args.learner_arg), items_args=tuple(args.items_arg), seed=args.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    result = {"command": "python bench/chaos.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **run(cfg, run_dir)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if result["summary"]["all_targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
