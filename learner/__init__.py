"""Online LFM learner: Kafka rating stream → TensorFlow MF step → Redis parameter server.

The streaming loop (:mod:`learner.loop`, class ``Learner``) is a pipeline of four stages: :mod:`learner.source`
(the consumer and the records not trained yet), :mod:`learner.trainer` (micro-batches predicted and stepped on the
held rows, the prequential AUC), :mod:`learner.sync` (the window's fenced writes to the PS) and
:mod:`learner.report` (log lines, metrics records, test evaluation, checkpoints).  Around them:
:mod:`learner.config` (frozen configs and presets), :mod:`learner.input` (record decoding), :mod:`learner.model`
(the TF math), :mod:`learner.metrics` (AUC, HR@k, bootstrap), :mod:`learner.evaluate` (test metrics against the
PS), :mod:`learner.probe`, :mod:`learner.poison`, :mod:`learner.kafka_io`, :mod:`learner.items` (the item-channel
worker) and :mod:`learner.plot`.  Run it with ``python -m learner`` / ``lfm-learner``.
"""

from learner.config import DEFAULT_MODEL, SEED_MODEL, LearnerConfig, ModelConfig, preset

__all__ = ["DEFAULT_MODEL", "SEED_MODEL", "LearnerConfig", "ModelConfig", "preset"]
