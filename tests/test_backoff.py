"""The shared retry policy (lfm_stream.backoff) and the event sequence header (lfm_stream.event_seq): pure units."""

from __future__ import annotations

import numpy as np
import pytest

from lfm_stream.backoff import ExponentialBackoff, Outage, RetryBudgetExceeded, retry
from lfm_stream.event_seq import NO_SEQ, SEQ_HEADER, seq_header, seq_of, seqs_of


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_from_the_first_up_to_the_cap():
    b = ExponentialBackoff(0.1, 1.0)
    assert [b.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.delay(10_000) == 1.0  # no overflow for a very long outage


@pytest.mark.parametrize("first, cap, message", [(0, 1, "first delay must be > 0"), (2, 1, "cap must be >=")])
def test_bad_backoff_is_rejected(first, cap, message):
    with pytest.raises(ValueError, match=message):
        ExponentialBackoff(first, cap)


def test_an_outage_counts_failures_and_ends_at_the_first_success():
    clock = Clock()
    o = Outage("broker b:1", ExponentialBackoff(0.5, 2.0), budget_s=None, clock=clock)
    assert not o.active and o.ok() is None
    assert o.failed("refused") == 0.5
    clock.now += 0.5
    assert o.failed(ConnectionError("refused")) == 1.0
    assert (o.failures, o.seconds, o.last_error) == (2, 0.5, "ConnectionError: refused")
    clock.now += 1.0
    assert o.ok() == 1.5  # how long it lasted
    assert (o.active, o.failures, o.seconds) == (False, 0, 0.0)
    assert o.failed("again") == 0.5  # a new outage starts from the first delay


def test_the_budget_ends_an_outage_with_a_message_naming_what_how_long_and_why():
    clock = Clock()
    o = Outage("Kafka broker b:1", ExponentialBackoff(1.0, 4.0), budget_s=5.0, clock=clock)
    assert o.failed("x") == 1.0
    clock.now += 4.0
    assert o.failed("x") == 1.0  # 2.0 by the backoff, but only 1 s of budget is left
    assert o.left == 1.0
    clock.now += 1.0
    with pytest.raises(RetryBudgetExceeded) as exc:
        o.failed(TimeoutError("no answer"))
    assert str(exc.value) == ("Kafka broker b:1: still failing after 5 s (retry budget 5 s, 3 attempts): "
                              "TimeoutError: no answer")
    assert isinstance(exc.value.__cause__, TimeoutError)


def test_a_zero_budget_means_forever():
    clock = Clock()
    o = Outage("x", ExponentialBackoff(1.0, 1.0), budget_s=0, clock=clock)
    for _ in range(100):
        clock.now += 1000
        assert o.failed("down") == 1.0
    assert o.left is None


def test_retry_returns_the_result_and_the_failed_attempts_and_logs_each():
    calls, slept, said = [], [], []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError(f"down {len(calls)}")
        return x * 2

    out = retry("reading", flaky, 21, errors=(ConnectionError,), say=said.append,
                backoff=ExponentialBackoff(0.1, 10.0), sleep=slept.append)
    assert out == (42, 2)
    assert slept == pytest.approx([0.1, 0.2])
    assert said == ["reading failed (ConnectionError: down 1); retry 1 in 0.1s",
                    "reading failed (ConnectionError: down 2); retry 2 in 0.2s"]


def test_retry_lets_other_errors_through_and_gives_up_after_the_budget():
    with pytest.raises(KeyError):
        retry("x", lambda: {}["k"], errors=(ConnectionError,), sleep=lambda s: None)

    def down():
        raise ConnectionError("refused")

    with pytest.raises(RetryBudgetExceeded, match=r"^writing: still failing after .* \(retry budget 0.05 s, "):
        retry("writing", down, errors=(ConnectionError,), say=lambda s: None, budget_s=0.05,
              backoff=ExponentialBackoff(0.01, 0.01))


def test_seq_header_is_the_ascii_decimal_index():
    assert seq_header(0) == (SEQ_HEADER, b"0") == ("lfm-seq", b"0")
    assert seq_header(92337) == ("lfm-seq", b"92337")
    assert seq_of([seq_header(123456789012)]) == 123456789012


@pytest.mark.parametrize("headers, seq", [
    ([("lfm-seq", b"5")], 5),
    ([("other", b"1"), ("lfm-seq", b"7")], 7),
    (None, NO_SEQ), ([], NO_SEQ), ([("other", b"1")], NO_SEQ),
    ([("lfm-seq", b"-5")], NO_SEQ), ([("lfm-seq", b"1_0")], NO_SEQ), ([("lfm-seq", b" 5")], NO_SEQ),
    ([("lfm-seq", b"")], NO_SEQ), ([("lfm-seq", None)], NO_SEQ), ([("lfm-seq", b"9" * 19)], NO_SEQ),
    ([("lfm-seq", "5")], NO_SEQ),
])
def test_seq_of_reads_only_a_well_formed_header(headers, seq):
    assert seq_of(headers) == seq
    both = seqs_of([headers, [("lfm-seq", b"3")]])  # the batch form gives the same, as int64
    assert both.dtype == np.int64 and both.tolist() == [seq, 3]
