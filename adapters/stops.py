"""Stop sequences, shared by every adapter: text after a stop never reaches the client."""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Feed text pieces in order; get back the text that is safe to emit.

    Text that could be the start of a stop sequence is held back until the next piece proves it
    is not.  Once a stop sequence is seen, everything from it on is dropped and `stopped` is set.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[: min(hits)]
        keep = self._longest_stop_prefix_suffix(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The held-back text, once generation ended without a stop sequence."""
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:k]):
                    longest = k
                    break
        return longest
