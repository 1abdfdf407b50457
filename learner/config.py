"""Learner configuration: one frozen dataclass for the model math, one for the streaming loop.

Two named presets:

* ``default`` — the recipe chosen on the validation split (``producer.prepare --validation``) to be
  good at both goals at once: biased MF, logloss on the 0/1 label, per-event-equivalent row-wise
  Adagrad (lr 0.1 vectors, 0.2 biases and μ; the user-bias accumulator decays 0.9 per event), the rating as a
  graded second target; micro-batches of 64 events (512 gave the same end-of-stream AUC within noise but a much
  lower prequential AUC: a time-ordered micro-batch of 512 holds few users' sessions, each predicted from the
  state before it).  What the recall service ranks with is not a learner option: the score contract
  (:mod:`lfm_stream.scoring`) combines the learner's rows with the item channel and stream popularity.
* ``seed`` — the seed project's configuration, kept for the before/after comparison: dim 8, no
  biases, MSE on the 0/1 label, plain SGD with lr 1e-4, batch 8, gradient of the batch mean.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lfm_stream.kafka_security import KafkaSecurity
from lfm_stream.scoring import ScoreContract
from learner.validate import RecordLimits

LOSSES = ("mse", "logloss")
OPTIMIZERS = ("sgd", "adagrad", "adagrad_ev")
REDUCTIONS = ("sum", "mean")
PUSH_MODES = ("auto", "assign", "gradient")
BACKENDS = ("kafka-python", "confluent")
ON_PS_LOSS = ("fail", "rebuild")  # what the learner does when a write finds the PS lost what it had stored


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the online MF model (see :mod:`learner.model` for the equations).

    Attributes:
        dim: latent dimension d.
        batch_size: events per micro-batch (the TF step is traced once for this padded size).
        init_std: vectors start as N(0, init_std²) (the PS initializes them; biases start at 0).
        use_bias: include b_u, b_i and μ in the prediction (False = the seed's u·i only).
        learn_mu: learn the global offset μ (table ``global``).
        loss: ``mse`` (½(ŷ−y)² on the 0/1 label) or ``logloss`` (BCE of sigmoid(ŷ)).
        optimizer: ``sgd``, ``adagrad`` (per coordinate, accumulators stored in the PS rows) or
            ``adagrad_ev`` (per-event-equivalent Adagrad: accumulates Σ of per-event squared gradients).
        user_bias_decay: the user-bias Adagrad accumulator decays by this factor per event (1 = off).
        lr: learning rate of vectors; lr_bias of biases and μ (None = lr).
        init_accum: Adagrad's initial accumulator (the PS stores accumulators minus this value).
        reduction: ``sum`` — a row's gradient is the sum over its events; ``mean`` — the seed's
            tf.reduce_mean over the batch.
        l2_bias: L2 per event on the biases (adds l2_bias·b to each event's gradient; swept in
            docs/decisions.md, off in both presets).
        clip: clip each row's vector gradient to this L2 norm and bias gradients to ±clip (0 = off): the guard
            against a diverging step.
        rating_weight: the training target is ``(1 − rating_weight)·label + rating_weight·(rating − 0.5) / 4.5``
            (clipped to [0, 1]): the rating value as a second, graded target of the same logloss (chosen on the
            validation folds: 0.5 raised the end-of-stream AUC by ~0.004 on all five, 0.8 and 1.0 no further,
            and 0.8 cost prequential AUC).  Metrics always use the 0/1 label.
        seed: seed of the PS initializer and of the prequential HR@k sampling.
    """

    dim: int = 32
    batch_size: int = 64
    init_std: float = 0.01
    use_bias: bool = True
    learn_mu: bool = True
    loss: str = "logloss"
    optimizer: str = "adagrad_ev"
    lr: float = 0.1
    lr_bias: float | None = 0.2
    init_accum: float = 0.1
    reduction: str = "sum"
    user_bias_decay: float = 0.9
    l2_bias: float = 0.0
    clip: float = 0.0
    rating_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"model config: {name} {why} (got {getattr(self, name)!r})")

        if self.dim < 1:
            bad("dim", "must be >= 1")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.loss not in LOSSES:
            bad("loss", f"must be one of {LOSSES}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {OPTIMIZERS}")
        if self.reduction not in REDUCTIONS:
            bad("reduction", f"must be one of {REDUCTIONS}")
        for name in ("lr", "init_accum"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        for name in ("init_std", "l2_bias", "clip"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.lr_bias is not None and not self.lr_bias > 0:
            bad("lr_bias", "must be > 0 or None")
        if not 0 <= self.rating_weight <= 1:
            bad("rating_weight", "must be in [0, 1]")
        if not 0 < self.user_bias_decay <= 1:
            bad("user_bias_decay", "must be in (0, 1]")
        if self.optimizer != "sgd" and self.init_accum <= 0:
            bad("init_accum", "must be > 0 for adagrad")
        if not self.use_bias and self.learn_mu:
            bad("learn_mu", "needs use_bias=True")

    @property
    def bias_lr(self) -> float:
        """Learning rate of biases and μ."""
        return self.lr if self.lr_bias is None else self.lr_bias


#: The recipe chosen on the validation split (see bench/quality.py and the README).
DEFAULT_MODEL = ModelConfig()

#: The seed project's configuration.
SEED_MODEL = ModelConfig(
    dim=8, batch_size=8, init_std=0.1, use_bias=False, learn_mu=False, loss="mse", optimizer="sgd",
    lr=1e-4, reduction="mean", rating_weight=0.0)

PRESETS: dict[str, ModelConfig] = {"default": DEFAULT_MODEL, "seed": SEED_MODEL}


def preset(name: str, **overrides) -> ModelConfig:
    """The named preset with ``overrides`` applied (unknown names raise ``ValueError``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown model parameter(s) {sorted(unknown)}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class LearnerConfig:
    """The streaming loop: servers, topic, group, logging cadence, stop conditions.

    Attributes:
        model: the model hyperparameters.
        redis_url, bootstrap, topic, group, namespace: where to read and write.
        data_dir: prepared data directory (its ``manifest.json`` lists the test shards), or None.
        metrics_path: JSON-lines metrics file (one object per log event), or None.
        checkpoint_dir: where PS checkpoints go after each test evaluation (None = no checkpoint).
        backend: Kafka client, ``kafka-python`` (default) or ``confluent``.
        session_timeout_ms, heartbeat_interval_ms: consumer-group timing (Tansu joins take ~½ session).
        max_events: stop after this many stream events (0 = no limit).
        idle_timeout: stop after this many seconds without a record (0 = never).
        flush_ms: flush a partial batch when no record arrived for this long.
        sync_ms: while a backlog is being drained, micro-batches train on rows held locally and the
            rows they changed are written to the PS (fenced, one transaction) at least every ``sync_ms``
            milliseconds; a learner that has reached the end of the stream syncs after every chunk.
            0 = sync after every chunk.  Gradient-mode pushes (several workers) always sync after every
            chunk (up to 8,192 events): the other workers' updates of shared item rows reach a worker
            within one chunk.
        workers: learners in the group (> 1 switches pushes to gradient mode under ``auto``).
        push_mode: ``auto`` (assign for one worker, gradient for several), ``assign`` or ``gradient``.
        prefetch: consume on a background thread, overlapping the network with compute.
        consumer_process: run the consumer in a child process that sends the polled records through a pipe
            (the loop no longer shares the GIL with the client's record parsing and message building).
            None (default) = with ``prefetch``, for both clients: kafka-python's pure-Python parsing is what
            binds in process, and confluent-kafka's consumer thread still holds the GIL to build messages.
        train_log_steps: batches between prequential AUC/loss lines.
        test_log_steps: batches between test evaluations + checkpoints (0 = only at the end).
        hr_sample: share of positive events scored for prequential HR@k (0 = off).
        hr_k: k of the prequential hit rate.
        dlq: copy poison records to ``<topic>.dlq``.
        limits: the field ranges a stream record must be in to be trained (timestamp window, rating range,
            label rule; :class:`learner.validate.RecordLimits`); other records are poison.
        retry_max_s: cap of the exponential backoff on Redis/broker errors.
        retry_budget_s: how long the Kafka broker may stay away (unreachable, or failing every poll) before the
            learner stops with an error (exit 3); 0 = wait forever.
        kafka_security: TLS / SASL settings of the consumer and the dead-letter producer.
        on_ps_loss: when a PS write finds stored offsets gone or behind what this learner wrote (Redis restarted
            without persistence, the last second of its append-only file, a flush, an older snapshot loaded):
            ``fail`` (default) stops with an error naming the offsets, writing and committing nothing more;
            ``rebuild`` drops what it holds and replays from the PS offsets (the earliest where none).
        xla: compile the TF loop over a chunk's micro-batches with XLA (see :class:`learner.model.MFModel`).
        contract: the recall score contract the learner writes to ``<ns>:@contract`` at start (None: the defaults of
            :class:`lfm_stream.scoring.ScoreContract` with the model's dim).
        progress_s: seconds between progress lines when stderr is not a TTY (a TTY gets a bar; 0 = neither).
        metrics_port, metrics_host: serve Prometheus ``/metrics`` there (0 = not served).
    """

    model: ModelConfig = field(default_factory=lambda: DEFAULT_MODEL)
    redis_url: str = "redis://127.0.0.1:6379/0"
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "ratings"
    group: str = "lfm-learner"
    namespace: str = "lfm"
    data_dir: str | None = None
    metrics_path: str | None = None
    checkpoint_dir: str | None = None
    backend: str = "kafka-python"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_events: int = 0
    idle_timeout: float = 0.0
    flush_ms: int = 200
    sync_ms: int = 1000
    workers: int = 1
    push_mode: str = "auto"
    prefetch: bool = True
    consumer_process: bool | None = None
    train_log_steps: int = 800
    test_log_steps: int = 0
    hr_sample: float = 0.02
    hr_k: int = 50
    dlq: bool = True
    limits: RecordLimits = field(default_factory=RecordLimits)
    retry_max_s: float = 10.0
    retry_budget_s: float = 60.0
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    on_ps_loss: str = "fail"
    xla: bool = True
    contract: ScoreContract | None = None
    progress_s: float = 5.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"learner config: {name} {why} (got {getattr(self, name)!r})")

        if self.backend not in BACKENDS:
            bad("backend", f"must be one of {BACKENDS}")
        if self.push_mode not in PUSH_MODES:
            bad("push_mode", f"must be one of {PUSH_MODES}")
        for name in ("max_events", "test_log_steps"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("workers", "train_log_steps", "hr_k", "session_timeout_ms", "heartbeat_interval_ms"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            bad("heartbeat_interval_ms", f"must be < session_timeout_ms ({self.session_timeout_ms})")
        if not 0.0 <= self.hr_sample <= 1.0:
            bad("hr_sample", "must be in [0, 1]")
        for name in ("idle_timeout", "flush_ms", "sync_ms", "progress_s", "metrics_port", "retry_budget_s"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.on_ps_loss not in ON_PS_LOSS:
            bad("on_ps_loss", f"must be one of {ON_PS_LOSS}")
        if not self.topic:
            bad("topic", "must not be empty")

    @property
    def in_child(self) -> bool:
        """Whether the consumer runs in a child process (see ``consumer_process``)."""
        if self.consumer_process is None:
            return self.prefetch
        return self.consumer_process

    @property
    def score_contract(self) -> ScoreContract:
        """The contract this learner writes (its dim is the model's)."""
        return (self.contract or ScoreContract()).replace(dim=self.model.dim)

    @property
    def gradient_push(self) -> bool:
        """True when pushes are gradient-mode (server-side v ← v − step)."""
        return self.push_mode == "gradient" or (self.push_mode == "auto" and self.workers > 1)

    @property
    def dlq_topic(self) -> str:
        """Dead-letter topic: ``<topic>.dlq``."""
        return f"{self.topic}.dlq"
