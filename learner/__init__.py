"""Online LFM learner: Kafka rating stream → TensorFlow MF step → Redis parameter server.

Modules: :mod:`learner.config` (frozen configs and presets), :mod:`learner.input` (record decoding),
:mod:`learner.model` (the TF math), :mod:`learner.metrics` (AUC, HR@k, bootstrap),
:mod:`learner.evaluate` (test metrics against the PS), :mod:`learner.loop` (the only module doing
Kafka and Redis I/O), :mod:`learner.plot`.  Run it with ``python -m learner`` / ``lfm-learner``.
"""

from learner.config import DEFAULT_MODEL, SEED_MODEL, LearnerConfig, ModelConfig, preset

__all__ = ["DEFAULT_MODEL", "SEED_MODEL", "LearnerConfig", "ModelConfig", "preset"]
