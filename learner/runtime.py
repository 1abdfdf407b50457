"""Process-wide settings of the learner: TF and BLAS thread pools, the GIL switch interval.

The micro-batch step's ops and the prequential HR matmuls are tiny; on a small machine the spinning threads of
TF's and OpenBLAS's pools only take cores from Redis, the broker and the consumer.  Each setting reads an
environment variable (``LFM_TF_THREADS``, ``LFM_BLAS_THREADS``: 0 = the library's default of one per core;
``LFM_SWITCH_INTERVAL`` in seconds).
"""

from __future__ import annotations

import os
import sys

from lfm_stream.quiet import import_tensorflow


def tf_threads(n: int) -> None:
    """Run TF ops on ``n`` intra-op and inter-op threads (0 = TF's default, one per core)."""
    tf = import_tensorflow()  # quietly, also for a learner built in-process (tests, benches), which skips main()

    if n > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:  # already initialized in this process (tests run several learners)
            pass


def blas_threads(n: int) -> None:
    """Run numpy's BLAS on ``n`` threads (0 = its default, one per core)."""
    if n > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")


def configure() -> None:
    """Apply the three settings from the environment (defaults: 1 TF thread, 1 BLAS thread, 0.2 ms).

    The prefetch and sync threads hold the GIL in pure-Python stretches; a short switch interval keeps the main
    thread's many short GIL re-acquisitions (tensor conversions around the TF step) from waiting the default
    5 ms each."""
    tf_threads(int(os.environ.get("LFM_TF_THREADS", "1")))
    blas_threads(int(os.environ.get("LFM_BLAS_THREADS", "1")))
    sys.setswitchinterval(float(os.environ.get("LFM_SWITCH_INTERVAL", "0.0002")))
