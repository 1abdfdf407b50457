"""Strict parsing of the numbers in request URLs: a movie or user id, and ``k``, are plain ASCII digits.

Python's ``int()`` — and pydantic's lax integer parsing behind FastAPI's ``int`` parameters — also take
``"1_0"`` (10), ``"+5"``, ``" 5"``, ``"5.0"`` and any number of digits, so ``/u2i/1_0`` would answer for user 10.
The fast path (:mod:`recall_api.protocol`) only takes ``[0-9]{1,18}`` ids and ``k=[0-9]{1,4}``; the FastAPI
routes take exactly the same language through :func:`digits` and answer 422 naming the parameter for anything
else, and ``python -m recall_api.query`` refuses the rest through :func:`parse_digits`.
"""

from __future__ import annotations

import re

from pydantic import BeforeValidator

ID_DIGITS = 18  # every 18-digit number fits an int64
K_DIGITS = 4


def parse_digits(value: str, max_digits: int) -> int:
    """``value`` as an int when it is 1 to ``max_digits`` ASCII digits (nothing else: no sign, ``_``, space).

    Raises:
        ValueError: naming the value.
    """
    if re.fullmatch(rf"[0-9]{{1,{max_digits}}}", value) is None:
        raise ValueError(f"must be 1 to {max_digits} decimal digits 0-9 (got {value!r})")
    return int(value)


def digits(max_digits: int) -> BeforeValidator:
    """A pydantic validator for an ``int`` URL parameter written as 1 to ``max_digits`` ASCII digits
    (:func:`parse_digits`).

    Values that are not strings (a parameter's default) pass through to the ``int`` validation.
    """

    def check(value):
        return parse_digits(value, max_digits) if isinstance(value, str) else value

    return BeforeValidator(check)


STRICT_ID = digits(ID_DIGITS)
STRICT_K = digits(K_DIGITS)
