"""One phase of the chaos bench (``bench/chaos.py``): its servers, workers, replay, poison and faults.

A :class:`Phase` starts a redis-server (append-only file, fsync every second) and a Tansu broker of its own, the
learner and the item channel (:class:`bench.chaos_procs.Worker`), a live replay and the poison injector, injects
the faults of its :class:`PhaseSpec` while watching the PS offsets (:class:`bench.chaos_procs.FenceMonitor`), waits
until every event is applied, checks the recall service, stops everything and reads the state back
(:mod:`bench.chaos_state`).  Its figures: :meth:`Phase.run`'s dict.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.chaos_poison import PoisonInjector, kind_count, poison_records
from bench.chaos_procs import FenceMonitor, RecallService, Worker
from bench.chaos_report import poison_report, recovery_summary
from bench.chaos_state import (dead_letters, fence_offsets, items_check, items_state, learner_check, topic_audit,
                               topic_end)
from lfm_local.stack import RedisServer, TansuBroker


PHASES = ("reference", "chaos", "ps-loss-fail", "ps-loss-rebuild", "broker")


class PhaseError(RuntimeError):
    """A phase could not go on (a worker made no progress in time, a replay failed)."""


@dataclass(frozen=True)
class ChaosConfig:
    """One bench run (the CLI's flags; tests build it directly)."""

    data_dir: Path
    max_events: int | None = None
    rate: float = 150.0  # reference and chaos: the stream outlasts the kills (15-30 s per kill and restart)
    fault_rate: float = 1000.0  # ps-loss-* and broker
    kills: int = 20
    items_kills: int = 5
    kill_gap_s: float = 3.0
    poison_share: float = 0.01
    broker_down_s: float = 5.0
    phases: tuple[str, ...] = PHASES
    learner_args: tuple[str, ...] = ()
    items_args: tuple[str, ...] = ()
    seed: int | None = None
    progress_timeout_s: float = 240.0


@dataclass(frozen=True)
class PhaseSpec:
    """What one phase runs and injects."""

    name: str
    rate: float
    checks: str
    kills: int = 0
    items_kills: int = 0
    redis_faults: tuple[str, ...] = ()  # in order, each "aof" (restart from its files), "older" or "empty"
    redis_fault_at_kill: int | None = None  # chaos: the Redis fault follows this learner kill
    broker: bool = False
    poison: bool = True
    items: bool = True
    recall_through: bool = False  # a recall service from the learner's first write to the end
    recall_at_end: bool = True  # one started once every event is applied
    on_ps_loss: str = "fail"


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Phase:
    """One phase: its servers, workers, replay, poison and faults (see the module docstring)."""

    def __init__(self, spec: PhaseSpec, cfg: ChaosConfig, values: list[bytes], run_dir: Path, seed: int):
        self.spec, self.cfg, self.values = spec, cfg, values
        self.run_dir = run_dir
        self.rng = random.Random(seed)
        tag = uuid.uuid4().hex[:8]
        self.namespace, self.topic = f"chaos{tag}", f"ratings-{tag}"
        self.groups = {"learner": f"learner-{tag}", "items": f"items-{tag}"}
        self.roles = ["learner"] + (["items"] if spec.items else [])
        self.faults: list[dict] = []
        self.skipped: list[dict] = []  # faults not injected (and why)
        self.exits: list[dict] = []  # exits the bench did not cause
        self.since: dict[str, tuple[float, int]] = {}  # role → (start or fault time, PS offsets then)
        self.replays: list[Worker] = []
        self.replay_done = threading.Event()
        self.services: dict[str, RecallService] = {}
        self.poison = poison_records(max(kind_count(), math.ceil(cfg.poison_share * len(values)))) \
            if spec.poison else []
        self.injector: PoisonInjector | None = None
        self.end: int | None = None  # the topic's end once everything is published
        self.monitor: FenceMonitor | None = None
        self.redis: RedisServer | None = None
        self.broker: TansuBroker | None = None
        self.nb: dict | None = None
        self.result: dict = {}

    # -- servers and processes -------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def dim(self) -> int:
        """The learner's row dimension (its --dim, else the default preset's)."""
        args = list(self.cfg.learner_args)
        for i, a in enumerate(args):
            if a == "--dim" and i + 1 < len(args):
                return int(args[i + 1])
            if a.startswith("--dim="):
                return int(a.split("=", 1)[1])
        from learner.config import preset

        return preset("default").dim

    def _learner_argv(self, metrics: Path | None) -> list[str]:
        return [sys.executable, "-m", "learner", "--redis-url", self.redis_url, "--bootstrap", self.bootstrap,
                "--topic", self.topic, "--namespace", self.namespace, "--group", self.groups["learner"],
                "--data-dir", str(self.cfg.data_dir), "--metrics", str(metrics), "--on-ps-loss", self.spec.on_ps_loss,
                *self.cfg.learner_args]

    def _items_argv(self, metrics: Path | None) -> list[str]:
        return [sys.executable, "-m", "learner.items", "--redis-url", self.redis_url, "--bootstrap", self.bootstrap,
                "--topic", self.topic, "--namespace", self.namespace, "--group", self.groups["items"],
                *self.cfg.items_args]

    def _replay(self, rate: float, start: int = 0, count: int | None = None) -> Worker:
        """A replay of records ``start ..`` (``count`` of them; default to the stream's end)."""
        count = len(self.values) - start if count is None else count
        argv = [sys.executable, "-m", "producer.replay", "--data-dir", str(self.cfg.data_dir), "--bootstrap",
                self.bootstrap, "--topic", self.topic, "--rate", str(rate), "--partitions", "1",
                "--state-file", str(self.run_dir / f"replay-state-{len(self.replays)}.json"), "--resume", str(start),
                "--max-events", str(count), "--json", "--progress-interval", "10"]
        w = Worker(f"replay-{len(self.replays)}", lambda _m: argv, self.run_dir, metrics=False)
        w.start()
        self.replays.append(w)
        return w

    def _offsets(self, role: str) -> int:
        """The role's PS offsets now, read directly (waits while Redis is away)."""
        deadline = time.monotonic() + 60
        r = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            while True:
                v = fence_offsets(r, self.namespace, self.groups[role], self.topic)
                if v is not None:
                    return v
                if time.monotonic() > deadline:
                    raise PhaseError(f"Redis at {self.redis_url} does not answer")
                time.sleep(0.1)
        finally:
            r.close()

    def _restart(self, role: str) -> None:
        self.workers[role].start()
        self.since[role] = (self.workers[role].current.at, self._offsets(role))

    def _live(self) -> bool:
        return bool(self.replays) and self.replays[-1].current.proc.poll() is None

    def _check_exits(self) -> None:
        """A worker that ended on its own is noted (with the last lines it wrote) and started again, as a
        supervisor would; the learner's exit 3 after the PS lost state is what ``--on-ps-loss fail`` asks for."""
        for role in self.roles:
            w = self.workers[role]
            rc = w.exited()
            if rc is None:
                continue
            lost = self._note_exit(role, rc, time.monotonic())
            say(f"{self.spec.name}: {role} exited with {rc}{' (PS state lost)' if lost else ''}; restarting it")
            w.current.stopped_by = "exited"
            self._restart(role)

    def _note_exit(self, role: str, rc: int, t: float) -> bool:
        """Note an exit the bench did not cause; True when it is the learner or the item channel stopping on a PS
        that lost state."""
        text = self.workers[role].current.log.read_text(errors="replace")
        lost = role in ("learner", "items") and rc == 3 and ("state lost" in text or "PS lost" in text)
        # the learner exits on a loss with --on-ps-loss fail; the item channel always does (a restart resumes)
        expected = lost and (role == "items" or self.spec.on_ps_loss == "fail")
        self.exits.append({"role": role, "rc": rc, "at_s": self._t(t), "ps_state_lost": lost,
                           "expected": expected, "traceback": "Traceback" in text,
                           "tail": text.strip().splitlines()[-3:]})
        return lost

    def _t(self, t: float) -> float:
        return round(t - self.t0, 2)

    # -- waiting ---------------------------------------------------------------------------------
    def _final_end(self) -> int | None:
        """The topic's end once nothing more will be published (the replay done, the poison out), else None."""
        if self.end is None and self.replays and self.replays[-1].current.proc.poll() == 0:
            self.replay_done.set()  # the injector publishes the rest of the poison now
            if self.injector is None or not self.injector.is_alive():
                self.end = topic_end(self.bootstrap, self.topic)
        return self.end

    def _joined(self, role: str) -> bool:
        """Whether ``role``'s current process has joined the group (it says so in its log)."""
        return "assigned partitions" in self.workers[role].current.log.read_text(errors="replace")

    def _caught_up(self, role: str) -> bool:
        """Nothing is left for ``role`` to apply: the stream is over, its PS offsets are at the topic's end and its
        current process has joined the group."""
        end = self._final_end()
        return end is not None and self.monitor.latest(role) == end and self._joined(role)

    def _note_recoveries(self) -> None:
        """Each fault's recovery per role: the first fenced write of the role after the restart (or, once the role
        has nothing left to apply, the moment it was found caught up)."""
        for f in self.faults:
            for role, base in f["baseline"].items():
                if f["recovery_s"].get(role) is None:
                    t = self.monitor.first_above(role, f["restart_at"], base)
                    by = "write"
                    if t is None and self._caught_up(role):
                        t, by = time.monotonic(), "nothing left to apply"
                    if t is not None:
                        f["recovery_s"][role], f["recovered_by"][role] = round(t - f["restart_at"], 2), by

    def _await_progress(self, role: str) -> None:
        """Wait until ``role`` has written past its offsets at its last start or fault (or has nothing left)."""
        deadline = time.monotonic() + self.cfg.progress_timeout_s
        while True:
            self._check_exits()
            since, base = self.since[role]
            if self.monitor.first_above(role, since, base) is not None or self._caught_up(role):
                self._note_recoveries()
                return
            if time.monotonic() > deadline:
                raise PhaseError(f"{role} made no progress past PS offset {base} within "
                                 f"{self.cfg.progress_timeout_s:g} s")
            time.sleep(0.05)

    def _await_end(self) -> int:
        """Wait for the replay and the poison to be published and every role to have applied the whole topic."""
        limit = len(self.values) / self.spec.rate + self.cfg.progress_timeout_s
        deadline = time.monotonic() + limit
        while self._live():
            self._check_exits()
            self._note_recoveries()
            if time.monotonic() > deadline:
                raise PhaseError("the replay did not finish in time")
            time.sleep(0.2)
        rc = self.replays[-1].current.proc.returncode
        if rc != 0:
            raise PhaseError(f"the replay exited with {rc}: {self.replays[-1].logs()[-1500:]}")
        self.replay_done.set()
        if self.injector is not None:
            self.injector.join(120)
        end = self._final_end()
        deadline = time.monotonic() + self.cfg.progress_timeout_s
        while any(self.monitor.latest(role) != end or not self._joined(role) for role in self.roles):
            self._check_exits()
            self._note_recoveries()
            if time.monotonic() > deadline:
                raise PhaseError(f"not every role reached the topic's end {end}: "
                                 + ", ".join(f"{r} {self.monitor.latest(r)}" for r in self.roles))
            time.sleep(0.1)
        time.sleep(1)  # a caught-up worker's "assigned" line may lag its write
        self._note_recoveries()
        return end

    # -- faults ----------------------------------------------------------------------------------
    def _fault(self, kind: str, t: float, restart_at: float, roles: list[str], **fields) -> dict:
        """Note a fault; the roles' progress is counted from ``restart_at`` on."""
        base = {role: self._offsets(role) for role in roles}
        for role in roles:
            self.since[role] = (restart_at, base[role])
        f = {"kind": kind, "at_s": self._t(t), "live": self._live(), "restart_at": restart_at, "baseline": base,
             "recovery_s": {}, "recovered_by": {}, **fields}
        self.faults.append(f)
        return f

    def _kill(self, role: str) -> None:
        self._await_progress(role)
        time.sleep(self.rng.uniform(0, self.cfg.kill_gap_s))
        t = time.monotonic()
        rc = self.workers[role].kill()
        if rc != -9:  # it had ended on its own just before
            self._note_exit(role, rc, t)
        self._restart(role)
        f = self._fault(f"{role}_sigkill", t, self.workers[role].current.at, [role], rc=rc)
        say(f"{self.spec.name}: {role} SIGKILL #{sum(x['kind'] == f['kind'] for x in self.faults)} at PS offset "
            f"{f['baseline'][role]}{'' if f['live'] else ' (the replay had ended)'}")

    def _redis_fault(self, how: str) -> None:
        """SIGKILL Redis and start it again on the same port: from its files (``aof``), from a copy of them taken
        a few seconds earlier (``older``), or empty (``empty``)."""
        for role in self.roles:
            self._await_progress(role)
        files = self.run_dir / f"redis-{self.redis.port}"
        older = self.run_dir / f"redis-{self.redis.port}-older"
        if how == "older":
            r = redis.Redis.from_url(self.redis_url)
            r.execute_command("BGREWRITEAOF")  # the copy then starts with a whole base file
            while r.info("persistence")["aof_rewrite_in_progress"] or r.info("persistence")["aof_rewrite_scheduled"]:
                time.sleep(0.05)
            r.close()
            shutil.rmtree(older, ignore_errors=True)
            shutil.copytree(files, older)
            self.since["learner"] = (time.monotonic(), self._offsets("learner"))
            self._await_progress("learner")  # something the copy lacks
        time.sleep(self.rng.uniform(0, self.cfg.kill_gap_s))
        if how != "aof" and not self._live():  # an idle learner notices a loss only with its next write
            self.skipped.append({"kind": f"redis_{how}", "why": "the replay had ended: no later write would "
                                 "notice the loss"})
            say(f"{self.spec.name}: Redis fault {how} skipped: the replay had ended")
            return
        before = {role: self._offsets(role) for role in self.roles}
        t = time.monotonic()
        self.redis.kill()
        if how != "aof":
            shutil.rmtree(files)
            if how == "older":
                shutil.copytree(older, files)
            else:
                files.mkdir()
        self.redis = RedisServer(self.run_dir, self.redis.port, aof=True)
        self.redis.start()
        up = time.monotonic()
        f = self._fault(f"redis_{how}", t, up, list(self.roles), down_s=round(up - t, 2), offsets_before=before)
        say(f"{self.spec.name}: Redis SIGKILL, restarted {'from its files' if how == 'aof' else how} in "
            f"{up - t:.1f} s; PS offsets {before} -> {f['baseline']}")

    def _broker_fault(self) -> None:
        for role in self.roles:
            self._await_progress(role)
        time.sleep(self.rng.uniform(0, self.cfg.kill_gap_s))
        before = {role: self._offsets(role) for role in self.roles}
        t = time.monotonic()
        self.broker.kill()
        time.sleep(self.cfg.broker_down_s)
        replay = self.replays[-1]
        replay.stop(60)  # its records after the restart would start the new topic elsewhere than the stream
        summary = [ln for ln in replay.logs().splitlines() if ln.startswith("{")]
        resume = json.loads(summary[-1])["resume"] if summary else 0
        self.broker = TansuBroker(self.run_dir, self.broker.port)
        self.broker.start()
        up = time.monotonic()
        # at once, as an operator would: a consumer's commit to the restarted broker recreates the topic with
        # Tansu's default partition count (4), and a replay then spreads the keys over them
        self._create_topic()
        prefix = self._replay(0, 0, resume)  # the lost topic again, as fast as possible, up to the old position
        if prefix.current.proc.wait(300) != 0:
            raise PhaseError(f"re-publishing the lost topic failed: {prefix.logs()[-1500:]}")
        republished = time.monotonic()
        self._replay(self.spec.rate, resume)
        # progress from the new topic: past what the old one held (acknowledged: up to `resume`) and what the
        # worker wrote of it meanwhile
        base = {role: max(resume, self._offsets(role)) for role in self.roles}
        for role in self.roles:
            self.since[role] = (up, base[role])
        self.faults.append({"kind": "broker_sigkill", "at_s": self._t(t), "live": True, "restart_at": up,
                            "baseline": base, "offsets_before": before, "recovery_s": {}, "recovered_by": {},
                            "down_s": round(up - t, 2),
                            "republished_s": round(republished - up, 2), "replay_stopped_at": resume})
        say(f"{self.spec.name}: broker SIGKILL, back after {up - t:.1f} s; {resume} records published again in "
            f"{republished - up:.1f} s")

    def _drive(self) -> None:
        spec = self.spec
        items_at = {min(spec.kills - 1, int((i + 0.5) * spec.kills / spec.items_kills))
                    for i in range(spec.items_kills)} if spec.items_kills and spec.kills else set()
        for k in range(spec.kills):
            self._kill("learner")
            if k in items_at:
                self._kill("items")
            if k == spec.redis_fault_at_kill:
                for how in spec.redis_faults:
                    self._redis_fault(how)
        if spec.redis_fault_at_kill is None:
            for how in spec.redis_faults:
                self._redis_fault(how)
        if spec.broker:
            self._broker_fault()

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run the phase; its figures (``error`` set when it could not finish)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.redis = RedisServer(self.run_dir, aof=True)
        self.broker = TansuBroker(self.run_dir)
        self.workers = {"learner": Worker("learner", self._learner_argv, self.run_dir, metrics=True),
                        "items": Worker("items", self._items_argv, self.run_dir, metrics=False)}
        error = None
        try:
            self.redis.start()
            self.broker.start()
            self._create_topic()
            self.monitor = FenceMonitor(self.redis_url, self.namespace, self.topic, self.groups)
            self.monitor.start()
            for role in self.roles:
                self.workers[role].start()
                self.since[role] = (self.workers[role].current.at, 0)
            self._replay(self.spec.rate)
            if self.poison:
                self.injector = PoisonInjector(self.bootstrap, self.topic, self.poison,
                                               len(self.poison) / len(self.values), self.replay_done)
                self.injector.start()
            self._await_progress("learner")
            first = self.monitor.first_above("learner", 0, 0)
            self.result["first_write_s"] = round(first - self.workers["learner"].starts[0].at, 2)
            if self.spec.recall_through:
                self.services["through_the_run"] = RecallService(self.redis_url, self.namespace, self.cfg.data_dir,
                                                                 self.run_dir / "recall-0.log")
            self._drive()
            end = self._await_end()
            self.result["topic_end"] = end
            self._finish()
        except Exception as exc:  # the phase's figures so far, with what stopped it
            error = f"{type(exc).__name__}: {exc}"
            say(f"{self.spec.name}: error: {error}")
            traceback.print_exc(file=sys.stderr)
        finally:
            self._cleanup()
        self.result["error"] = error
        return self._report()

    def _create_topic(self) -> None:
        """The stream's topic, one partition (an error when a client created it first with more)."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(self.topic, 1, 1)])
        except TopicAlreadyExistsError:
            parts = [len(t["partitions"]) for t in admin.describe_topics([self.topic])]
            if parts != [1]:
                raise PhaseError(f"topic {self.topic!r} was created by a client with {parts} partitions before the "
                                 "bench could create it with 1") from None
        finally:
            admin.close()

    def _finish(self) -> None:
        """Recall checks while everything runs, then stop the learner and the item channel (SIGTERM)."""
        if self.spec.recall_at_end:
            user = int(_raw_users(self.values[-1:])[0])
            self.services["started_at_end"] = RecallService(self.redis_url, self.namespace, self.cfg.data_dir,
                                                            self.run_dir / "recall-1.log")
            self.result["recall"] = {name: s.check(user) for name, s in self.services.items()}
            self.result["recall"]["user"] = user
        up = {role: self.workers[role].current.proc.poll() is None for role in self.roles}
        for role in self.roles:
            rc = self.workers[role].stop()
            self.result[f"{role}_final"] = {"running_at_end": up[role], "rc_after_sigterm": rc,
                                            "up": up[role] and rc == 0}
        self.result["learner_state"] = learner_check(self.redis_url, self.namespace, self.dim, self.values)
        if self.spec.items:
            state = items_state(self.redis_url, self.namespace)
            self.nb = state["nb"]
            self.result["items_state"] = items_check(state, self.values)
        self.result["topic"] = topic_audit(self.bootstrap, self.topic, self.result["topic_end"])
        if self.poison:
            self.result["dead_letters"] = dead_letters(self.bootstrap, self.topic)

    def _cleanup(self) -> None:
        for s in self.services.values():
            s.stop()
        for w in list(self.workers.values()) + self.replays:
            for s in w.starts:
                if s.proc.poll() is None:
                    s.proc.kill()
                    s.proc.wait(30)
        if self.injector is not None:
            self.replay_done.set()
            self.injector.join(60)
        if self.monitor is not None:
            self.monitor.close()
        for srv in (self.broker, self.redis):
            if srv is not None:
                srv.stop()

    # -- figures ---------------------------------------------------------------------------------
    def _recoveries(self) -> None:
        """Recoveries not seen while the phase ran (the monitor's samples have them), then drop the internals."""
        if self.monitor is not None:
            self._note_recoveries()
        for f in self.faults:
            f.pop("restart_at")
            for role in f["baseline"]:
                f["recovery_s"].setdefault(role, None)

    def _poison_report(self) -> dict:
        counted = {m["offset"] for m in self.workers["learner"].metrics_records() if m.get("event") == "poison"}
        return poison_report(self.poison, self.injector.result if self.injector else None,
                             self.result.pop("dead_letters", []), counted,
                             self.result.get("topic", {}).get("poison_at"))

    def _report(self) -> dict:
        self._recoveries()
        out = {"checks": self.spec.checks, "rate": self.spec.rate, "on_ps_loss": self.spec.on_ps_loss,
               "namespace": self.namespace, "topic": self.topic, "run_dir": str(self.run_dir),
               "seconds": round(time.monotonic() - self.t0, 1), "error": self.result.get("error"),
               "first_write_s": self.result.get("first_write_s"), "topic_end": self.result.get("topic_end"),
               "faults": self.faults, "skipped_faults": self.skipped, "recovery_s": recovery_summary(self.faults)}
        if "topic" in self.result:
            out["topic"] = {k: v for k, v in self.result["topic"].items() if k != "poison_at"}
        state = self.result.get("learner_state")
        if state is not None:
            out["events"] = state
        if "items_state" in self.result:
            out["item_channel"] = self.result["items_state"]
        if self.poison:
            out["poison"] = self._poison_report()
        learner = self.workers["learner"]
        end = [m for m in learner.metrics_records() if m.get("event") == "end"]
        last = end[-1] if end else {}
        out["learner"] = {
            "processes": len(learner.starts), "unexpected_exits": [e for e in self.exits if not e["expected"]],
            "ps_state_lost_exits": sum(e["ps_state_lost"] for e in self.exits if e["role"] == "learner"),
            "rebuilds": sum(m.get("event") == "rebuild" for m in learner.metrics_records()),
            "tracebacks": learner.logs().count("Traceback"),
            **self.result.get("learner_final", {}),
            "end": {k: last.get(k) for k in ("reason", "test_auc", "warm_auc", "hr_at_50", "duplicates", "poison",
                                             "rebuilds", "ps_state_lost")}}
        if self.spec.items:
            items = self.workers["items"]
            out["item_channel_worker"] = {"processes": len(items.starts), "tracebacks": items.logs().count("Traceback"),
                                          **self.result.get("items_final", {})}
        if "recall" in self.result:
            out["recall"] = self.result["recall"]
        out["replays"] = [{"rc": r.current.proc.returncode, "summary": _replay_summary(r)} for r in self.replays]
        return out


def _raw_users(values: list[bytes]):
    from lfm_stream.schema import parse_batch

    return parse_batch(values)["raw_user_id"]


def _replay_summary(w: Worker) -> dict | None:
    lines = [ln for ln in w.logs().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


