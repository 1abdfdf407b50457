"""Shared core of LFM Stream: the record schema, id hashing, configuration helpers and the local stack."""
