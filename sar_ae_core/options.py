"""Checks of user option values where the API meets the user: each failure is the project's input error naming
the option (exit 2, one line), never a ValueError from deep inside (which would be a bug, and is left to surface
as one)."""

from __future__ import annotations

import re
from typing import Iterable

from sar_ae_core.errors import SarInputError

MAX_TILE = 4096
MAX_BATCH = 1024
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")


def int_option(name: str, value, lo: int, hi: int, multiple_of: int = 1, odd: bool = False) -> int:
    """An integer option in [lo, hi] (a multiple of `multiple_of`, odd when asked)."""
    try:
        v = int(value)
        if v != value:
            raise ValueError
    except (TypeError, ValueError):
        raise SarInputError(None, f"{name} must be an integer (got {value!r})") from None
    what = (f"an odd integer" if odd else "a multiple of " + str(multiple_of) if multiple_of > 1 else "an integer")
    if not lo <= v <= hi or v % multiple_of or (odd and v % 2 == 0):
        raise SarInputError(None, f"{name} must be {what} from {lo} to {hi} (got {value})")
    return v


def choice_option(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise SarInputError(None, f"{name} must be one of {', '.join(choices)} (got {value!r})")
    return value


def device_option(value) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (whether it exists is checked when the device is selected)."""
    v = "auto" if value in (None, "") else str(value)
    if not _DEVICE.match(v):
        raise SarInputError(None, f"--device must be auto, cpu, cuda or cuda:N (got {value!r})")
    return v
