"""Turns a stream of token bytes into text, holding back just enough to honour stop strings.

Tokens can split a UTF-8 character (common in Russian) or a stop string; neither may leak to the client.
"""

import codecs


class TextStream:
    def __init__(self, stop: list[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._held = ""
        self.text = ""  # everything released so far
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to release ("" if held back)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        for stop in self._stop:
            at = self._held.find(stop)
            if at >= 0:
                self.stopped = True
                return self._release(self._held[:at])
        keep = max((self._partial(s) for s in self._stop), default=0)
        return self._release(self._held[: len(self._held) - keep], keep)

    def finish(self) -> str:
        """Release whatever is held at the end of generation."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.decode(b"", final=True))

    def _partial(self, stop: str) -> int:
        # The longest tail of what is held that could still grow into `stop`.
        for n in range(min(len(stop) - 1, len(self._held)), 0, -1):
            if self._held.endswith(stop[:n]):
                return n
        return 0

    def _release(self, out: str, keep: int = 0) -> str:
        self._held = self._held[len(self._held) - keep:] if keep else ""
        self.text += out
        return out
