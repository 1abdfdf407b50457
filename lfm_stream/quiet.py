"""Keep TensorFlow's logging off the console: one call at the start of every entry point that imports TF.

TensorFlow writes from C++ (``I0000 ... cpu_feature_guard.cc``, XLA's ``service.cc``, absl's ``WARNING: All
log messages before absl::InitializeLog()``, oneDNN notices) and from Python (``WARNING:tensorflow:AutoGraph
could not transform ...``, absl's Python logger).  The C++ side reads its level from the environment once,
when the library loads, so :func:`quiet_tensorflow` must run before the first ``import tensorflow`` of the
process; child processes inherit the environment.  A variable the user set already is kept (e.g.
``TF_CPP_MIN_LOG_LEVEL=0`` to debug TF).  Errors still print: level 2 hides INFO and WARNING only.

Recent TensorFlow releases log through absl before absl's logging is initialized, and those lines ignore
``TF_CPP_MIN_LOG_LEVEL``: the oneDNN notice when the library loads (2.21), XLA's start and "Compiled cluster using
XLA!" at the first compile (2.18–2.21).  :func:`import_tensorflow` loads TF, and the learner compiles its model,
with the process's native stderr (fd 2) pointed at /dev/null (:func:`muted_native_stderr`), at start, before any
other thread runs; a Python error raised there is printed after fd 2 is back.  A user who sets
``TF_CPP_MIN_LOG_LEVEL`` to 0 or 1 sees everything.

``TF_ENABLE_ONEDNN_OPTS`` is left alone: it switches oneDNN kernels on or off (numerics and speed), not
logging.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

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


def wants_tf_logs() -> bool:
    """Whether the user asked for TF's INFO or WARNING lines (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1)."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1")


@contextmanager
def muted_native_stderr():
    """Point fd 2 at /dev/null for the duration (unless :func:`wants_tf_logs`); Python's stderr is flushed on the
    way in and out.  For start-up steps only, while no other thread writes to stderr."""
    if wants_tf_logs():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    """:func:`quiet_tensorflow`, then ``import tensorflow`` with fd 2 muted (the notices of its load); returns the
    module."""
    quiet_tensorflow()
    if "tensorflow" not in sys.modules:
        with muted_native_stderr():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]
