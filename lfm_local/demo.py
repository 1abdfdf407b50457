"""``lfm demo``: the whole pipeline on local servers in one command.

Starts redis-server and the Tansu broker (or uses ``REDIS_URL`` / ``KAFKA_BOOTSTRAP``), prepares
MovieLens into TFRecord shards, replays them into Kafka, trains the default model and the seed preset
side by side (two consumer groups on one topic, two PS namespaces), draws the AUC plot, starts the
recall API and prints a report: final test AUC / HR@50 of both models, a u2i and an i2i example with
titles, the plot path, the redis-cli one-liner and the API URL.  ``--once`` exits after the report
(tests and CI); otherwise the API keeps serving until Ctrl-C.

The data comes first, before any server starts: ``--ratings PATH`` (or ``$LFM_RATINGS``), else
``$LFM_DATA/ml-latest-small/``, else a verified download of ml-latest-small (cached, so only the first run needs
the network).  When that download fails the demo says how to point it at a file and goes on with synthetic data
(``producer.prepare --synthetic N --planted``), labelled as such in the report, so it always completes;
``--synthetic [N]`` asks for that data directly.  An explicit ``--ratings`` or ``--download`` that fails is an error.

Every stage is the real entry point run as a subprocess (``python -m producer.prepare``,
``producer.replay``, ``learner``, ``learner.plot``, ``recall_api``), so the demo exercises exactly
what a user runs by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lfm_local.stack import LocalStack, StackError, free_port
from lfm_stream.config import DATASET_DIR_ENV, default_cache_dir, env_default, env_help
from lfm_stream.version import add_version_flag

PY = sys.executable
RATINGS_ENV = "LFM_RATINGS"  # producer.prepare's fallback for --ratings: the demo passes its choice explicitly
DEFAULT_SYNTHETIC = 100_000  # ratings, about the size of ml-latest-small


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; built from the CLI flags."""

    workdir: Path
    ratings: Path | None
    download: str | None
    synthetic: int | None
    rate: float
    max_events: int | None
    once: bool
    port: int
    seed_preset: bool
    namespace: str


def _say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, env: dict[str, str]) -> None:
    _say(f"{what}: {' '.join(argv[1:])}")
    proc = subprocess.run(argv, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {proc.returncode}")


@dataclass(frozen=True)
class DataSource:
    """Where the demo's events come from: ``producer.prepare`` input flags, its output and a label for the report."""

    flags: list[str]
    prepared: Path
    label: str
    synthetic: bool = False


def _synthetic_source(workdir: Path, n: int) -> DataSource:
    return DataSource(["--synthetic", str(n), "--planted"], workdir / f"prepared-synthetic-{n}",
                      f"SYNTHETIC data ({n:,} generated ratings with planted structure; not MovieLens)", synthetic=True)


def _data_source(cfg: DemoConfig) -> DataSource:
    """The source the flags and the environment ask for (checked, not prepared yet)."""
    prepared = cfg.workdir / "prepared"
    if cfg.synthetic is not None:
        return _synthetic_source(cfg.workdir, cfg.synthetic)
    if cfg.ratings is not None:
        if not cfg.ratings.is_file():
            raise FileNotFoundError(f"--ratings {cfg.ratings}: no such file (give a MovieLens ratings.csv / "
                                    "ratings.dat / u.data, with movies.csv beside it for titles)")
        return DataSource(["--ratings", str(cfg.ratings)], prepared, f"{cfg.ratings}")
    data = env_default(DATASET_DIR_ENV)
    if data and cfg.download is None:
        path = Path(data) / "ml-latest-small" / "ratings.csv"
        if path.exists():
            return DataSource(["--ratings", str(path)], prepared, f"MovieLens ml-latest-small ({path})")
        _say(f"{DATASET_DIR_ENV}={data} has no ml-latest-small/ratings.csv; downloading instead")
    name = cfg.download or "ml-latest-small"
    return DataSource(["--download", name], prepared, f"MovieLens {name} (download cache {default_cache_dir()})")


def _offline_hint(name: str) -> list[str]:
    return [f"could not download MovieLens {name} (offline? see the error above). To use MovieLens data:",
            "  ./lfm demo --ratings PATH/ratings.csv   a ratings file you have (movies.csv beside it gives titles)",
            f"  {DATASET_DIR_ENV}=DIR ./lfm demo            DIR holds ml-latest-small/ratings.csv",
            f"  or run once with network access: the verified download is cached in {default_cache_dir()}"]


def _prepare_argv(source: DataSource) -> list[str]:
    """``producer.prepare`` for ``source``: reuses its output unless that was prepared from other data."""
    reuse = "--if-missing"
    try:
        manifest = json.loads((source.prepared / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    if manifest is not None and source.flags[0] == "--ratings":
        if Path(manifest.get("source", {}).get("path", "")).resolve() != Path(source.flags[1]).resolve():
            reuse = "--force"
    elif manifest is not None and source.flags[0] == "--download":
        if manifest.get("download", {}).get("name") != source.flags[1]:
            reuse = "--force"
    return [PY, "-m", "producer.prepare", *source.flags, "--out", str(source.prepared), reuse]


def prepare_data(cfg: DemoConfig, env: dict[str, str]) -> DataSource:
    """Prepare the demo's data (reused when already prepared); runs before any server starts.

    A failed default download falls back to synthetic data after saying how to give MovieLens data.

    Raises:
        FileNotFoundError: ``--ratings`` names no file.
        RuntimeError: the preparation failed (an explicit ``--download`` included).
    """
    source = _data_source(cfg)
    env = {k: v for k, v in env.items() if k != RATINGS_ENV}  # the source is in the flags: nothing may override it
    argv = _prepare_argv(source)
    _say(f"data: {source.label}")
    _say(f"prepare: {' '.join(argv[1:])}")
    code = subprocess.run(argv, env=env).returncode
    if code == 0:
        return source
    if source.flags[0] != "--download":
        raise RuntimeError(f"prepare failed with exit code {code}")
    for line in _offline_hint(source.flags[1]):
        _say(line)
    if cfg.download is not None:  # asked for by name: no substitute
        raise RuntimeError(f"the download of {cfg.download} failed (exit code {code})")
    source = _synthetic_source(cfg.workdir, DEFAULT_SYNTHETIC)
    _say(f"continuing with {source.label} so that the demo completes: its figures are not MovieLens figures "
         "(--synthetic asks for this data directly)")
    _run(_prepare_argv(source), "prepare", env)
    return source


def _wait_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> None:
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        while topic not in admin.list_topics():
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} did not appear on {bootstrap}")
            time.sleep(0.2)
    finally:
        admin.close()


def _last_event(metrics: Path, name: str) -> dict:
    found: dict = {}
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == name:
                found = rec
    return found


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"recall API exited with code {proc.returncode}")
        try:
            _get_json(url, 1.0)
            return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"recall API did not answer {url}")


def _examples(redis_url: str, namespace: str) -> tuple[int | None, int | None]:
    """A user with a trained vector and a trained movie (318 when it has one) for the report."""
    from ps_redis import ParameterServer
    from ps_redis.activity import ActivityLog

    from lfm_stream.hashing import movie_hash

    ps = ParameterServer.get(redis_url, namespace, dim=None)
    user = None
    for rows in ps.scan("user", chunk=1024):
        trained = [int(r) for r, c in zip(rows.raw, rows.count) if c > 0 and r >= 0]
        if trained:
            user = min(trained)
            break
    movie = None
    shawshank = ps.pull("item", [movie_hash(318)], create=False)
    if shawshank.found[0] and shawshank.count[0] > 0:
        movie = 318
    else:
        top = ActivityLog(ps).popular(1)
        movie = int(top[0][0]) if top else None
    return user, movie


def _movie_title(prepared: Path, movie: int | None) -> str | None:
    from recall_api.catalog import read_movies

    path = prepared / "movies.csv"
    if movie is None or not path.exists():
        return None
    found = read_movies(path).get(movie)
    return None if found is None else found.title


def _fmt_items(answer: dict) -> list[str]:
    out = []
    for it in answer.get("items", [])[:10]:
        genres = it.get("genres", "")
        genres = "|".join(genres) if isinstance(genres, list) else genres
        out.append(f"    {it.get('movie_id'):>7}  {it.get('score', 0):8.3f}  {it.get('title', '')}  [{genres}]")
    return out


def run(cfg: DemoConfig) -> dict:
    """Run the pipeline; returns the report (also written to ``<workdir>/report.json``)."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    # the data first: a missing file or a failed download is reported before any server starts
    data = prepare_data(cfg, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    prepared = data.prepared
    stamp = time.strftime("%Y%m%d%H%M%S")
    topic = f"ratings-demo-{stamp}"
    procs: list[subprocess.Popen] = []
    stack = LocalStack(cfg.workdir / "run")
    try:
        # the servers get a session of their own: a Ctrl-C reaches the demo and its clients, and the servers
        # stay up until the clients have stopped (no lost final write, no "redis unavailable" at exit)
        stack.start(detach=True)
        _say(f"Redis {stack.redis_url}   Kafka {stack.bootstrap}")
        env = {**os.environ, **stack.env(), "TF_CPP_MIN_LOG_LEVEL": "2"}
        manifest = json.loads((prepared / "manifest.json").read_text())
        events = manifest["train_records"] if cfg.max_events is None else min(cfg.max_events, manifest["train_records"])

        replay = [PY, "-m", "producer.replay", "--data-dir", str(prepared), "--bootstrap", stack.bootstrap,
                  "--topic", topic, "--rate", str(cfg.rate), "--partitions", "1", "--max-events", str(events),
                  "--state-file", str(cfg.workdir / "replay-state.json")]
        _say(f"replay: {events} events at {'max speed' if cfg.rate == 0 else f'{cfg.rate:g}/s'} into {topic}")
        replay_proc = subprocess.Popen(replay, env=env)
        procs.append(replay_proc)
        _wait_topic(stack.bootstrap, topic)

        models = {"default": (cfg.namespace, [])}
        if cfg.seed_preset:
            models["seed"] = (f"{cfg.namespace}-seed", ["--preset", "seed"])
        learners = {}
        for name, (ns, extra) in models.items():
            metrics = cfg.workdir / f"metrics-{name}.jsonl"
            metrics.unlink(missing_ok=True)
            argv = [PY, "-m", "learner", "--redis-url", stack.redis_url, "--bootstrap", stack.bootstrap,
                    "--topic", topic, "--group", f"demo-{name}-{stamp}", "--namespace", ns,
                    "--data-dir", str(prepared), "--metrics", str(metrics), "--max-events", str(events),
                    "--idle-timeout", "60", "--checkpoint-dir", str(cfg.workdir / "checkpoints"),
                    "--progress-interval", "0",  # the replay's bar is the demo's progress: one bar per terminal
                    *extra]
            log = None if name == "default" else open(cfg.workdir / f"learner-{name}.log", "w")
            _say(f"learner ({name}) -> namespace {ns}" + ("" if log is None else f", log {log.name}"))
            learners[name] = (subprocess.Popen(argv, env=env, stderr=log), metrics, ns)
            procs.append(learners[name][0])
        # the item channel of the default model (co-occurrence, recent movies, stream popularity: its own group)
        items_log = open(cfg.workdir / "items.log", "w")
        items = subprocess.Popen([PY, "-m", "learner.items", "--redis-url", stack.redis_url, "--bootstrap",
                                  stack.bootstrap, "--topic", topic, "--group", f"demo-items-{stamp}",
                                  "--namespace", cfg.namespace, "--max-events", str(events), "--idle-timeout", "60"],
                                 env=env, stderr=items_log)
        _say(f"item channel -> namespace {cfg.namespace}, log {items_log.name}")
        procs.append(items)
        if replay_proc.wait() != 0:
            raise RuntimeError(f"replay failed with exit code {replay_proc.returncode}")
        for name, (proc, _, _) in learners.items():
            if proc.wait() != 0:
                raise RuntimeError(f"learner ({name}) failed with exit code {proc.returncode}")
        if items.wait() != 0:
            raise RuntimeError(f"item channel failed with exit code {items.returncode}; see {items_log.name}")

        plot = cfg.workdir / "auc.png"
        _run([PY, "-m", "learner.plot", *[str(m) for _, m, _ in learners.values()], "-o", str(plot)], "plot", env)

        port = cfg.port or free_port()
        api_url = f"http://127.0.0.1:{port}"
        api = subprocess.Popen([PY, "-m", "recall_api", "--host", "127.0.0.1", "--port", str(port),
                                "--redis-url", stack.redis_url, "--namespace", cfg.namespace,
                                "--data-dir", str(prepared)], env=env)
        procs.append(api)
        _wait_http(f"{api_url}/healthz", api)
        user, movie = _examples(stack.redis_url, cfg.namespace)
        u2i = _get_json(f"{api_url}/u2i/{user}?k=10") if user is not None else {}
        i2i = _get_json(f"{api_url}/i2i/{movie}?k=10") if movie is not None else {}
        i2i_title = _movie_title(prepared, movie)

        results = {name: _last_event(m, "end") for name, (_, m, _) in learners.items()}
        keys = ("test_auc", "warm_auc", "hr_at_10", "hr_at_50", "recall_at_50", "prequential_auc", "events")
        report = {
            "events": events,
            "data": {"label": data.label, "synthetic": data.synthetic, "prepared": str(prepared)},
            "models": {name: {k: r.get(k) for k in keys} for name, r in results.items()},
            "popularity_hr_at_50": results["default"].get("popularity_hr_at_50"),
            "u2i": {"user_id": user, **u2i},
            "i2i": {"movie_id": movie, **i2i},
            "i2i_title": i2i_title,
            "plot": str(plot.resolve()),
            "api_url": api_url,
            "redis_cli": f"redis-cli -u {stack.redis_url} FCALL lfm_movie 0 {cfg.namespace} {movie or 318}",
            "redis_url": stack.redis_url,
            "kafka_bootstrap": stack.bootstrap,
        }
        (cfg.workdir / "report.json").write_text(json.dumps(report, indent=2))
        _print_report(report)
        if not cfg.once:
            _say(f"recall API running at {api_url} (docs: {api_url}/docs, live dashboard: {api_url}/dashboard); "
                 "Ctrl-C stops everything")
            try:
                api.wait()
            except KeyboardInterrupt:
                pass
        return report
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        stack.stop()


def _print_report(r: dict) -> None:
    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    lines = ["", "=" * 72, f"LFM Stream demo — {r['events']} events of {r['data']['label']}", "",
             f"  {'model':<10}{'test AUC':>10}{'warm AUC':>10}{'HR@10':>8}{'HR@50':>8}{'preq AUC':>10}"]
    for name, m in r["models"].items():
        lines.append(f"  {name:<10}{f(m['test_auc']):>10}{f(m['warm_auc']):>10}{f(m['hr_at_10']):>8}"
                     f"{f(m['hr_at_50']):>8}{f(m['prequential_auc']):>10}")
    if r.get("popularity_hr_at_50") is not None:
        lines.append(f"  {'popularity':<10}{'':>10}{'':>10}{'':>8}{f(r['popularity_hr_at_50']):>8}")
    u2i, i2i = r["u2i"], r["i2i"]
    lines += ["", f"  u2i for user {u2i.get('user_id')} ({u2i.get('source', 'n/a')}):", *_fmt_items(u2i),
              "", f"  i2i for movie {i2i.get('movie_id')} {r.get('i2i_title') or ''}:",
              *_fmt_items(i2i), "",
              f"  AUC plot:    {r['plot']}",
              f"  a vector:    {r['redis_cli']}",
              f"  recall API:  {r['api_url']}/u2i/{u2i.get('user_id')}?k=10   {r['api_url']}/docs",
              f"  dashboard:   {r['api_url']}/dashboard",
              "=" * 72]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    """``lfm demo``: prepare → replay → train (default and seed preset) → report → serve recall."""
    p = argparse.ArgumentParser(prog="lfm demo", description=__doc__.split("\n\n")[0])
    add_version_flag(p)
    src = p.add_mutually_exclusive_group()
    ratings_env = env_default(RATINGS_ENV)
    src.add_argument("--ratings", type=Path, default=Path(ratings_env) if ratings_env else None,
                     help=env_help(f"MovieLens ratings file (default: ${DATASET_DIR_ENV}/ml-latest-small/ratings.csv, "
                                   "else a download, else synthetic data)", RATINGS_ENV))
    src.add_argument("--download", default=None, metavar="NAME",
                     help="download this MovieLens release (e.g. ml-latest-small, ml-1m) instead")
    src.add_argument("--synthetic", type=int, nargs="?", const=DEFAULT_SYNTHETIC, default=None, metavar="N",
                     help=f"generated data instead of MovieLens: N ratings (default {DEFAULT_SYNTHETIC:,}) with "
                          "planted structure, labelled as such in the report")
    p.add_argument("--rate", type=float, default=0.0, help="replay rate in events/s (0 = as fast as possible; default 0)")
    p.add_argument("--max-events", type=int, default=None, help="replay and train only the first N events (a slice)")
    p.add_argument("--once", action="store_true", help="exit after the report instead of serving the recall API")
    p.add_argument("--port", type=int, default=8000, help="recall API port (0 = a free one; default 8000)")
    p.add_argument("--no-seed", dest="seed_preset", action="store_false",
                   help="do not train the seed preset beside the default model")
    p.add_argument("--namespace", default="lfm-demo", help="PS namespace of the default model (default lfm-demo)")
    p.add_argument("--workdir", type=Path, default=Path(env_default("LFM_DEMO_DIR", ".lfm/demo")),
                   help=env_help("shards, metrics, plot, logs and the report", "LFM_DEMO_DIR", ".lfm/demo"))
    a = p.parse_args(argv)
    if a.rate < 0:
        p.error(f"--rate must be >= 0 (got {a.rate})")
    if a.max_events is not None and a.max_events <= 0:
        p.error(f"--max-events must be > 0 (got {a.max_events})")
    if a.synthetic is not None and a.synthetic < 100:
        p.error(f"--synthetic must be >= 100 ratings (got {a.synthetic})")
    ratings = None if a.download is not None or a.synthetic is not None else a.ratings  # $LFM_RATINGS yields
    cfg = DemoConfig(workdir=a.workdir, ratings=ratings, download=a.download, synthetic=a.synthetic, rate=a.rate,
                     max_events=a.max_events, once=a.once, port=a.port, seed_preset=a.seed_preset,
                     namespace=a.namespace)
    try:
        run(cfg)
    except (RuntimeError, FileNotFoundError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
