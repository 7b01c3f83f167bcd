"""One progress-and-cancel callback type carried from the core to every front end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from sar_ae_core.errors import Cancelled

# report(fraction_done in [0, 1], message) -> True to continue, False to cancel.
ProgressFn = Callable[[float, str], bool]


@dataclass
class Progress:
    """Wraps an optional callback; `step` reports progress and raises Cancelled when asked to stop."""

    callback: Optional[ProgressFn] = None
    start: float = 0.0
    span: float = 1.0

    def step(self, fraction: float, message: str = "") -> None:
        """Report `fraction` of this stage; raise Cancelled if the front end asked to stop."""
        if self.callback is None:
            return
        keep_going = self.callback(self.start + self.span * min(max(fraction, 0.0), 1.0), message)
        if keep_going is False:
            raise Cancelled(message or "cancelled")

    def sub(self, start: float, end: float) -> "Progress":
        """A child reporter mapping [0, 1] onto [start, end] of this one."""
        return Progress(self.callback, self.start + self.span * start, self.span * (end - start))
