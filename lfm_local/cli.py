"""``lfm``: the umbrella command (``lfm stack up``, ``lfm demo`` ...)."""

from __future__ import annotations

import sys

from lfm_stream.version import version


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``lfm <command> ...`` to the component entry points."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "stack": "lfm_local.stack",
        "prepare": "producer.prepare",
        "replay": "producer.replay",
        "learn": "learner.__main__",
        "items": "learner.items",
        "ps": "ps_redis.__main__",
        "recall": "recall_api.__main__",
        "demo": "lfm_local.demo",
    }
    if argv and argv[0] == "--version":
        print(f"lfm {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: lfm [--version] {" + ",".join(commands) + "} [args...]\n\n"
              "  stack    start/stop the local redis-server + Tansu broker\n"
              "  prepare  MovieLens -> time-ordered TFRecord shards\n"
              "  replay   replay the shards as a Kafka rating stream\n"
              "  learn    online LFM learner (Kafka -> TensorFlow -> Redis PS)\n"
              "  items    item channel (Kafka -> co-occurrence, recent movies, popularity in Redis)\n"
              "  ps       inspect / save / load the Redis parameter server\n"
              "  recall   u2i / i2i recall API\n"
              "  demo     the whole pipeline on local servers", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(commands[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
