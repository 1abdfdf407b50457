"""Reading a Prometheus text exposition in tests."""

from __future__ import annotations


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample in a Prometheus exposition (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return None
