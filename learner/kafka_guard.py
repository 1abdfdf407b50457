"""The consumer through broker outages: retries with backoff, a probe of the broker, a retry budget.

:class:`GuardedSource` wraps a consumer of :mod:`learner.kafka_io` (both clients, in process or in the consumer's
child process) and keeps the loop's contract through a broker restart:

* A failing ``poll`` is retried with capped exponential backoff (:mod:`lfm_stream.backoff`, the policy the
  producer uses too).  kafka-python's poll does not fail when the broker is gone, it returns nothing, so once
  polls have come back empty for :data:`PROBE_S` the guard asks the broker for its API versions (a Kafka
  request over the configured TLS, :func:`lfm_stream.kafka_probe.probe_broker`); no answer counts as a failure
  of the same outage.
* The outage ends when records arrive or the probe is answered; it ends the learner when it lasts longer than
  the retry budget (``--retry-budget``): :class:`KafkaFailure` with a message naming the broker, how long, and
  the last error (the learner exits with code 3, no traceback).
* A commit that fails (``UnknownMemberIdError`` after the broker forgot the group, a timeout while it is down)
  is logged and dropped: the PS offsets are the truth and the next sync commits newer ones.  The clients rejoin
  the group by themselves; the learner's assignment callback then seeks to the PS offsets.
* After an assignment the guard checks each partition's first record against the offset it was sought to.  A
  broker that lost its log (Tansu keeps topics in memory) and has fewer records than the PS offset makes the
  consumer wait there (the guard says so, once): a stream published again from its start has the same offsets,
  and the learner continues exactly where it stopped.  A first record *before* that offset means the broker reset
  the position (Kafka answers an offset past its log with OFFSET_OUT_OF_RANGE and the client falls back to the
  earliest record): the offsets no longer name the records the PS applied, so the guard raises
  :class:`KafkaFailure` rather than train records twice or skip others.
"""

from __future__ import annotations

import time
from typing import Callable

from lfm_stream.backoff import ExponentialBackoff, Outage, RetryBudgetExceeded
from lfm_stream.kafka_probe import probe_broker
from lfm_stream.kafka_security import KafkaSecurity

PROBE_S = 2.0  # empty polls for this long make the guard ask the broker whether it is there


class KafkaFailure(RuntimeError):
    """The consumer cannot go on (broker away past the retry budget, settings refused, log lost); the message
    says which and what to check."""


class GuardedSource:
    """A consumer source that rides out broker outages (see the module docstring); the interface of the source.

    Args:
        source: a :mod:`learner.kafka_io` source (``poll``, ``commit``, ``close``, ``end_offsets``, ``expected``).
        bootstrap, security: the broker and how to reach it (for the probe and the messages).
        budget_s: how long an outage may last (0: forever).
        max_s: cap of the backoff.
        say: where log lines go.
        probe: the broker check (injectable; :func:`probe_broker`).
    """

    def __init__(self, source, bootstrap: str, security: KafkaSecurity, budget_s: float, max_s: float,
                 say: Callable[[str], None], probe: Callable[[str, KafkaSecurity], str | None] = probe_broker):
        self.source = source
        self.max_records = source.max_records
        self.bootstrap, self.security = bootstrap, security
        self.say = say
        self.probe = probe
        self.outage = Outage(f"Kafka broker {bootstrap} ({security.describe()})", ExponentialBackoff(0.1, max_s),
                             budget_s)
        self._quiet_since = time.monotonic()  # the last poll with records, or the last answered probe
        self._next_try = 0.0
        self._waiting: set[int] = set()  # partitions reported as waiting for their PS offset

    # -- the source's interface
    def poll(self, timeout: float):
        """Up to ``max_records`` records (None when there are none, also while the broker is away)."""
        now = time.monotonic()
        if self.outage.active and now < self._next_try:
            time.sleep(min(timeout, self._next_try - now))
            return None
        try:
            chunk = self.source.poll(timeout)
        except KafkaFailure:
            raise
        except Exception as exc:  # a client error while the broker is away: retried
            self._failed(f"poll failed: {type(exc).__name__}: {exc}")
            return None
        if chunk is not None:
            self._answered()
            if self.source.expected:
                self._check_resume(chunk)
            return chunk
        now = time.monotonic()
        if now - self._quiet_since >= PROBE_S and now >= self._next_try:
            error = self.probe(self.bootstrap, self.security)
            if error is None:
                self._answered()
                self._report_waiting()
            else:
                self._failed(f"no answer to a probe: {error}")
        return None

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit ``{partition: next offset}``; a failure is logged, never raised (the PS offsets are the truth)."""
        try:
            self.source.commit(offsets)
        except Exception as exc:
            self.say(f"kafka commit of {offsets} failed ({type(exc).__name__}: {exc}); not needed for the resume: "
                     "the PS offsets are the truth, and the next sync commits newer ones")

    def end_offsets(self) -> dict[int, int]:
        return self.source.end_offsets()

    def close(self) -> None:
        self.source.close()

    # -- outages
    def _failed(self, error: str) -> None:
        try:
            delay = self.outage.failed(error)
        except RetryBudgetExceeded as exc:
            raise KafkaFailure(f"{exc}. Is the broker running, and are the Kafka settings right "
                               "(--bootstrap, KAFKA_SECURITY_PROTOCOL and the TLS / SASL settings)?") from None
        self._next_try = time.monotonic() + delay
        left = self.outage.left
        self.say(f"Kafka broker {self.bootstrap} away ({error}); retry {self.outage.failures} in {delay:.1f}s"
                 + (f", {left:.0f} s of retry budget left" if left is not None else ""))

    def _answered(self) -> None:
        self._quiet_since = time.monotonic()
        lasted = self.outage.ok()
        if lasted is not None:
            self.say(f"Kafka broker {self.bootstrap} answering again after {lasted:.1f} s; the consumer rejoins its "
                     "group and resumes from the PS offsets")

    # -- resume checks
    def _check_resume(self, chunk) -> None:
        """Compare each sought partition's first record with the offset it was sought to (see the module doc)."""
        expected = self.source.expected
        for p in list(expected):
            at = chunk.parts == p
            if not at.any():
                continue
            first, want = int(chunk.offsets[at.argmax()]), expected.pop(p)
            self._waiting.discard(p)
            if first < want:
                raise KafkaFailure(
                    f"partition {p} of the topic restarts at offset {first}, before the PS offset {want}: the broker "
                    "no longer holds the log the PS offsets count in (it lost the topic, e.g. a restarted broker with "
                    "memory storage, or the topic was recreated). Resuming would apply records twice or skip others; "
                    "publish the stream again from its start (same offsets) or start a new PS namespace / group")
            if first > want:
                self.say(f"partition {p}: records {want}..{first - 1} are gone from the broker (retention?); "
                         f"resuming at {first}")

    def _report_waiting(self) -> None:
        """Say once per partition when its log ends before the offset the learner resumes from."""
        if not self.source.expected:
            return
        ends = self.source.end_offsets()
        for p, want in self.source.expected.items():
            if p in ends and ends[p] < want and p not in self._waiting:
                self._waiting.add(p)
                self.say(f"partition {p} ends at offset {ends[p]}, before the PS offset {want} the learner resumes "
                         "from: the broker lost the topic's log (restarted with memory storage?) or the topic was "
                         f"recreated; waiting for offset {want} (a stream published again from its start keeps the "
                         "offsets: it continues exactly there)")
