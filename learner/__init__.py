"""Online LFM learner: Kafka rating stream → TensorFlow MF step → Redis parameter server.

Modules: :mod:`learner.config` (frozen configs and presets), :mod:`learner.input` (record decoding),
:mod:`learner.model` (the TF math), :mod:`learner.metrics` (AUC, HR@k, bootstrap),
:mod:`learner.evaluate` (test metrics against the PS), :mod:`learner.loop` (with :mod:`learner.sync`,
:mod:`learner.probe`, :mod:`learner.poison` and :mod:`learner.kafka_io`, the only modules doing Kafka and Redis
I/O), :mod:`learner.plot`; the README lists the rest.  Run it with ``python -m learner`` / ``lfm-learner``.
"""

from learner.config import DEFAULT_MODEL, SEED_MODEL, LearnerConfig, ModelConfig, preset

__all__ = ["DEFAULT_MODEL", "SEED_MODEL", "LearnerConfig", "ModelConfig", "preset"]
