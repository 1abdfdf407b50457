"""Recall service latency and throughput over HTTP (and freshness), printed as JSON.

    python bench/api.py                                  # ~9k synthetic movies, local redis-server
    python bench/api.py --movies 1000000 --faiss both    # 1M synthetic movies, brute force and Faiss
    python bench/api.py --redis-url URL --namespace lfm --data-dir DIR   # a trained model
    python bench/api.py --freshness --data-dir DIR       # + event -> answer freshness (needs Kafka)
    python bench/api.py --variant nocache=--user-cache=0 --variant cache= --rounds 3   # paired A/B in one run

What runs: the service as its own process (``python -m recall_api``, uvicorn, one worker) on a free
loopback port, and a load generator in this process (``bench/loadgen.py``): ``--concurrency`` keep-alive
HTTP/1.1 connections (bare asyncio protocols on uvloop, no cyclic GC during a pass: ~20-50 µs of client
CPU per request, on the same 2 cores), each sending its next request when the previous answer arrived
(closed loop), bounded by ``--requests`` and ``--seconds``.  Latency is request-write to last-body-byte.
u2i asks random users that have a vector, i2i random movies; k = --k.  With the default 600 users every
user is asked many times, so after the warm-up u2i is answered from the service's user cache (kept exact
by Redis key tracking; its hit/miss counters are in the output); ``--service-arg=--user-cache=0`` measures
a Redis read per request.  Per endpoint: ``unloaded`` (one connection, closed loop: pure latency),
``loaded`` (``--concurrency`` connections, closed loop: saturation throughput, latency includes queueing)
and ``paced`` (open loop at ``--paced-qps`` requests/s: the latency at that rate, charged from the
scheduled send time).  ``--variant`` runs several service configurations against the same data within one
run, alternating (A B, B A, ...) for ``--rounds`` rounds, so that a shared machine's load falls on all of them;
each pass records the 1-minute load average before and after.

Synthetic mode fills a fresh namespace of a redis-server started here (``bench/synthetic_ps.py``:
``put_rows``, whole rows with raw ids) with ``--movies`` item and ``--users`` user vectors (dim --dim) and
~``--seen`` rated movies per user.
Freshness (``--freshness``): a local redis-server + Tansu, the service, one learner and
``producer.replay --rate 1000`` of the prepared train shards run together; into the same topic this script
injects probe events (a new user rates a new movie, raw ids beyond the data set) every ``--probe-every``
seconds and polls the service every ``--poll-ms``: the *item* delay is produce -> first 200 of
``/i2i/<probe movie>`` (learner push + activity log + the service's incremental refresh), the *user* delay is
produce -> first ``source: model`` answer of ``/u2i/<probe user>`` (learner push; the user row is read live).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import load, query_paths  # noqa: E402
from bench.synthetic_ps import churn_user_rows, fill_synthetic  # noqa: E402
from lfm_local.stack import LocalStack, free_port  # noqa: E402


# ---------------------------------------------------------------------------------------- server
class Service:
    """``python -m recall_api`` as a subprocess on a free port."""

    def __init__(self, redis_url: str, namespace: str, data_dir: str | None, faiss: bool, nprobe: int,
                 log_path: Path, extra: list[str] | tuple[str, ...] = ()):
        self.port = free_port()
        argv = [sys.executable, "-m", "recall_api", "--host", "127.0.0.1", "--port", str(self.port),
                "--redis-url", redis_url, "--namespace", namespace, "--faiss-nprobe", str(nprobe), *extra]
        if data_dir:
            argv += ["--data-dir", data_dir]
        if faiss:
            argv.append("--faiss")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds until /healthz answered 200 (vectors loaded)."""
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recall_api exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.base + "/healthz", timeout=5).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"recall_api not ready within {timeout} s; see {self.log.name}")

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.base + "/stats", timeout=10).json()

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the service process used so far, from /proc (None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------- passes
def timed(svc: Service, run, *args) -> dict:
    """``run(*args)`` (a load pass) plus the service's CPU time per answered request, in µs: unlike latency and
    throughput, barely moved by other processes on a shared machine."""
    cpu0 = svc.cpu_seconds()
    out = run(*args)
    cpu1 = svc.cpu_seconds()
    if cpu0 is not None and cpu1 is not None and out["requests"]:
        out["service_cpu_us_per_request"] = round((cpu1 - cpu0) / out["requests"] * 1e6, 1)
    return out


def bench_service(svc: Service, users: np.ndarray, movies: np.ndarray, args: argparse.Namespace,
                  redis_url: str = "", namespace: str = "") -> dict:
    """Warm up, then a concurrency-1 pass and a loaded pass per endpoint (with ``--churn``: while another
    process rewrites user rows, so the service's user cache sees invalidations as under a learner)."""
    import multiprocessing

    out: dict = {}
    for kind, ids in (("u2i", users), ("i2i", movies)):
        if kind not in args.endpoints:
            continue
        paths = query_paths(kind, ids, args.k, 20_000, args.seed)
        load(svc.port, paths, 2, min(500, args.requests), 10)  # warm-up
        churn = None
        if args.churn and kind == "u2i":
            span = args.seconds * (2.5 if args.paced_qps else 1.5) + 5
            churn = multiprocessing.get_context("spawn").Process(
                target=churn_user_rows, args=(redis_url, namespace, users, args.churn, time.time() + span, args.seed))
            churn.start()
            time.sleep(1.0)
        try:
            out[kind] = {
                "unloaded": timed(svc, load, svc.port, paths, 1, min(args.requests, 2000), args.seconds / 2),
                "loaded": timed(svc, load, svc.port, paths, args.concurrency, args.requests, args.seconds),
            }
            if args.paced_qps:
                out[kind]["paced"] = timed(svc, load, svc.port, paths, args.concurrency, args.requests, args.seconds,
                                           args.paced_qps)
        finally:
            if churn is not None:
                churn.terminate()
                churn.join()
        if churn is not None:
            out[kind]["churn_user_rows_per_s"] = args.churn
    return out


def faiss_agreement(redis_url: str, namespace: str, args: argparse.Namespace, users: np.ndarray,
                    movies: np.ndarray, n: int = 200) -> dict:
    """Mean |top-k(Faiss) ∩ top-k(brute force)| / k over random users (u2i) and movies (i2i), in-process."""
    from recall_api import RecallStore, StoreConfig

    exact = RecallStore(StoreConfig(redis_url, namespace))
    approx = RecallStore(StoreConfig(redis_url, namespace, faiss=True, faiss_nprobe=args.nprobe))
    exact.refresh_once(), approx.refresh_once()
    rng = np.random.default_rng(args.seed + 1)
    out = {"nprobe": args.nprobe, "k": args.k, "queries": n}
    for kind, ids in (("u2i", users), ("i2i", movies)):
        overlap = []
        for i in rng.choice(ids, size=n).tolist():
            a = getattr(approx, kind)(int(i), args.k).movies
            b = getattr(exact, kind)(int(i), args.k).movies
            overlap.append(len(set(a) & set(b)) / max(1, len(b)))
        out[f"{kind}_overlap_at_k"] = round(float(np.mean(overlap)), 4)
    return out


# -------------------------------------------------------------------------------------- freshness
def _probe_record(j: int, ts: int) -> tuple[bytes, bytes, int, int]:
    """(key, value, raw user, raw movie) of probe event j: new user 10^9 + j rates new movie 10^9 + j."""
    from lfm_stream.hashing import movie_hash, user_hash
    from lfm_stream.schema import encode_examples

    ru, rm = 1_000_000_000 + j, 1_000_000_000 + j
    buf, off = encode_examples(dict(
        user_id=np.array([user_hash(ru)]), movie_id=np.array([movie_hash(rm)]), raw_user_id=np.array([ru]),
        raw_movie_id=np.array([rm]), rating=np.array([5.0], np.float32), label=np.array([1.0], np.float32),
        timestamp=np.array([ts])))
    return str(user_hash(ru)).encode(), buf[off[0]:off[1]].tobytes(), ru, rm


def measure_freshness(args: argparse.Namespace, run_dir: Path) -> dict:
    """Produce -> visible-in-answer delays of probe events injected into a --rate stream (see module doc)."""
    import httpx
    from kafka import KafkaProducer

    sys.path.insert(0, str(ROOT / "bench"))
    import recall as pipeline  # bench/recall.py: prepare / start_learner / replay helpers

    data_dir = Path(args.data_dir or "/tmp/lfm-bench-data/ml-latest-small")
    pipeline.prepare(pipeline.DEFAULT_RATINGS, data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    stack = LocalStack(run_dir / "fresh", use_env=False).start()
    procs: list = []
    svc = None
    try:
        ns, topic = f"fr{uuid.uuid4().hex[:6]}", f"ratings-{uuid.uuid4().hex[:6]}"
        from ps_redis import ParameterServer

        dim = 32
        for a in args.learner_arg:
            if a.startswith("--dim="):
                dim = int(a.split("=", 1)[1])
        ParameterServer.get(stack.redis_url, ns, dim=dim)
        svc = Service(stack.redis_url, ns, str(data_dir), False, args.nprobe, run_dir / "recall-fresh.log")
        svc.wait_ready()
        procs.append(pipeline.start_learner(data_dir, stack.redis_url, stack.bootstrap, ns, topic,
                                            run_dir / "learner-fresh.log", 0, tuple(args.learner_arg)))
        procs.append(pipeline.replay(data_dir, stack.bootstrap, topic, args.rate, run_dir / "fresh-state.json",
                                     run_dir / "replay-fresh.log"))
        client = httpx.Client(base_url=svc.base, timeout=10)
        t_wait = time.perf_counter()
        while client.get("/stats").json()["vectors_loaded"] == 0:  # learner joined and training
            if time.perf_counter() - t_wait > 120:
                raise RuntimeError(f"no vectors after 120 s; see {run_dir}/learner-fresh.log")
            time.sleep(0.2)
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=0, acks=1)
        ts = int(manifest["time_range"][1])
        pending: dict[int, dict] = {}
        item_delay, user_delay = [], []
        sent = 0
        next_probe = time.perf_counter()
        deadline = next_probe + args.probes * args.probe_every + 30
        while (sent < args.probes or pending) and time.perf_counter() < deadline:
            now = time.perf_counter()
            if sent < args.probes and now >= next_probe:
                key, value, ru, rm = _probe_record(sent, ts)
                t0 = time.perf_counter()
                producer.send(topic, key=key, value=value, timestamp_ms=ts * 1000)
                producer.flush()
                pending[sent] = {"t0": t0, "user": ru, "movie": rm, "item_done": False, "user_done": False}
                sent += 1
                next_probe += args.probe_every
            for j, pr in list(pending.items()):
                if not pr["item_done"] and client.get(f"/i2i/{pr['movie']}?k=1").status_code == 200:
                    pr["item_done"] = True
                    item_delay.append(time.perf_counter() - pr["t0"])
                if not pr["user_done"]:
                    r = client.get(f"/u2i/{pr['user']}?k=1")
                    if r.status_code == 200 and r.json()["source"] == "model":
                        pr["user_done"] = True
                        user_delay.append(time.perf_counter() - pr["t0"])
                if pr["item_done"] and pr["user_done"]:
                    del pending[j]
            time.sleep(args.poll_ms / 1000.0)
        producer.close()
        stats = client.get("/stats").json()

        def summary(d: list[float]) -> dict:
            if not d:
                return {"n": 0}
            ms = np.array(d) * 1000
            return {"n": len(d), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                    "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}

        return {"rate": args.rate, "probes_sent": sent, "never_seen": len(pending), "poll_ms": args.poll_ms,
                "learner_args": args.learner_arg, "item_visible_in_i2i": summary(item_delay),
                "user_visible_in_u2i": summary(user_delay), "service_refresh_interval_s": stats["refresh_interval_s"],
                "vectors_loaded_at_end": stats["vectors_loaded"], "lag_s_at_end": stats["lag_s"]}
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if svc is not None:
            svc.stop()
        stack.stop()


def run_service(args: argparse.Namespace, redis_url: str, namespace: str, users: np.ndarray, movies: np.ndarray,
                run_dir: Path, faiss: bool, extra: list[str]) -> dict:
    """Start the service with ``extra`` flags, run :func:`bench_service` against it, stop it; the machine's load
    average (1 min) is taken before and after."""
    load_before = os.getloadavg()[0]
    svc = Service(redis_url, namespace, args.data_dir, faiss, args.nprobe, run_dir / "recall.log", extra)
    try:
        ready = svc.wait_ready()
        entry = {"startup_s": round(ready, 2), "service_args": extra,
                 **bench_service(svc, users, movies, args, redis_url, namespace)}
        st = svc.stats()
        entry["vectors_loaded"] = st["vectors_loaded"]
        entry["user_cache"] = st.get("user_cache")
        entry["index"] = st["index"] if not faiss else {"faiss": st["faiss"]}
    finally:
        svc.stop()
    entry["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return entry


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """``NAME=FLAGS`` specs of ``--variant`` -> {name: service flags}."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name in variants:
            raise SystemExit(f"--variant must be NAME=FLAGS with a new NAME (got {spec!r})")
        variants[name] = shlex.split(flags)
    return variants


def ab_summary(rounds: list[dict[str, dict]]) -> dict:
    """Per variant, endpoint and pass: the rounds' QPS, p50, p99 and service CPU per request with their medians."""
    out: dict = {}
    for name in rounds[0]:
        for kind in ("u2i", "i2i"):
            for pass_ in ("unloaded", "loaded", "paced"):
                got = [r[name][kind][pass_] for r in rounds if pass_ in r[name].get(kind, {})]
                if not got:
                    continue
                row = out.setdefault(name, {}).setdefault(kind, {})[pass_] = {}
                for field in ("qps", "p50_ms", "p99_ms", "service_cpu_us_per_request"):
                    values = [g[field] for g in got if field in g]
                    row[field] = values
                    row[f"median_{field}"] = round(float(np.median(values)), 3)
    return out


def bench_http(args: argparse.Namespace, result: dict, run_dir: Path, redis_url: str) -> None:
    """Latency / throughput passes of the service (brute force and / or Faiss) over the PS at ``redis_url``;
    with ``--variant``: every variant once per round, alternating order, on the same data (paired A/B)."""
    namespace = args.namespace
    if namespace is None:
        namespace = f"bench{uuid.uuid4().hex[:6]}"
        result["synthetic"] = {"movies": args.movies, "users": args.users, "dim": args.dim, "seen": args.seen,
                               **fill_synthetic(redis_url, namespace, args.movies, args.users, args.dim,
                                                args.seen, args.seed)}
    from ps_redis import ParameterServer

    ps = ParameterServer.get(redis_url, namespace, dim=None)
    users = np.concatenate([r.raw for r in ps.scan("user")])
    movies = np.concatenate([r.raw for r in ps.scan("item")])
    users, movies = users[users >= 0], movies[movies >= 0]
    result["model"] = {"namespace": namespace, "dim": ps.dim, "movies": int(len(movies)), "users": int(len(users))}
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.faiss]
    variants = parse_variants(args.variant)
    for faiss in modes:
        if not variants:
            result["faiss" if faiss else "brute_force"] = run_service(args, redis_url, namespace, users, movies,
                                                                      run_dir, faiss, args.service_arg)
            continue
        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            rounds.append({name: run_service(args, redis_url, namespace, users, movies, run_dir, faiss,
                                             [*args.service_arg, *variants[name]]) for name in order})
        result["faiss" if faiss else "brute_force"] = {"variants": {n: args.service_arg + f for n, f in variants.items()},
                                                       "summary": ab_summary(rounds), "rounds": rounds}
    if True in modes:
        result["faiss"]["agreement_with_brute_force"] = faiss_agreement(redis_url, namespace, args, users, movies)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/api.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default=None, help="use this PS (default: start a local redis-server)")
    p.add_argument("--namespace", default=None, help="namespace of a trained model (default: synthetic fill)")
    p.add_argument("--data-dir", default=None, help="prepared data directory (titles, known users)")
    p.add_argument("--movies", type=int, default=9000, help="synthetic movies (default 9000)")
    p.add_argument("--users", type=int, default=600, help="synthetic users (default 600)")
    p.add_argument("--seen", type=int, default=150, help="synthetic rated movies per user (default 150)")
    p.add_argument("--dim", type=int, default=32, help="synthetic vector dimension (default 32)")
    p.add_argument("--faiss", choices=["no", "yes", "both"], default="no", help="rank with Faiss (default no)")
    p.add_argument("--nprobe", type=int, default=128, help="Faiss lists probed (default 128)")
    p.add_argument("--endpoints", type=lambda v: v.split(","), default=["u2i", "i2i"],
                   help="endpoints to load, comma-separated (default u2i,i2i)")
    p.add_argument("--k", type=int, default=50, help="k of every query (default 50)")
    p.add_argument("--concurrency", type=int, default=8, help="connections of the loaded pass (default 8)")
    p.add_argument("--requests", type=int, default=20_000, help="max requests per pass (default 20000)")
    p.add_argument("--seconds", type=float, default=10.0, help="max seconds per pass (default 10)")
    p.add_argument("--paced-qps", type=float, default=2000,
                   help="open-loop pass at this total rate, latency from the scheduled send (0 = skip; default 2000)")
    p.add_argument("--service-arg", action="append", default=[],
                   help="extra flag of the service, e.g. --service-arg=--user-cache=0 (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="paired A/B: a service variant, e.g. --variant 'nocache=--user-cache=0' --variant base= "
                        "(repeatable); each round runs every variant once on the same data, the order reversed "
                        "every other round, the --service-arg flags added to each")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the --variant A/B (default 1)")
    p.add_argument("--churn", type=float, default=0,
                   help="during the u2i passes, another process rewrites this many random user rows per second "
                        "(as a learner's pushes would; exercises the user cache's invalidation; default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freshness", action="store_true", help="also measure freshness (needs Kafka: Tansu is started)")
    p.add_argument("--fresh-only", action="store_true", help="only the freshness measurement")
    p.add_argument("--rate", type=float, default=1000, help="replay rate of the freshness run (default 1000)")
    p.add_argument("--probes", type=int, default=60, help="probe events of the freshness run (default 60)")
    p.add_argument("--probe-every", type=float, default=0.4, help="seconds between probes (default 0.4)")
    p.add_argument("--poll-ms", type=float, default=10, help="poll interval of a pending probe (default 10)")
    p.add_argument("--learner-arg", action="append", default=[], help="extra learner flag for the freshness run")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    result: dict = {"bench": "recall_api", "cpus": os.cpu_count(), "k": args.k,
                    "note": "measured on a shared 2-core machine unless stated otherwise",
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    run_dir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    stack = None
    try:
        if not args.fresh_only:
            if args.redis_url is None:
                stack = LocalStack(run_dir, kafka=False, use_env=False).start()
            bench_http(args, result, run_dir, args.redis_url or stack.redis_url)
        if args.freshness or args.fresh_only:
            result["freshness"] = measure_freshness(args, run_dir)
    finally:
        if stack is not None:
            stack.stop()
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
