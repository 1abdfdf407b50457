"""mf_fn: one step checked against gradients computed by hand for tiny batches, through the learner's own path
(run_index → gather_run → MFModel.run → scatter_run)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from learner.batch import gather_run, run_index, scatter_run
from learner.config import DEFAULT_MODEL, SEED_MODEL, ModelConfig, preset
from learner.model import MFModel

D = 2
BASE = dict(dim=D, batch_size=4, clip=0.0, lr=0.1, lr_bias=0.05, loss="mse", optimizer="adagrad",
            user_bias_decay=1.0)


def rows(vec, bias, acc=None) -> np.ndarray:
    """Held rows ``vec | bias | accum`` (the learner's packed layout)."""
    vec = np.asarray(vec, np.float32)
    acc = np.zeros((len(vec), vec.shape[1] + 1), np.float32) if acc is None else np.asarray(acc, np.float32)
    return np.hstack([vec, np.asarray(bias, np.float32)[:, None], acc])


def run(cfg, users, items, targets, mu=0.1, mu_acc=0.0, user_rows=None, item_rows=None, jit=False):
    """Events (user slot, item slot, target) over held rows, trained as the loop trains a run; returns the
    predictions before the update, the summed loss and the held rows, μ and its accumulator after it."""
    d = cfg.dim
    packed = {"user": user_rows.copy(), "item": item_rows.copy(), "global": np.zeros((1, 2 * d + 2), np.float32)}
    packed["global"][0, d], packed["global"][0, 2 * d + 1] = mu, mu_acc
    targets = np.asarray(targets, np.float32)
    r = run_index({"user": np.asarray(users), "item": np.asarray(items)}, targets, cfg.batch_size)
    state, scalars = gather_run(r, packed, 0, d)
    pred, losses, users2, items2, scalars = MFModel(cfg, jit=jit).run(state["user"], state["item"], scalars, r.rows,
                                                                      r.index, r.target)
    scatter_run(r, packed, 0, d, [users2, items2], scalars)
    u, i = packed["user"], packed["item"]
    return SimpleNamespace(pred=pred.reshape(-1)[: len(targets)], loss_sum=float(losses.sum()),
                           user_vec=u[:, :d], user_bias=u[:, d], user_acc=u[:, d + 1:],
                           item_vec=i[:, :d], item_bias=i[:, d], item_acc=i[:, d + 1:],
                           mu=scalars[:1], mu_acc=scalars[1:])


# one user u (p = [1, 2], b_u = 0.2) rates item a (v = [0.5, -1], b = 0.1) with y = 1
# and item b (v = [1, 1], b = -0.3) with y = 0; μ = 0.1
P = rows([[1.0, 2.0]], [0.2])
V = rows([[0.5, -1.0], [1.0, 1.0]], [0.1, -0.3])


def test_mse_sgd_l2_bias_one_step_by_hand():
    cfg = ModelConfig(**{**BASE, "optimizer": "sgd", "l2_bias": 0.2})
    out = run(cfg, [0, 0], [0, 1], [1.0, 0.0], user_rows=P, item_rows=V)
    # ŷ_a = 0.5 - 2 + 0.2 + 0.1 + 0.1 = -1.1 ; ŷ_b = 3 + 0.2 - 0.3 + 0.1 = 3.0
    np.testing.assert_allclose(out.pred[:2], [-1.1, 3.0], atol=1e-6)
    da, db = -1.1 - 1.0, 3.0 - 0.0  # ∂½(ŷ−y)²/∂ŷ
    p = np.array([1.0, 2.0])
    g_p = da * np.array([0.5, -1.0]) + db * np.array([1.0, 1.0])
    g_va = da * p
    g_vb = db * p
    g_bu = da + db + 2 * 0.2 * 0.2  # L2 on the bias once per event
    g_ba, g_bb = da + 0.2 * 0.1, db + 0.2 * -0.3
    g_mu = da + db
    np.testing.assert_allclose(out.user_vec[0], p - 0.1 * g_p, rtol=1e-5)
    np.testing.assert_allclose(out.item_vec[:2], [[0.5, -1.0] - 0.1 * g_va, [1.0, 1.0] - 0.1 * g_vb], rtol=1e-5)
    np.testing.assert_allclose(out.user_bias[0], 0.2 - 0.05 * g_bu, rtol=1e-5)
    np.testing.assert_allclose(out.item_bias[:2], [0.1 - 0.05 * g_ba, -0.3 - 0.05 * g_bb], rtol=1e-5)
    np.testing.assert_allclose(out.mu[0], 0.1 - 0.05 * g_mu, rtol=1e-5)
    np.testing.assert_allclose(out.loss_sum, da**2 + db**2, rtol=1e-5)  # squared errors, for the logs
    np.testing.assert_array_equal(out.user_acc, 0.0)  # SGD leaves the accumulators alone


def test_logloss_adagrad_clip_by_hand():
    cfg = ModelConfig(**{**BASE, "loss": "logloss", "optimizer": "adagrad", "init_accum": 0.1, "clip": 1.0})
    acc_u = np.array([[0.3, 0.0, 0.5]], np.float32)
    user = rows(P[:, :D], P[:, D], acc_u)
    out = run(cfg, [0, 0], [0, 1], [1.0, 0.0], user_rows=user, item_rows=V, mu_acc=0.2)
    sig = lambda z: 1 / (1 + np.exp(-z))
    da, db = sig(-1.1) - 1.0, sig(3.0) - 0.0
    # user row: 2 events → sum of the event gradients, then clip to norm 1
    g_p = da * np.array([0.5, -1.0]) + db * np.array([1.0, 1.0])
    assert np.linalg.norm(g_p) > 1.0
    g_p = g_p / np.linalg.norm(g_p)
    a = acc_u[0, :2] + g_p**2
    np.testing.assert_allclose(out.user_vec[0], [1.0, 2.0] - 0.1 * g_p / np.sqrt(0.1 + a), rtol=1e-5)
    np.testing.assert_allclose(out.user_acc[0, :2], a, rtol=1e-5)
    g_bu = np.clip(da + db, -1, 1)
    np.testing.assert_allclose(out.user_bias[0], 0.2 - 0.05 * g_bu / np.sqrt(0.1 + 0.5 + g_bu**2), rtol=1e-5)
    # item a: one event, gradient da·p, clipped to norm 1
    g_va = da * np.array([1.0, 2.0])
    g_va = g_va * min(1.0, 1.0 / np.linalg.norm(g_va))
    np.testing.assert_allclose(out.item_vec[0], [0.5, -1.0] - 0.1 * g_va / np.sqrt(0.1 + g_va**2), rtol=1e-5)
    g_mu = np.clip(da + db, -1, 1)
    np.testing.assert_allclose(out.mu[0], 0.1 - 0.05 * g_mu / np.sqrt(0.1 + 0.2 + g_mu**2), rtol=1e-5)
    bce = -np.log(sig(-1.1)) - np.log(1 - sig(3.0))
    np.testing.assert_allclose(out.loss_sum, bce, rtol=1e-5)


def test_per_event_adagrad_with_user_bias_decay_by_hand():
    """The default optimizer: a += Σ_e g_e² (not (Σ g)²); the user-bias accumulator decays per event."""
    cfg = ModelConfig(**{**BASE, "loss": "logloss", "optimizer": "adagrad_ev", "init_accum": 0.1,
                         "user_bias_decay": 0.9})
    acc_u = np.array([[0.3, 0.0, 0.5]], np.float32)
    out = run(cfg, [0, 0], [0, 1], [1.0, 0.0], user_rows=rows(P[:, :D], P[:, D], acc_u), item_rows=V, mu_acc=0.2)
    sig = lambda z: 1 / (1 + np.exp(-z))
    da, db = sig(-1.1) - 1.0, sig(3.0) - 0.0
    va, vb = np.array([0.5, -1.0]), np.array([1.0, 1.0])
    G = da * va + db * vb
    a = 0.1 + acc_u[0, :2] + (da * va) ** 2 + (db * vb) ** 2
    np.testing.assert_allclose(out.user_vec[0], [1.0, 2.0] - 0.1 * G / np.sqrt(a), rtol=1e-5)
    np.testing.assert_allclose(out.user_acc[0, :2], a - 0.1, rtol=1e-5)
    a_bu = 0.9**2 * (0.1 + 0.5) + da**2 + db**2  # two events of the user: decays twice
    np.testing.assert_allclose(out.user_bias[0], 0.2 - 0.05 * (da + db) / np.sqrt(a_bu), rtol=1e-5)
    np.testing.assert_allclose(out.user_acc[0, 2], a_bu - 0.1, rtol=1e-5)
    a_bi = 0.1 + da**2  # item biases do not decay
    np.testing.assert_allclose(out.item_bias[0], 0.1 - 0.05 * da / np.sqrt(a_bi), rtol=1e-5)
    a_mu = 0.1 + 0.2 + da**2 + db**2
    np.testing.assert_allclose(out.mu[0], 0.1 - 0.05 * (da + db) / np.sqrt(a_mu), rtol=1e-5)


def test_seed_preset_is_mean_sgd_without_biases():
    cfg = dataclasses.replace(SEED_MODEL, dim=D, batch_size=4, lr=0.1)
    out = run(cfg, [0, 0], [0, 1], [1.0, 0.0], user_rows=P, item_rows=V)
    ea, eb = (0.5 - 2.0) - 1.0, 3.0 - 0.0  # ŷ = p·v only
    np.testing.assert_allclose(out.pred[:2], [-1.5, 3.0], atol=1e-6)
    g_p = (ea * np.array([0.5, -1.0]) + eb * np.array([1.0, 1.0])) / 2
    np.testing.assert_allclose(out.user_vec[0], [1.0, 2.0] - 0.1 * g_p, rtol=1e-5)
    np.testing.assert_array_equal(out.user_bias[0], np.float32(0.2))  # biases untouched
    np.testing.assert_array_equal(out.mu[0], np.float32(0.1))


def test_padding_does_not_change_the_step():
    a = ModelConfig(**{**BASE, "clip": 0.5})
    b = dataclasses.replace(a, batch_size=16)
    oa = run(a, [0, 0, 1], [0, 1, 0], [1.0, 0.0, 1.0], user_rows=rows([[1, 2], [0, 1]], [0.2, 0]), item_rows=V)
    ob = run(b, [0, 0, 1], [0, 1, 0], [1.0, 0.0, 1.0], user_rows=rows([[1, 2], [0, 1]], [0.2, 0]), item_rows=V)
    np.testing.assert_allclose(oa.user_vec[:2], ob.user_vec[:2], rtol=1e-6)
    np.testing.assert_allclose(oa.item_vec[:2], ob.item_vec[:2], rtol=1e-6)
    np.testing.assert_allclose(oa.pred[:3], ob.pred[:3], rtol=1e-6)


def test_config_rejects_bad_values_with_the_value_named():
    with pytest.raises(ValueError, match=r"loss must be one of .* \(got 'hinge'\)"):
        ModelConfig(loss="hinge")
    with pytest.raises(ValueError, match=r"lr must be > 0 \(got -1"):
        preset("default", lr=-1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("best")
    assert preset("seed").dim == 8 and preset("seed").batch_size == 8 and preset("seed").lr == 1e-4


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("over", [{}, {"clip": 0.5}, {"loss": "mse", "optimizer": "sgd", "reduction": "mean"}])
def test_a_run_of_micro_batches_equals_one_run_after_another(over, jit):
    """MFModel.run of K micro-batches (rows shared in TF variables; with XLA, loop-carried and padded) gives what
    K runs of one micro-batch of the graph model give, the rows passed along."""
    cfg = dataclasses.replace(DEFAULT_MODEL, dim=4, batch_size=8, **over)
    d, n, w = cfg.dim, cfg.batch_size, 2 * cfg.dim + 2
    rng = np.random.default_rng(3)
    e = 3 * n - 3  # three micro-batches, the last one partial
    ev = {"user": rng.integers(0, 5, e), "item": rng.integers(0, 9, e)}
    targets = rng.random(e).astype(np.float32)
    held = {t: rng.normal(0, 0.3, (10, w)).astype(np.float32) for t in ev}
    for h in held.values():
        h[:, d + 1:] = np.abs(h[:, d + 1:])  # accumulators are >= 0
    model, one_model = MFModel(cfg, jit=jit), MFModel(cfg)
    r = run_index(ev, targets, n)
    state = {t: np.vstack([held[t][r.held[t]], np.zeros((1, w), np.float32)]) for t in r.held}
    pred, losses, users, items, mu = model.run(state["user"], state["item"], np.array([0.1, 0.0], np.float32), r.rows,
                                               r.index, r.target)
    ref = {t: h.copy() for t, h in held.items()}
    scalars = np.array([0.1, 0.0], np.float32)
    for k, s in enumerate(range(0, e, n)):
        sl = slice(s, min(s + n, e))
        one = run_index({t: ev[t][sl] for t in ev}, targets[sl], n)
        rows_in = {t: np.vstack([ref[t][one.held[t]], np.zeros((1, w), np.float32)]) for t in ev}
        p, ls, u, i, scalars = one_model.run(rows_in["user"], rows_in["item"], scalars, one.rows, one.index,
                                             one.target)
        np.testing.assert_allclose(pred[k, : sl.stop - s], p[0, : sl.stop - s], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses[k], ls[0], rtol=1e-5, atol=1e-6)
        ref["user"][one.held["user"]], ref["item"][one.held["item"]] = u[:-1], i[:-1]
    np.testing.assert_allclose(users[:-1], ref["user"][r.held["user"]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items[:-1], ref["item"][r.held["item"]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mu, scalars, rtol=1e-5, atol=1e-6)


def test_run_index_cuts_micro_batches_like_one_unique_per_micro_batch():
    slots = np.array([4, 2, 4, 9, 2, 2, 7])
    r = run_index({"user": slots, "item": slots + 1}, np.array([1, 0, 1, 1, 0, 1, 0], np.float32), 3)
    assert r.held["user"].tolist() == [2, 4, 7, 9] and r.held["item"].tolist() == [3, 5, 8, 10]
    pad = 4
    assert r.rows[:, 0].tolist() == [[0, 1, pad], [0, 3, pad], [2, pad, pad]]  # state rows in slot order
    assert r.index[:, 0].tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]
    for k, s in enumerate(range(0, len(slots), 3)):  # each micro-batch: the np.unique of its own slots
        uniq, inv = np.unique(slots[s:s + 3], return_inverse=True)
        assert r.held["user"][r.rows[k, 0, : len(uniq)]].tolist() == uniq.tolist()
        assert r.index[k, 0, : len(inv)].tolist() == inv.tolist()
    assert r.target.tolist() == [[[1, 0, 1], [1, 1, 1]], [[1, 0, 1], [1, 1, 1]], [[0, 0, 0], [1, 0, 0]]]


def test_xla_step_matches_the_graph_step():
    cfg = ModelConfig(**{**BASE, "loss": "logloss", "optimizer": "adagrad_ev"})
    args = ([0, 0, 1], [0, 1, 0], [1.0, 0.0, 1.0])
    kw = dict(user_rows=rows([[1, 2], [0, 1]], [0.2, 0]), item_rows=V, mu=0.1, mu_acc=0.0)
    a, b = run(cfg, *args, **kw), run(cfg, *args, **kw, jit=True)
    for name, value in vars(a).items():
        np.testing.assert_allclose(value, getattr(b, name), rtol=1e-5, atol=1e-6, err_msg=name)
