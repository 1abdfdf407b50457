"""The recall service on vectors trained by the real pipeline: prepare -> replay -> learner -> PS -> API.

The service runs from before the first event, so the item matrix is built by the incremental refresh
while the learner trains; afterwards every answer must equal a float64 brute force over the PS rows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np

from lfm_stream.hashing import user_hash
from producer.prepare import main as prepare_main
from ps_redis import ParameterServer
from ps_redis.activity import ActivityLog
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from tests._recall_util import ServerThread, brute_i2i, brute_u2i, wait_for
from tests.test_recall_api import check_ranking, ps_items

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 16


def test_answers_after_real_training_match_brute_force(tmp_path, stack, namespace, topic):
    data = tmp_path / "data"
    assert prepare_main(["--synthetic", "6000", "--out", str(data), "--seed", "5"]) == 0
    catalog = Catalog.load(data)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    n_train = __import__("json").loads((data / "manifest.json").read_text())["train_records"]
    # the PS namespace must exist (dim) before the service reads it; the learner writes the same meta
    ParameterServer.get(stack.redis_url, namespace, dim=DIM)
    store = RecallStore(StoreConfig(stack.redis_url, namespace, dim=DIM, refresh_interval=0.05), catalog)
    with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json()["vectors_loaded"] == 0
        learner = subprocess.Popen(
            [sys.executable, "-m", "learner", "--redis-url", stack.redis_url, "--bootstrap", stack.bootstrap,
             "--topic", topic, "--namespace", namespace, "--group", f"g-{namespace}", "--dim", str(DIM),
             "--batch-size", "256", "--max-events", str(n_train), "--idle-timeout", "30",
             "--session-timeout-ms", "3000", "--heartbeat-interval-ms", "500"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        replay = subprocess.run(
            [sys.executable, "-m", "producer.replay", "--data-dir", str(data), "--bootstrap", stack.bootstrap,
             "--topic", topic, "--rate", "0", "--state-file", str(tmp_path / "replay.json")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr[-2000:]
        out, _ = learner.communicate(timeout=120)
        assert learner.returncode == 0, out[-3000:]
        assert f"events {n_train}" in out or f"{n_train} events" in out, out[-2000:]

        ps = ParameterServer.get(stack.redis_url, namespace, dim=DIM)
        log = ActivityLog(ps)
        raw, vec, bias = ps_items(ps)
        assert len(raw) == ps.count("item") > 100 and (raw >= 0).all()
        # the incremental refresh converges on exactly the PS rows (no full reload was needed)
        def caught_up() -> bool:
            snap = store.matrix.snapshot()
            if len(store.matrix) != len(raw):
                return False
            order = np.argsort(snap.raw)
            return np.array_equal(snap.raw[order], raw) and np.array_equal(snap.vec[order], vec)
        wait_for(caught_up, timeout=20)
        stats = client.get("/stats").json()
        assert stats["full_reloads"] == 1 and stats["rows_applied"] >= len(raw) and stats["lag_s"] == 0.0

        users = sorted(catalog.users)[:: max(1, len(catalog.users) // 15)]
        for u in users:
            q = ps.pull("user", np.array([user_hash(u)]), create=False)
            assert q.found[0], f"user {u} was trained but has no vector"
            seen = log.seen(u)
            assert seen, f"the learner recorded no rated movies for user {u}"
            expected, scores = brute_u2i(q.vec[0], raw, vec, bias, seen, 30)
            body = client.get(f"/u2i/{u}?k=30").json()
            assert body["source"] == "model"
            check_ranking(body["items"], expected, scores, raw)
            everything = client.get(f"/u2i/{u}?k=1000").json()["items"]
            assert not {it["movie_id"] for it in everything} & seen
        for m in raw[:: max(1, len(raw) // 8)].tolist():
            expected, scores = brute_i2i(m, raw, vec, 20)
            check_ranking(client.get(f"/i2i/{m}?k=20").json()["items"], expected, scores, raw)

        # opt-in score prior: q·v + gamma·b + w·tau_u over the learner's ppop / user_ctx tables
        check_score_prior(stack.redis_url, namespace, catalog, ps, log, raw, vec, bias, users)


def check_score_prior(redis_url, namespace, catalog, ps, log, raw, vec, bias, users) -> None:
    from learner.evaluate import PeriodPrior
    from ps_redis.counters import Counters

    prior_store = RecallStore(StoreConfig(redis_url, namespace, dim=DIM, score_prior=True), catalog)
    assert prior_store.refresh_once()
    cfg = prior_store.prior.cfg
    periods, movies, counts = Counters(ps, "ppop").read()
    assert len(movies) > 0, "the learner counted no ppop positives (is its popularity prior off?)"
    col = {m: i for i, m in enumerate(raw.tolist())}
    cols = np.array([col.get(int(m), -1) for m in movies.tolist()])
    ok = cols >= 0
    reference = PeriodPrior(cfg, periods[ok], cols[ok], counts[ok], len(raw))
    for u in users[:8]:
        h = np.array([user_hash(u)])
        q = ps.pull("user", h, create=False).vec[0].astype(np.float64)
        ctx = ps.pull("user_ctx", h, create=False)
        k_u = int(np.rint(ctx.bias[0])) if ctx.found[0] else reference.latest
        scores = vec.astype(np.float64) @ q + cfg.gamma * bias + cfg.pop_weight * reference.tau(np.array([k_u]))[0]
        seen = log.seen(u)
        order = [i for i in np.argsort(-scores, kind="stable") if int(raw[i]) not in seen][:30]
        got = prior_store.u2i(u, 30)
        assert got.source == "model"
        check_ranking([{"movie_id": m, "score": s} for m, s in zip(got.movies, got.scores)],
                      raw[order].tolist(), scores, raw)
