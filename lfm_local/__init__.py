"""The local stack, the demo and the ``lfm`` CLI: how LFM Stream runs on one machine.

- :mod:`lfm_local.stack`: ``LocalStack`` (redis-server + Tansu on free loopback ports), ``python -m lfm_local.stack``.
- :mod:`lfm_local.demo`: ``lfm demo``, the whole pipeline on local servers in one command.
- :mod:`lfm_local.cli`: ``lfm``, the umbrella command (``python -m lfm_local`` runs it too).

This package sits on top of the others (it starts their entry points and reads the PS for the demo's report);
none of ``lfm_stream``, ``producer``, ``ps_redis``, ``learner``, ``recall_api`` imports it.
"""
