"""Keep TensorFlow's logging off the console: one call at the start of every entry point that imports TF.

TensorFlow writes from C++ (``I0000 ... cpu_feature_guard.cc``, XLA's ``service.cc``, absl's ``WARNING: All
log messages before absl::InitializeLog()``, oneDNN notices) and from Python (``WARNING:tensorflow:AutoGraph
could not transform ...``, absl's Python logger).  The C++ side reads its level from the environment once,
when the library loads, so :func:`quiet_tensorflow` must run before the first ``import tensorflow`` of the
process; child processes inherit the environment.  A variable the user set already is kept (e.g.
``TF_CPP_MIN_LOG_LEVEL=0`` to debug TF).  Errors still print: level 2 hides INFO and WARNING only.

``TF_ENABLE_ONEDNN_OPTS`` is left alone: it switches oneDNN kernels on or off (numerics and speed), not
logging; oneDNN's notice is an INFO line and level 2 hides it.
"""

from __future__ import annotations

import logging
import os

#: Environment read by TF's C++ logging (and gRPC's, glog's) when the library loads.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR
    "TF_CPP_MIN_VLOG_LEVEL": "0",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
    "AUTOGRAPH_VERBOSITY": "0",
}
#: Python loggers of TensorFlow and absl (AutoGraph's "could not transform" warnings are about its reading of
#: our source, not about results: the function then runs as plain Python, as written).
QUIET_LOGGERS = ("tensorflow", "absl")


def quiet_tensorflow() -> None:
    """Silence TF's C++, absl and Python logs below ERROR (idempotent; values already set are kept)."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
