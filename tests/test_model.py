"""mf_fn: one step checked against gradients computed by hand for tiny batches."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from learner.config import DEFAULT_MODEL, SEED_MODEL, ModelConfig, preset
from learner.batch import micro_index
from learner.model import MFModel
from learner.step_io import make_input

D = 2
BASE = dict(dim=D, batch_size=4, clip=0.0, count_pow=0.0, ret_weight=0.0, logq=0.0, lr=0.1, lr_bias=0.05,
            loss="mse", optimizer="adagrad", user_bias_decay=1.0)


def rows(vec, bias, acc=None):
    vec = np.asarray(vec, np.float32)
    acc = np.zeros((len(vec), D + 1), np.float32) if acc is None else np.asarray(acc, np.float32)
    return SimpleNamespace(vec=vec, bias=np.asarray(bias, np.float32), accum=acc)


def run(cfg, users, items, labels, mu=0.1, mu_acc=0.0, user_rows=None, item_rows=None):
    _, uinv = micro_index(np.asarray(users), cfg.batch_size)
    _, iinv = micro_index(np.asarray(items), cfg.batch_size)
    n = len(labels)
    x = make_input(cfg, user_rows=user_rows, item_rows=item_rows, period_rows=None, mu=mu, mu_acc=mu_acc,
                   uinv=uinv[:n], iinv=iinv[:n], kinv=np.zeros(n, np.int32), label=np.asarray(labels, np.float32))
    return MFModel(cfg).step(x)


# one user u (p = [1, 2], b_u = 0.2) rates item a (v = [0.5, -1], b = 0.1) with y = 1
# and item b (v = [1, 1], b = -0.3) with y = 0; μ = 0.1
P = rows([[1.0, 2.0]], [0.2])
V = rows([[0.5, -1.0], [1.0, 1.0]], [0.1, -0.3])


def test_mse_sgd_l2_one_step_by_hand():
    cfg = ModelConfig(**{**BASE, "optimizer": "sgd", "l2": 0.1, "l2_bias": 0.2})
    out = run(cfg, [7, 7], [1, 2], [1.0, 0.0], user_rows=P, item_rows=V)
    # ŷ_a = 0.5 - 2 + 0.2 + 0.1 + 0.1 = -1.1 ; ŷ_b = 3 + 0.2 - 0.3 + 0.1 = 3.0
    np.testing.assert_allclose(out.pred[:2], [-1.1, 3.0], atol=1e-6)
    da, db = -1.1 - 1.0, 3.0 - 0.0  # ∂½(ŷ−y)²/∂ŷ
    p = np.array([1.0, 2.0])
    g_p = da * np.array([0.5, -1.0]) + db * np.array([1.0, 1.0]) + 2 * 0.1 * p  # L2 once per event
    g_va = da * p + 0.1 * np.array([0.5, -1.0])
    g_vb = db * p + 0.1 * np.array([1.0, 1.0])
    g_bu = da + db + 2 * 0.2 * 0.2
    g_ba, g_bb = da + 0.2 * 0.1, db + 0.2 * -0.3
    g_mu = da + db
    np.testing.assert_allclose(out.user_vec[0], p - 0.1 * g_p, rtol=1e-5)
    np.testing.assert_allclose(out.item_vec[:2], [[0.5, -1.0] - 0.1 * g_va, [1.0, 1.0] - 0.1 * g_vb], rtol=1e-5)
    np.testing.assert_allclose(out.user_bias[0], 0.2 - 0.05 * g_bu, rtol=1e-5)
    np.testing.assert_allclose(out.item_bias[:2], [0.1 - 0.05 * g_ba, -0.3 - 0.05 * g_bb], rtol=1e-5)
    np.testing.assert_allclose(out.mu[0], 0.1 - 0.05 * g_mu, rtol=1e-5)
    np.testing.assert_allclose(out.loss_sum, da**2 + db**2, rtol=1e-5)  # squared errors, for the logs
    np.testing.assert_array_equal(out.user_acc, 0.0)  # SGD leaves the accumulators alone


def test_logloss_adagrad_clip_count_pow_by_hand():
    cfg = ModelConfig(**{**BASE, "loss": "logloss", "optimizer": "adagrad", "init_accum": 0.1, "clip": 1.0,
                         "count_pow": 1.0})
    acc_u = np.array([[0.3, 0.0, 0.5]], np.float32)
    user = rows(P.vec, P.bias, acc_u)
    out = run(cfg, [7, 7], [1, 2], [1.0, 0.0], user_rows=user, item_rows=V, mu_acc=0.2)
    sig = lambda z: 1 / (1 + np.exp(-z))
    da, db = sig(-1.1) - 1.0, sig(3.0) - 0.0
    # user row: 2 events → mean of the event gradients (count_pow 1), then clip to norm 1
    g_p = (da * np.array([0.5, -1.0]) + db * np.array([1.0, 1.0])) / 2
    g_p = g_p * min(1.0, 1.0 / np.linalg.norm(g_p))
    a = acc_u[0, :2] + g_p**2
    np.testing.assert_allclose(out.user_vec[0], [1.0, 2.0] - 0.1 * g_p / np.sqrt(0.1 + a), rtol=1e-5)
    np.testing.assert_allclose(out.user_acc[0, :2], a, rtol=1e-5)
    g_bu = np.clip((da + db) / 2, -1, 1)
    np.testing.assert_allclose(out.user_bias[0], 0.2 - 0.05 * g_bu / np.sqrt(0.1 + 0.5 + g_bu**2), rtol=1e-5)
    # item a: one event, gradient da·p = [-0.25, -0.5]·... clipped to norm 1
    g_va = da * np.array([1.0, 2.0])
    g_va = g_va * min(1.0, 1.0 / np.linalg.norm(g_va))
    np.testing.assert_allclose(out.item_vec[0], [0.5, -1.0] - 0.1 * g_va / np.sqrt(0.1 + g_va**2), rtol=1e-5)
    g_mu = np.clip((da + db) / 2, -1, 1)
    np.testing.assert_allclose(out.mu[0], 0.1 - 0.05 * g_mu / np.sqrt(0.1 + 0.2 + g_mu**2), rtol=1e-5)
    bce = -np.log(sig(-1.1)) - np.log(1 - sig(3.0))
    np.testing.assert_allclose(out.loss_sum, bce, rtol=1e-5)


def test_per_event_adagrad_with_user_bias_decay_by_hand():
    """The default optimizer: a += Σ_e g_e² (not (Σ g)²); the user-bias accumulator decays per event."""
    cfg = ModelConfig(**{**BASE, "loss": "logloss", "optimizer": "adagrad_ev", "init_accum": 0.1,
                         "user_bias_decay": 0.9})
    acc_u = np.array([[0.3, 0.0, 0.5]], np.float32)
    out = run(cfg, [7, 7], [1, 2], [1.0, 0.0], user_rows=rows(P.vec, P.bias, acc_u), item_rows=V, mu_acc=0.2)
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


def test_retrieval_softmax_with_logq_by_hand():
    """Three positives of two users over two columns; ret gradient on top of the (zero-weight) rating term."""
    cfg = ModelConfig(**{**BASE, "optimizer": "sgd", "ret_weight": 1.0, "logq": 1.0, "mse_vec_w": 0.0,
                         "use_bias": True, "mask_same_user": False})
    user = rows([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    item = rows([[1.0, 1.0], [2.0, -1.0]], [0.5, 0.0])
    # events: (u0, a, 1), (u1, b, 1), (u0, b, 1)
    out = run(cfg, [0, 1, 0], [0, 1, 1], [1.0, 1.0, 1.0], mu=0.0, user_rows=user, item_rows=item)
    Q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    Vc = np.array([[1.0, 1.0], [2.0, -1.0]])
    z = Q @ Vc.T + np.array([0.5, 0.0]) - np.log(np.array([1 / 3, 2 / 3]))
    pr = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    G = pr - np.eye(2)[[0, 1, 1]]
    gQ = G @ Vc
    g_u = np.array([gQ[0] + gQ[2], gQ[1]])
    g_v = G.T @ Q
    np.testing.assert_allclose(out.user_vec[:2], user.vec - 0.1 * g_u, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.item_vec[:2], item.vec - 0.1 * g_v, rtol=1e-5, atol=1e-7)
    ce = -np.log(pr[[0, 1, 2], [0, 1, 1]]).sum()
    np.testing.assert_allclose(out.ret_loss, ce, rtol=1e-5)


def test_seed_preset_is_mean_sgd_without_biases():
    cfg = dataclasses.replace(SEED_MODEL, dim=D, batch_size=4, lr=0.1)
    out = run(cfg, [7, 7], [1, 2], [1.0, 0.0], user_rows=P, item_rows=V)
    ea, eb = (0.5 - 2.0) - 1.0, 3.0 - 0.0  # ŷ = p·v only
    np.testing.assert_allclose(out.pred[:2], [-1.5, 3.0], atol=1e-6)
    g_p = (ea * np.array([0.5, -1.0]) + eb * np.array([1.0, 1.0])) / 2
    np.testing.assert_allclose(out.user_vec[0], [1.0, 2.0] - 0.1 * g_p, rtol=1e-5)
    np.testing.assert_array_equal(out.user_bias[0], np.float32(0.2))  # biases untouched
    np.testing.assert_array_equal(out.mu[0], np.float32(0.1))


def test_padding_does_not_change_the_step():
    a = ModelConfig(**{**BASE, "ret_weight": 1.0, "logq": 1.0, "count_pow": 0.5, "clip": 0.5})
    b = dataclasses.replace(a, batch_size=16)
    oa = run(a, [7, 7, 8], [1, 2, 1], [1.0, 0.0, 1.0], user_rows=rows([[1, 2], [0, 1]], [0.2, 0]), item_rows=V)
    ob = run(b, [7, 7, 8], [1, 2, 1], [1.0, 0.0, 1.0], user_rows=rows([[1, 2], [0, 1]], [0.2, 0]), item_rows=V)
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
@pytest.mark.parametrize("over", [{}, {"period_days": 30.0, "period_in_pred": True},
                                  {"ret_weight": 1.0, "count_pow": 0.5, "clip": 0.5}])
def test_a_run_of_micro_batches_equals_one_step_after_another(over, jit):
    """MFModel.run (rows shared in TF variables; with XLA, loop-carried and padded) gives what K separate steps
    of the graph model give, the rows passed along."""
    from learner.batch import run_index

    cfg = dataclasses.replace(DEFAULT_MODEL, dim=4, batch_size=8, **over)
    d, n, w = cfg.dim, cfg.batch_size, 2 * cfg.dim + 2
    rng = np.random.default_rng(3)
    e = 3 * n - 3  # three micro-batches, the last one partial
    ev = {"user": rng.integers(0, 5, e), "item": rng.integers(0, 9, e), "period": rng.integers(0, 2, e)}
    labels = (rng.random(e) > 0.5).astype(np.float32)
    held = {t: rng.normal(0, 0.3, (10, w)).astype(np.float32) for t in ev}
    for h in held.values():
        h[:, d + 1:] = np.abs(h[:, d + 1:])  # accumulators are >= 0
    model, step_model = MFModel(cfg, jit=jit), MFModel(cfg)
    r = run_index(ev if cfg.period_days else {"user": ev["user"], "item": ev["item"]}, labels, n)
    state = {t: np.vstack([held[t][r.held[t]], np.zeros((1, w), np.float32)]) for t in r.held}
    pred, losses, users, items, periods, mu = model.run(state["user"], state["item"], state["period"],
                                                        np.array([0.1, 0.0], np.float32), r.rows, r.index, r.target)
    ref = {t: h.copy() for t, h in held.items()}
    scalars = np.array([0.1, 0.0], np.float32)
    for k, s in enumerate(range(0, e, n)):
        sl = slice(s, min(s + n, e))
        at, inv = {}, {}
        for t in ("user", "item", "period"):
            at[t], inv[t] = micro_index(ev[t][sl], n)
        x = make_input(cfg, user_rows=ref["user"][at["user"]], item_rows=ref["item"][at["item"]],
                       period_rows=ref["period"][at["period"]] if cfg.period_days else None, mu=scalars[0],
                       mu_acc=scalars[1], uinv=inv["user"][: sl.stop - s], iinv=inv["item"][: sl.stop - s],
                       kinv=inv["period"][: sl.stop - s] if cfg.period_days else [], label=labels[sl])
        p, ls, u, i, w_, scalars = step_model.step_packed(x)
        np.testing.assert_allclose(pred[k, : sl.stop - s], p[: sl.stop - s], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses[k], ls, rtol=1e-5, atol=1e-6)
        ref["user"][at["user"]], ref["item"][at["item"]] = u[: len(at["user"])], i[: len(at["item"])]
        if cfg.period_days:
            ref["period"][at["period"]] = w_[: len(at["period"])]
    np.testing.assert_allclose(users[:-1], ref["user"][r.held["user"]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items[:-1], ref["item"][r.held["item"]], rtol=1e-5, atol=1e-6)
    if cfg.period_days:
        np.testing.assert_allclose(periods[:-1], ref["period"][r.held["period"]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mu, scalars, rtol=1e-5, atol=1e-6)


def test_run_index_cuts_micro_batches_like_micro_index():
    from learner.batch import run_index

    slots = np.array([4, 2, 4, 9, 2, 2, 7])
    r = run_index({"user": slots, "item": slots + 1}, np.array([1, 0, 1, 1, 0, 1, 0], np.float32), 3)
    assert r.held["user"].tolist() == [2, 4, 7, 9] and not len(r.held["period"])
    pad = 4
    assert r.rows[:, 0].tolist() == [[0, 1, pad], [0, 3, pad], [2, pad, pad]]  # state rows in slot order
    assert r.index[:, 0].tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]
    assert r.rows[:, 2].tolist() == [[0, 0, 0]] * 3  # no period rows: only the padding row 0
    assert r.target.tolist() == [[[1, 0, 1], [1, 1, 1]], [[1, 0, 1], [1, 1, 1]], [[0, 0, 0], [1, 0, 0]]]


def test_xla_step_matches_the_graph_step():
    cfg = ModelConfig(**{**BASE, "loss": "logloss", "optimizer": "adagrad_ev"})
    _, uinv = micro_index(np.array([7, 7, 8]), cfg.batch_size)
    _, iinv = micro_index(np.array([1, 2, 1]), cfg.batch_size)
    x = make_input(cfg, user_rows=rows([[1, 2], [0, 1]], [0.2, 0]), item_rows=V, period_rows=None, mu=0.1, mu_acc=0.0,
                   uinv=uinv[:3], iinv=iinv[:3], kinv=np.zeros(3, np.int32), label=np.array([1, 0, 1], np.float32))
    for a, b in zip(MFModel(cfg).step_packed(x), MFModel(cfg, jit=True).step_packed(x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
