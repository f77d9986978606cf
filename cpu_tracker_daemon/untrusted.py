"""Files another machine wrote: :class:`NotAccepted`, the one way such a file is refused, and the
checks of its values. A bad file from elsewhere never stops this machine's own work."""

from __future__ import annotations

import math
from typing import Any


class NotAccepted(Exception):
    """A file from another machine that does not count; str() is the reason, short and stable."""


def finite_number(value: Any, reason: str) -> float:
    """``value`` as a float, if it is a JSON number (not a bool) and finite; else NotAccepted."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise NotAccepted(reason)
    return float(value)
