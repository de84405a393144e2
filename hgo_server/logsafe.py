"""Log hygiene for peer-supplied text and for floods of refused calls.

* :func:`escape` makes a string safe to put in a log line: control characters
  (newline, carriage return, escape sequences, ...) become visible ``\\n``, ``\\x1b``
  escapes, so a worker cannot forge a log line through ``Leave.reason`` or ``Join.name``,
  and the text is cut to a bounded length.
* :class:`RateLimitedLog` writes at most one line per ``interval`` seconds per key and
  says how many it held back; counters (``hgo_rejected_messages_total``) keep the full
  count, the log keeps its size.
"""

from __future__ import annotations

import logging
import time

_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("\\"): "\\\\",
}
_C1 = {i: f"\\x{i:02x}" for i in range(0x80, 0xA0)}  # C1 controls (e.g. CSI 0x9b)
_TABLE = _CONTROL | _C1 | {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"}


def escape(text: object, limit: int = 200) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (``...`` added)."""
    s = str(text)
    cut = len(s) > limit
    out = s[:limit].translate(_TABLE)
    return out + "..." if cut else out


class RateLimitedLog:
    """At most one log line per ``interval`` seconds for each key; the rest are counted.

    The first call for a key logs at once; calls within the interval are suppressed, and
    the next line that gets through says ``(N more suppressed)``.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = float(interval)
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` logged less than ``interval`` ago; True when written."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) > 1024:  # keys are few (reasons); never let them grow without bound
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            msg = msg + " (%d more suppressed in the last %.0f s)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args)
        return True
