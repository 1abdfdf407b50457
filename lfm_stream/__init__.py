"""Shared core of LFM Stream: the record schema, id hashing, configuration helpers, the score contract and the
other small pieces every component uses.  It imports no other package of the project (the local stack, the demo
and the ``lfm`` CLI live in :mod:`lfm_local`)."""
