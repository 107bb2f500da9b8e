"""Durations as Ollama and Go write them ("5m", "1h30m", "10s", "250ms"): keep_alive values and time budgets."""

import math
import re

from ember.core.errors import BadRequest

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | int | float | None) -> float | None:
    """Seconds to keep a model loaded; math.inf for negative values (forever); None when not given."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"invalid keep_alive {value!r}: use a duration like '5m' or a number of seconds")
    if isinstance(value, (int, float)):
        return math.inf if value < 0 else float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
        return math.inf if number < 0 else number
    except ValueError:
        pass
    if text.startswith("-"):
        return math.inf
    total = _seconds(text)
    if total is None:
        raise BadRequest(f"invalid keep_alive {value!r}: use a duration like '5m', '1h', '30s', or -1 for forever")
    return total


def parse_duration(text: str, what: str) -> float:
    """A positive duration ("10m", "1h30m", "90s", or plain seconds) in seconds; `what` names it in the error."""
    text = text.strip()
    try:
        total = float(text)
    except ValueError:
        total = _seconds(text)
    if total is None or total <= 0:
        raise BadRequest(f"invalid {what} {text!r}: use a duration like 10m, 1h30m or 90s")
    return total


def _seconds(text: str) -> float | None:
    """"1h30m" -> 5400.0; None when the text is not a sequence of number+unit parts."""
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos else None
