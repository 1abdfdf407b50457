"""What the chaos bench (``bench/chaos.py``) reads back after a run, and how it compares it with the stream.

* learner rows: each user / movie row's ``count`` is the number of its events applied, μ's (table ``global``)
  all of them; against the stream's own counts this gives events applied, lost and applied twice, and rows no
  good event has (poison trained);
* the activity log: each movie's positive count, and every rating in its user's seen set;
* the item channel (``learner.items``): events applied, degrees, popularity (all-time and per bucket) and recent
  movies against one pass of :mod:`learner.covisit` over the stream (exact), neighbour lists against the unfaulted
  run (their cut to the most counted depends on where windows end);
* offsets: each consumer group's PS offsets against the topic's end;
* the dead-letter topic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import redis


def stream_values(data_dir: Path, max_events: int | None) -> list[bytes]:
    """The good records of the stream, in replay order (the prepared train shards are in stream order)."""
    import tensorflow as tf

    man = json.loads((Path(data_dir) / "manifest.json").read_text())
    files = [str(Path(data_dir) / s["file"]) for s in man["train_shards"]]
    values = []
    for batch in tf.data.TFRecordDataset(files).batch(65536):
        values.extend(batch.numpy().tolist())
        if max_events is not None and len(values) >= max_events:
            break
    return values if max_events is None else values[:max_events]


def compare_counts(expected: dict[int, int], got: dict[int, int]) -> dict:
    """Per-row event counts against the expected ones.

    Returns:
        ``expected`` (events), ``applied`` (events counted on expected rows), ``lost`` (Σ of shortfalls),
        ``applied_twice`` (Σ of excesses), ``rows_off`` (expected rows whose count differs) and
        ``unexpected_rows`` / ``unexpected_events`` (rows of no expected id, e.g. a poison record trained).

    >>> compare_counts({1: 2, 2: 1}, {1: 1, 2: 3, 3: 5})
    {'expected': 3, 'applied': 4, 'lost': 1, 'applied_twice': 2, 'rows_off': 2, 'unexpected_rows': 1, 'unexpected_events': 5}
    """
    lost = sum(max(0, n - got.get(i, 0)) for i, n in expected.items())
    twice = sum(max(0, got.get(i, 0) - n) for i, n in expected.items())
    extra = set(got) - set(expected)
    return {"expected": sum(expected.values()), "applied": sum(got.get(i, 0) for i in expected), "lost": lost,
            "applied_twice": twice, "rows_off": sum(1 for i, n in expected.items() if got.get(i, 0) != n),
            "unexpected_rows": len(extra), "unexpected_events": sum(got[i] for i in extra)}


def _counts(ids: np.ndarray) -> dict[int, int]:
    u, n = np.unique(ids, return_counts=True)
    return dict(zip(u.tolist(), n.tolist()))


def learner_check(redis_url: str, namespace: str, dim: int, values: list[bytes]) -> dict:
    """The learner's rows and activity log against the stream (see the module docstring), and whether the
    namespace still describes itself (``<ns>:@meta``, the score contract ``<ns>:@contract``: what the recall
    service and the item channel open it with)."""
    from lfm_stream.schema import parse_batch
    from lfm_stream.scoring import contract_key
    from ps_redis import ParameterServer
    from ps_redis.activity import ActivityLog

    r = redis.Redis.from_url(redis_url)
    try:  # read before ParameterServer.get, which writes @meta
        described = {"meta": bool(r.exists(f"{namespace}:@meta")), "contract": bool(r.exists(contract_key(namespace)))}
    finally:
        r.close()
    c = parse_batch(values)
    ps = ParameterServer.get(redis_url, namespace, dim=dim)
    got = {t: {int(i): int(n) for r in ps.scan(t) for i, n in zip(r.ids, r.count)} for t in ("user", "item", "global")}
    out = {"users": compare_counts(_counts(c["user_id"]), got["user"]),
           "movies": compare_counts(_counts(c["movie_id"]), got["item"]),
           "mu": compare_counts({0: len(values)}, got["global"])}
    pos = c["label"] > 0.5
    want = _counts(c["raw_movie_id"][pos])
    log = ActivityLog(ps)
    out["activity_positives"] = compare_counts(want, {int(m): int(n) for m, n in log.popular(len(want) + 1000)})
    users = np.unique(c["raw_user_id"])
    seen = dict(zip(users.tolist(), log.seen_many(users.tolist())))
    out["activity_ratings_missing"] = sum(m not in seen[u] for u, m in zip(c["raw_user_id"].tolist(),
                                                                             c["raw_movie_id"].tolist()))
    out["namespace_described"] = described
    return out


def covisit_tag(namespace: str) -> str:
    return "{" + f"{namespace}:@co" + "}"


def items_state(redis_url: str, namespace: str) -> dict:
    """The item channel's Redis state: neighbours, degrees, popularity (all-time, per bucket summed), recent
    movies, events applied."""
    r = redis.Redis.from_url(redis_url)
    tag = covisit_tag(namespace)
    try:
        nb = {int(k.rsplit(b":", 1)[1]): r.get(k) for k in r.scan_iter(match=f"{tag}:nb:*", count=1000)}
        recent = {int(k.rsplit(b":", 1)[1]): [int(x) for x in r.get(k).split()[1:]]
                  for k in r.scan_iter(match=f"{tag}:recent:*", count=1000)}
        by_bucket: dict[int, int] = {}
        for key in r.scan_iter(match=f"{tag}:pop:*", count=1000):
            if not key.endswith(b":all"):
                for m, n in r.hgetall(key).items():
                    by_bucket[int(m)] = by_bucket.get(int(m), 0) + int(n)
        return {"nb": nb, "deg": {int(k): int(v) for k, v in r.hgetall(f"{tag}:deg").items()},
                "pop": {int(k): int(v) for k, v in r.hgetall(f"{tag}:pop:all").items()}, "pop_by_bucket": by_bucket,
                "recent": recent, "events": int(r.hget(f"{tag}:meta", "events") or 0)}
    finally:
        r.close()


def items_check(got: dict, values: list[bytes]) -> dict:
    """The item channel's state (:func:`items_state`) against one pass over the stream."""
    from learner.covisit import chunk_update
    from lfm_stream.schema import parse_batch
    from lfm_stream.scoring import ScoreContract, pair_weights

    k = ScoreContract()
    c = parse_batch(values)
    u = chunk_update(c["raw_user_id"], c["raw_movie_id"], c["label"], {}, 0, k.pair_window,
                     max(k.pair_window - 1, k.recent_items), k.bucket_events,
                     pair_weights(k.pair_window, k.pair_decay))
    pop: dict[int, int] = {}
    for m, n in zip(u.pop_movies.tolist(), u.pop_n.tolist()):
        pop[m] = pop.get(m, 0) + n
    want = {"deg": dict(zip(u.degree_movies.tolist(), u.degree_n.tolist())), "pop": pop,
            "recent": {user: r.tolist() for user, r in zip(u.users.tolist(), u.recent)}}
    out = {"events": compare_counts({0: len(values)}, {0: got["events"]})}
    for key in ("deg", "pop"):
        out[key] = compare_counts(want[key], got[key])
    out["pop_by_bucket"] = compare_counts(pop, got["pop_by_bucket"])
    out["recent_users_off"] = sum(got["recent"].get(user) != r for user, r in want["recent"].items()) + \
        len(set(got["recent"]) - set(want["recent"]))
    out["neighbour_lists"] = len(got["nb"])
    return out


def fence_offsets(r: redis.Redis, namespace: str, group: str, topic: str) -> int | None:
    """Sum of the PS offsets of (group, topic) (the fence hash's partition fields), None while Redis is away."""
    try:
        h = r.hgetall(f"{namespace}:@fence:{group}:{topic}")
    except redis.RedisError:
        return None
    return sum(int(v) for k, v in h.items() if k.isdigit())


def topic_end(bootstrap: str, topic: str) -> int:
    """Sum over ``topic``'s partitions of the offset after its last record, read from the records themselves:
    Tansu answers an end offset of the start of the last batch + 1, short by up to one producer batch."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000,
                      fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        if not tps:
            return 0
        reported = c.end_offsets(tps)
        c.assign(tps)
        for tp in tps:
            c.seek(tp, max(0, reported[tp] - 1))  # the last batch starts there
        last = {tp: reported[tp] for tp in tps}
        for m in c:  # until no record came for consumer_timeout_ms
            tp = TopicPartition(m.topic, m.partition)
            last[tp] = max(last[tp], m.offset + 1)
        return sum(last.values())
    finally:
        c.close()


def topic_audit(bootstrap: str, topic: str, end: int) -> dict:
    """What the topic holds, read from its start to ``end`` (one partition): records, offsets without a record,
    stream events (``lfm-seq``) and their extra copies, and the offset of each poison record (key ``poison-<n>``)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000,
                      fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20)
    tp = TopicPartition(topic, 0)
    records, seqs, poison, last = 0, set(), {}, -1
    gaps = copies = 0
    try:
        c.assign([tp])
        c.seek_to_beginning(tp)
        for m in c:
            records += 1
            gaps += m.offset - last - 1
            last = m.offset
            seq = dict(m.headers).get("lfm-seq")
            if seq is not None:
                copies += seq in seqs
                seqs.add(seq)
            elif m.key and m.key.startswith(b"poison-"):
                poison[int(m.key[7:])] = m.offset
            if m.offset + 1 >= end:
                break
    finally:
        c.close()
    return {"records": records, "end": last + 1, "offsets_without_record": gaps + max(0, end - last - 1),
            "events": len(seqs), "event_copies": copies, "poison_at": poison}


def dead_letters(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, str]]]:
    """(key, headers) of every record of the dead-letter topic ``<topic>.dlq``."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000,
                      fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20)
    try:
        parts = c.partitions_for_topic(f"{topic}.dlq") or set()
        tps = [TopicPartition(f"{topic}.dlq", p) for p in parts]
        if not tps:
            return []
        end = c.end_offsets(tps)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out = []
        while any(c.position(tp) < end[tp] for tp in tps):
            got = c.poll(timeout_ms=2000)
            if not got:
                break
            for recs in got.values():
                out.extend((m.key, {k: v.decode(errors="replace") for k, v in m.headers}) for m in recs)
        return out
    finally:
        c.close()
