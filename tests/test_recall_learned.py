"""The recall service on state written by the real pipeline: prepare -> replay -> learner + item channel -> PS -> API.

The service runs from before the first event, so the item matrix is built by the incremental refresh while the
learner trains and the channels are rebuilt while the item-channel worker (``python -m learner.items``, same topic,
its own consumer group) writes; afterwards every answer must equal a float64 brute force over what Redis holds:
the learner's contract (its default weights), a contract weighting the LFM channel too, and an LFM-only contract.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np

from lfm_stream.scoring import ScoreContract, contract_key
from producer.prepare import main as prepare_main
from ps_redis import ParameterServer
from ps_redis.activity import ActivityLog
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from tests._recall_util import (ChannelState, ServerThread, brute_covisit_i2i, brute_i2i, brute_served, brute_u2i,
                                check_ranking, check_tied_ranking, lfm_only, ps_items, read_mu, user_row, wait_for,
                                write_contract)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 16


def test_answers_after_real_training_match_brute_force(tmp_path, stack, namespace, topic):
    data = tmp_path / "data"
    assert prepare_main(["--synthetic", "6000", "--out", str(data), "--seed", "5"]) == 0
    catalog = Catalog.load(data)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    n_train = json.loads((data / "manifest.json").read_text())["train_records"]
    # the PS namespace must exist (dim) before the service reads it; the learner writes the same meta
    ParameterServer.get(stack.redis_url, namespace, dim=DIM)
    store = RecallStore(StoreConfig(stack.redis_url, namespace, dim=DIM, refresh_interval=0.05,
                                    channel_interval=0.2), catalog)
    procs = []
    with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json()["vectors_loaded"] == 0
        try:
            learner = subprocess.Popen(
                [sys.executable, "-m", "learner", "--redis-url", stack.redis_url, "--bootstrap", stack.bootstrap,
                 "--topic", topic, "--namespace", namespace, "--group", f"g-{namespace}", "--dim", str(DIM),
                 "--batch-size", "256", "--max-events", str(n_train), "--idle-timeout", "30",
                 "--session-timeout-ms", "3000", "--heartbeat-interval-ms", "500"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(learner)
            items_worker = subprocess.Popen(
                [sys.executable, "-m", "learner.items", "--redis-url", stack.redis_url, "--bootstrap",
                 stack.bootstrap, "--topic", topic, "--namespace", namespace, "--group", f"items-{namespace}",
                 "--max-events", str(n_train), "--idle-timeout", "30", "--session-timeout-ms", "3000",
                 "--poll-records", "1000"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(items_worker)
            replay = subprocess.run(
                [sys.executable, "-m", "producer.replay", "--data-dir", str(data), "--bootstrap", stack.bootstrap,
                 "--topic", topic, "--rate", "0", "--state-file", str(tmp_path / "replay.json")],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert replay.returncode == 0, replay.stderr[-2000:]
            out, _ = learner.communicate(timeout=120)
            assert learner.returncode == 0, out[-3000:]
            assert f"events {n_train}" in out or f"{n_train} events" in out, out[-2000:]
            items_out, _ = items_worker.communicate(timeout=120)
            assert items_worker.returncode == 0, items_out[-3000:]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

        ps = ParameterServer.get(stack.redis_url, namespace, dim=DIM)
        log = ActivityLog(ps)
        state = ChannelState.read(ps)
        assert int(ps.redis.hget("{" + f"{namespace}:@co" + "}:meta", "events")) == n_train
        assert state.contract == json.loads(ScoreContract(dim=DIM).to_json())  # the learner's (default) contract
        assert len(state.degree) > 100 and sum(state.total.values()) > 0
        items = ps_items(ps)
        raw = items.raw
        assert len(raw) == ps.count("item") > 100 and (raw >= 0).all()
        # the incremental refresh converges on exactly the PS rows (no full reload was needed)
        def caught_up() -> bool:
            snap = store.matrix.snapshot()
            if len(store.matrix) != len(raw):
                return False
            order = np.argsort(snap.raw)
            return np.array_equal(snap.raw[order], raw) and np.array_equal(snap.vec[order], items.vec) and \
                np.array_equal(snap.count[order], items.count)
        wait_for(caught_up, timeout=20)
        stats = client.get("/stats").json()
        assert stats["full_reloads"] == 1 and stats["rows_applied"] >= len(raw) and stats["lag_s"] == 0.0
        rebuilt_after(client, stats["channels"]["checks"])  # a channel rebuild check that read the final state

        users = sorted(catalog.users)[:: max(1, len(catalog.users) // 15)]
        for u in users:  # the learner's contract: item channel + popularity (its default weights)
            assert user_row(ps, u) is not None, f"user {u} was trained but has no vector"
            seen = log.seen(u)
            assert seen, f"the learner recorded no rated movies for user {u}"
            reference, source = brute_served(ps, u, items, state)
            assert source == "model"
            for k in (30, 1000):
                body = client.get(f"/u2i/{u}?k={k}").json()
                assert body["source"] == "model"
                check_tied_ranking(body["items"], reference, k)
            assert not {it["movie_id"] for it in body["items"]} & seen
        with_pairs = 0
        for m in raw[:: max(1, len(raw) // 12)].tolist():
            reference = brute_covisit_i2i(ps, m, items, state)
            body = client.get(f"/i2i/{m}?k=20").json()
            assert body["source"] == ("covisit" if reference else "lfm")
            if reference:
                with_pairs += 1
                check_tied_ranking(body["items"], reference, 20)
            expected, scores = brute_i2i(m, raw, items.vec, 20)
            check_ranking(client.get(f"/i2i/{m}?k=20&source=lfm").json()["items"], expected, scores, raw)
        assert with_pairs >= 8

        # every channel weighted: the LFM channel over the learned rows joins the blend
        blended = ScoreContract.from_json(ps.redis.get(contract_key(namespace))).replace(lfm_weight=1.0)
        serve_contract(ps, client, blended)
        state = ChannelState.read(ps)
        for u in users:
            reference, _ = brute_served(ps, u, items, state)
            check_tied_ranking(client.get(f"/u2i/{u}?k=30").json()["items"], reference, 30)

        # the LFM channel alone: log σ(q·v + b_u + b_i + μ) + log(1 + n_i)
        serve_contract(ps, client, lfm_only(DIM))
        mu = read_mu(ps)
        assert mu != 0.0
        for u in users:
            q, b_u = user_row(ps, u)
            expected, scores = brute_u2i(q, b_u, mu, items, log.seen(u), 30)
            check_ranking(client.get(f"/u2i/{u}?k=30").json()["items"], expected, scores, raw)


def rebuilt_after(client, checks: int) -> None:
    """Wait for a channel rebuild check that started after ``checks`` was current (two more checks; it rebuilds
    when anything it reads changed)."""
    wait_for(lambda: client.get("/stats").json()["channels"]["checks"] >= checks + 2, timeout=10)


def serve_contract(ps: ParameterServer, client, contract: ScoreContract) -> None:
    """Write ``contract`` to the namespace and wait until the service ranks with it."""
    write_contract(ps, contract)
    wanted = json.loads(contract.to_json())
    wait_for(lambda: client.get("/stats").json()["channels"]["contract"] == wanted, timeout=10)
