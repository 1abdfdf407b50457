"""The online MF model: prediction, loss, gradients and the optimizer step, on tensors only (no I/O).

A micro-batch of E events touches the rows it pulled from the PS (unique users, unique items and the global
offset μ).  :meth:`MFModel.run` takes those rows plus the event→row index arrays of a run of micro-batches and
returns the predictions made *before* each update (they feed the prequential AUC) and the updated rows.  Shapes
are padded to the configured batch size so the ``tf.function`` is traced once.

Equations (per event e = (u, i, y), rows gathered from the PS):

    ŷ_e   = p_u·v_i + b_u + b_i + μ        (the seed preset: ŷ_e = p_u·v_i)
    mse:      ℓ_e = ½ (ŷ_e − y_e)²          ∂ℓ/∂ŷ = ŷ − y
    logloss:  ℓ_e = BCE(sigmoid(ŷ_e), y_e)  ∂ℓ/∂ŷ = sigmoid(ŷ) − y
    L2 on biases: + ½ l2_bias (b_u² + b_i²) per event
    L = Σ_e ℓ_e                     (reduction "mean": L / E, the seed's tf.reduce_mean)

Row gradient g_r = ∂L/∂x_r (the sum over the row's events), then clipping (vector rows to L2 norm ``clip``,
biases to ±clip), then per coordinate:

    sgd:         x ← x − lr · g
    adagrad:     a ← a + g²;          x ← x − lr · g / sqrt(a)
    adagrad_ev:  a ← a + Σ_e g_e²;    x ← x − lr · g / sqrt(a)     ("per-event-equivalent": a row hit n
                 times moves about as far as n per-event Adagrad steps would; the default)
    user_bias_decay < 1: the user-bias accumulator forgets, a ← decay^{n_u} · a + Σ_e g_e²

Accumulators start at init_accum; the PS stores a − init_accum (its rows start at 0).  Biases and μ use
``lr_bias``.
"""

from __future__ import annotations

import numpy as np

from learner.config import ModelConfig
from lfm_stream.quiet import muted_native_stderr

TABLES = 2  # row tables of a step: user, item (μ travels in the scalars)


class MFModel:
    """Holds the traced ``mf_fn`` step for one :class:`ModelConfig`.

    One traced function runs a *sequence* of micro-batches on shared rows (:meth:`run`): the rows live in TF
    variables for the call, each micro-batch gathers its rows, takes one step and scatters them back, so the
    next micro-batch sees the update — the same arithmetic as one call per micro-batch, without a Python
    round trip per micro-batch.

    Args:
        cfg: the model hyperparameters.
        jit: compile the whole :meth:`run` with XLA: the rows are loop-carried tensors updated in place and the
            micro-batches run in one fused loop, so a step costs about the same whatever the micro-batch size
            (without XLA, TF's executor adds ~0.2 ms per micro-batch).  Shapes are fixed (the rows padded to
            :attr:`capacity`, the micro-batches to ``max_batches``): one compilation, when the model is built
            (~1.5 s, plus ~3.5 s for XLA's own start in a process).
        max_batches: most micro-batches per :meth:`run` (its rows fit ``max_batches * batch_size + 1`` rows).
    """

    def __init__(self, cfg: ModelConfig, jit: bool = False, max_batches: int = 16):
        import tensorflow as tf

        self.cfg = cfg
        self.max_batches = max_batches
        n, d = cfg.batch_size, cfg.dim
        w = 2 * d + 2
        self.capacity = max_batches * n + 1
        self._tf = tf
        self._jit = self._bufs = None
        if jit:  # compiled now (a few seconds), not in the middle of the stream; XLA's start-up notices muted
            self._jit = self._compile()
            w0 = np.zeros((1, w), np.float32)
            rows0 = np.zeros((1, TABLES, n), np.int32)
            with muted_native_stderr():
                self._run_jit(w0, w0, np.zeros(2, np.float32), rows0, rows0, np.zeros((1, 2, n), np.float32))
            return
        self._state = [tf.Variable(tf.zeros([self.capacity, w]), trainable=False) for _ in range(TABLES)]
        f32, i32 = tf.float32, tf.int32
        spec = [tf.TensorSpec([None, w], f32), tf.TensorSpec([None, w], f32), tf.TensorSpec([2], f32),
                tf.TensorSpec([None, TABLES, n], i32), tf.TensorSpec([None, TABLES, n], i32),
                tf.TensorSpec([None, 2, n], f32)]
        # the concrete function skips tf.function's per-call signature matching (about half the call cost)
        self._run = tf.function(self._run_fn, input_signature=spec).get_concrete_function()

    def run(self, users: np.ndarray, items: np.ndarray, scalars: np.ndarray, rows: np.ndarray, index: np.ndarray,
            target: np.ndarray) -> tuple[np.ndarray, ...]:
        """K micro-batches in order on shared rows.

        ``users`` / ``items``: the rows ``vec | bias | accum`` the micro-batches touch (at most :attr:`capacity`,
        padding rows included); ``scalars`` ``[μ, μ's accumulator]``; ``rows`` ``[K, 2, n]``: micro-batch k's
        distinct rows per table (user, item), padded with the index of a padding row (its update is discarded);
        ``index`` ``[K, 2, n]`` each event's position among them; ``target`` ``[K, 2, n]`` training target and
        mask.  Returns ``(pred [K, n] before each update, loss [K] (Σ of the micro-batch's per-event data loss),
        users, items, scalars)`` with every row as it stands after the last micro-batch.
        """
        tf = self._tf
        k = len(rows)
        sizes = [len(users), len(items)]
        if max(sizes) > self.capacity or k > self.max_batches:
            raise ValueError(f"run of {k} micro-batches over {sizes} rows exceeds {self.max_batches} / {self.capacity}")
        if self._jit is not None:
            return self._run_jit(users, items, scalars, rows, index, target)
        out = self._run(*(tf.constant(np.ascontiguousarray(a)) for a in (users, items, scalars, rows, index, target)))
        pred, losses, users, items, scalars = (t.numpy() for t in out)
        return pred[:k], losses[:k], users[: sizes[0]], items[: sizes[1]], scalars

    def _run_jit(self, users, items, scalars, rows, index, target) -> tuple[np.ndarray, ...]:
        """:meth:`run` through the XLA-compiled loop: pad to the compiled shapes, run, cut the padding off."""
        tf = self._tf
        k, nu, ni = len(rows), len(users), len(items)
        # the inputs go into buffers of the compiled shapes, kept across calls (fresh ones cost page faults);
        # what lies past the copied prefix is never read: indexes point into it, the loop stops at k
        new = [users, items, rows, index, target]
        if self._bufs is None:
            sizes = [self.capacity, self.capacity] + [self.max_batches] * 3
            self._bufs = [_pad(a, n) for a, n in zip(new, sizes)]
        for buf, a in zip(self._bufs, new):
            buf[: len(a)] = a
        u, i, r, x, y = self._bufs
        out = self._jit(*(tf.constant(a) for a in (u, i, scalars, r, x, y)), tf.constant(k, tf.int32))
        pred, losses, users2, items2, scalars = (t.numpy() for t in out)
        return pred[:k], losses[:k], users2[:nu], items2[:ni], scalars

    def _compile(self):
        """The XLA-compiled run: :attr:`capacity` rows per table."""
        tf = self._tf
        n, w, f32, i32 = self.cfg.batch_size, 2 * self.cfg.dim + 2, tf.float32, tf.int32
        size, k = self.capacity, self.max_batches
        spec = [tf.TensorSpec([size, w], f32), tf.TensorSpec([size, w], f32), tf.TensorSpec([2], f32),
                tf.TensorSpec([k, TABLES, n], i32), tf.TensorSpec([k, TABLES, n], i32), tf.TensorSpec([k, 2, n], f32),
                tf.TensorSpec([], i32)]
        return tf.function(self._run_xla, input_signature=spec, jit_compile=True).get_concrete_function()

    def _run_xla(self, users, items, scalars, rows, index, target, count):
        """The XLA-compiled :meth:`run`: the rows are loop-carried tensors, micro-batches ``0 .. count - 1``."""
        tf = self._tf
        n = self.cfg.batch_size

        def body(j, state, scalars, preds, losses):
            at, _, yhat, loss, new, scalars = self._micro_step(state, scalars, rows[j], index[j], target[j])
            state = [tf.tensor_scatter_nd_update(v, r[:, None], x) for v, r, x in zip(state, at, new)]
            preds = tf.tensor_scatter_nd_update(preds, [[j]], yhat[None])
            losses = tf.tensor_scatter_nd_update(losses, [[j]], loss[None])
            return j + 1, state, scalars, preds, losses

        init = (tf.constant(0), [users, items], scalars, tf.zeros([self.max_batches, n]), tf.zeros([self.max_batches]))
        _, state, scalars, preds, losses = tf.while_loop(lambda j, *_: j < count, body, init)
        return (preds, losses, *state, scalars)

    def _run_fn(self, users, items, scalars, rows, index, target):
        """The traced :meth:`run`: load the rows into the state variables, loop over micro-batches, read back."""
        tf = self._tf
        state = self._state
        sizes = [tf.shape(a)[0] for a in (users, items)]
        # whole-row scatters and gathers: a strided-slice assign / read of the variable costs ~10x more
        first = [tf.range(m) for m in sizes]
        loads = [v.scatter_nd_update(r[:, None], a) for v, r, a in zip(state, first, (users, items))]
        size = tf.shape(rows)[0]
        preds = tf.TensorArray(tf.float32, size=size)
        losses = tf.TensorArray(tf.float32, size=size)

        def body(j, scalars, preds, losses):
            at, got, yhat, loss, new, scalars2 = self._micro_step(state, scalars, rows[j], index[j], target[j])
            with tf.control_dependencies(got):
                put = [v.scatter_nd_update(r[:, None], x) for v, r, x in zip(state, at, new)]
            with tf.control_dependencies(put):
                return j + 1, tf.identity(scalars2), preds.write(j, yhat), losses.write(j, loss)

        with tf.control_dependencies(loads):
            start = tf.constant(0)
        _, scalars, preds, losses = tf.while_loop(lambda j, *_: j < size, body, (start, scalars, preds, losses))
        with tf.control_dependencies([scalars]):
            rows_out = [tf.gather(v, r) for v, r in zip(state, first)]
            return (preds.stack(), losses.stack(), *rows_out, tf.identity(scalars))

    def _micro_step(self, state, scalars, rows, index, target):
        """One micro-batch inside a run's loop: gather its rows from ``state`` (user, item tables) at ``rows``,
        step.  Returns (row indexes per table, gathered rows, predictions, loss, new rows, scalars)."""
        tf = self._tf
        at = [rows[t] for t in range(TABLES)]
        got = [tf.gather(v, r) for v, r in zip(state, at)]
        yhat, loss, users, items, scalars = self._packed_fn(*got, scalars, index, target)
        return at, got, yhat, loss, [users, items], scalars

    def _packed_fn(self, users, items, scalars, index, target):
        """Unpack the rows ``vec | bias | accum`` and scalars, run :meth:`_mf_fn`, pack its results the same way."""
        tf, d = self._tf, self.cfg.dim
        out = self._mf_fn(users[:, :d], users[:, d], users[:, d + 1:], items[:, :d], items[:, d], items[:, d + 1:],
                          scalars[:1], scalars[1:], index[0], index[1], target[0], target[1])
        yhat, loss_sum, uv2, ub2, ua2, iv2, ib2, ia2, mu2, mua2 = out
        return (yhat, loss_sum, tf.concat([uv2, ub2[:, None], ua2], 1), tf.concat([iv2, ib2[:, None], ia2], 1),
                tf.concat([mu2, mua2], 0))

    # ------------------------------------------------------------------ the TF math
    def _mf_fn(self, uv, ub, ua, iv, ib, ia, mu, mua, uinv, iinv, y, mask):
        """Forward pass, loss, gradients and optimizer step (see the module docstring)."""
        tf = self._tf
        cfg = self.cfg
        n = cfg.batch_size
        seg = tf.math.unsorted_segment_sum
        pe = tf.gather(uv, uinv)
        ve = tf.gather(iv, iinv)
        yhat = tf.reduce_sum(pe * ve, axis=1)
        if cfg.use_bias:
            bue = tf.gather(ub, uinv)
            bie = tf.gather(ib, iinv)
            yhat = yhat + bue + bie + mu[0]
        if cfg.loss == "mse":
            data = mask * tf.square(yhat - y)
            dy = mask * (yhat - y)
        else:
            data = mask * tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=yhat)
            dy = mask * (tf.sigmoid(yhat) - y)
        gpe = dy[:, None] * ve
        gve = dy[:, None] * pe
        guv, giv = seg(gpe, uinv, n), seg(gve, iinv, n)
        if cfg.use_bias:
            gbue = dy + cfg.l2_bias * bue * mask
            gbie = dy + cfg.l2_bias * bie * mask
            gub, gib = seg(gbue, uinv, n), seg(gbie, iinv, n)
        else:
            gbue = gbie = tf.zeros_like(dy)
            gub, gib = tf.zeros_like(ub), tf.zeros_like(ib)
        gmu = tf.reduce_sum(dy)[None]
        ev = cfg.optimizer == "adagrad_ev"
        suv = siv = sub = sib = smu = None
        if ev:  # per-event-equivalent Adagrad: accumulate the sum of per-event squared gradients
            suv, siv = seg(gpe * gpe, uinv, n), seg(gve * gve, iinv, n)
            sub, sib = seg(gbue * gbue, uinv, n), seg(gbie * gbie, iinv, n)
            smu = tf.reduce_sum(dy * dy)[None]
        if cfg.reduction == "mean":
            nvalid = tf.maximum(tf.reduce_sum(mask), 1.0)
            guv, giv, gub, gib, gmu = (g / nvalid for g in (guv, giv, gub, gib, gmu))
            if ev:
                suv, siv, sub, sib, smu = (g / nvalid**2 for g in (suv, siv, sub, sib, smu))
        uv2, ua_v = self._apply(uv, ua[:, :-1], self._clip_rows(guv), cfg.lr, suv)
        iv2, ia_v = self._apply(iv, ia[:, :-1], self._clip_rows(giv), cfg.lr, siv)
        if cfg.use_bias:
            decay = None
            if cfg.user_bias_decay < 1.0:
                decay = tf.pow(cfg.user_bias_decay, seg(mask, uinv, n))
            ub2, ua_b = self._apply(ub, ua[:, -1], self._clip_bias(gub), cfg.bias_lr, sub, decay)
            ib2, ia_b = self._apply(ib, ia[:, -1], self._clip_bias(gib), cfg.bias_lr, sib)
        else:
            ub2, ua_b, ib2, ia_b = ub, ua[:, -1], ib, ia[:, -1]
        if cfg.learn_mu:
            mu2, mua2 = self._apply(mu, mua, self._clip_bias(gmu), cfg.bias_lr, smu)
        else:
            mu2, mua2 = mu, mua
        loss_sum = tf.reduce_sum(data)
        return (yhat, loss_sum, uv2, ub2, tf.concat([ua_v, ua_b[:, None]], 1),
                iv2, ib2, tf.concat([ia_v, ia_b[:, None]], 1), mu2, mua2)

    def _clip_rows(self, g):
        tf = self._tf
        if self.cfg.clip <= 0:
            return g
        norm = tf.sqrt(tf.reduce_sum(g * g, axis=-1, keepdims=True))
        return g * tf.minimum(1.0, self.cfg.clip / tf.maximum(norm, 1e-12))

    def _clip_bias(self, g):
        tf = self._tf
        return g if self.cfg.clip <= 0 else tf.clip_by_value(g, -self.cfg.clip, self.cfg.clip)

    def _apply(self, x, acc, g, lr, sq=None, decay=None):
        """One optimizer step: returns (new x, new stored accumulator).

        The stored accumulator is a − init_accum; ``sq`` is what adds to a (default g², plain Adagrad;
        Σ per-event g² for adagrad_ev); ``decay`` (per row) makes a forget: a ← decay·a + sq.
        """
        tf = self._tf
        if self.cfg.optimizer == "sgd":
            return x - lr * g, acc
        a0 = self.cfg.init_accum
        sq = g * g if sq is None else sq
        a = (a0 + acc) * decay + sq if decay is not None else a0 + acc + sq
        return x - lr * g / tf.sqrt(a), a - a0


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``n`` rows."""
    out = np.zeros((n, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out
