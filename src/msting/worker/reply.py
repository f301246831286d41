"""The text of one reply, token by token (no ``llama_cpp`` here).

:class:`ReplyText` turns the bytes of each sampled token into the text that can go
out: UTF-8 decoded incrementally (a character split over two tokens waits for its
second half), a chat reply's leading whitespace dropped, and text that could be the
start of a stop sequence held back until it is known not to be. The stop sequence
itself is never returned. Every piece says how many tokens it covers.
"""

from __future__ import annotations

import codecs


class ReplyText:
    def __init__(self, stops: list[str], strip_leading: bool) -> None:
        self.stops = stops
        self.stopped = False  # a stop sequence ended the reply
        self._strip = strip_leading
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text that may be the start of a stop sequence
        self._unreported = 0  # tokens not yet attributed to a returned piece

    def feed(self, piece: bytes) -> tuple[str, int] | None:
        """One more token: the (text, tokens) that can go out now, or None. Sets
        :attr:`stopped` when a stop sequence appeared (the text before it is returned)."""
        self._unreported += 1
        text = self._held + self._decoder.decode(piece)
        if self._strip:
            text = text.lstrip()
            self._strip = not text
        keep = 0
        if self.stops:
            cut = find_stop(text, self.stops)
            if cut is not None:
                self._held = ""
                self.stopped = True
                return self._out(text[:cut]) if cut else None
            keep = stop_prefix_len(text, self.stops)
        if keep:
            emit, self._held = text[:-keep], text[-keep:]
        else:
            emit, self._held = text, ""
        return self._out(emit) if emit else None

    def end(self) -> tuple[str, int] | None:
        """The reply ended (not by a stop sequence): the held-back text (it was not a
        stop after all) and an incomplete UTF-8 tail, cut at a stop found in them
        (then :attr:`stopped` is set)."""
        if self.stopped:
            return None
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        if self._strip:
            rest = rest.lstrip()
        cut = find_stop(rest, self.stops) if self.stops and rest else None
        if cut is not None:
            rest = rest[:cut]
            self.stopped = True
        return self._out(rest) if rest or self._unreported else None

    def _out(self, text: str) -> tuple[str, int]:
        n, self._unreported = self._unreported, 0
        return text, n


def find_stop(text: str, stops: list[str]) -> int | None:
    best: int | None = None
    for s in stops:
        i = text.find(s)
        if i != -1 and (best is None or i < best):
            best = i
    return best


def stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of *text* that is a proper prefix of a stop."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
