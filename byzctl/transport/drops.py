"""Dropped messages, counted and logged in bounded lines: what a hostile peer cannot flood.

Every socket that hears from peers (the monitor, the ps server, the hub relay, mesh
inboxes) drops what it does not accept through one `DropLog`. The first drop of a
(sender, reason) pair is logged at once in one line of at most `LINE_CHARS`
characters; repeats are only counted and summed up in one line per pair every
`every` seconds. 1,000 random-byte messages to the hub relay used to grow its log by
23 MB (the raw destination frame was printed, lines up to 189,263 characters); now
they cost a handful of lines.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

LINE_CHARS = 300
"""The longest line a drop writes (a peer's bytes in it are cut and escaped first)."""
SENDER_CHARS = 48
"""How much of a sender (a routing id, a claimed node id) a line shows."""
FORGET = 12
"""Summary periods after which a quiet (sender, reason) pair is forgotten."""
MAX_PAIRS = 256
"""Distinct (sender, reason) pairs tracked; beyond them drops count under sender '*'."""


class Reason(enum.Enum):
    """Why a message was dropped; the value is how a log line says it."""

    malformed = "malformed"
    unauthenticated = "not authenticated"
    other_run = "another run"
    unknown_sender = "unknown sender"
    refused_hello = "refused hello"
    unexpected = "unexpected"
    no_edge = "no such edge"
    queue_full = "not sent: peer gone or not reading"


def shown(value: object, limit: int = SENDER_CHARS) -> str:
    """`value` for a log line: repr'd (bytes escaped), at most `limit` characters."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = repr(bytes(value[:limit]))  # escaped, and never more than it shows
    else:
        text = str(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Pair:
    count: int = 0
    """Drops since the last line about this pair."""
    since: float = 0.0


class DropLog:
    """Counts drops; logs the first of each (sender, reason) and a summary of repeats."""

    def __init__(self, log: logging.Logger, who: str, every: float = 5.0):
        self.log, self.who, self.every = log, who, every
        self.total = 0
        self._pairs: dict[tuple[str, Reason], _Pair] = {}
        self._next_flush = 0.0

    def drop(self, sender: object, reason: Reason, detail: object = "", now: float | None = None) -> None:
        """Count one dropped message; log it if it is the first of its (sender, reason)."""
        now = time.monotonic() if now is None else now
        self.total += 1
        who = shown(sender)
        key = (who, reason)
        pair = self._pairs.get(key)
        if pair is None:
            if len(self._pairs) >= MAX_PAIRS:
                key = ("*", reason)
                pair = self._pairs.setdefault(key, _Pair(since=now))
                pair.count += 1
            else:
                self._pairs[key] = _Pair(since=now)
                self._line(f"{self.who} dropped a message from {who} ({reason.value}): {shown(detail, LINE_CHARS)}")
        else:
            pair.count += 1
        self.flush(now)

    def count(self) -> None:
        """Count a drop that is part of normal operation (a late vector): no line."""
        self.total += 1

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Every `every` seconds (or now, with force): one line per pair that repeated.
        A pair quiet for `FORGET` periods is forgotten (its next drop is logged again)."""
        now = time.monotonic() if now is None else now
        if not force and now < self._next_flush:
            return
        self._next_flush = now + self.every
        for key, pair in list(self._pairs.items()):
            if pair.count:
                who, reason = key
                self._line(f"{self.who} dropped {pair.count} more messages from {who} ({reason.value}) in the last {now - pair.since:.0f}s")
                pair.count, pair.since = 0, now
            elif now - pair.since > FORGET * self.every:
                del self._pairs[key]

    def _line(self, text: str) -> None:
        self.log.warning("%s", text if len(text) <= LINE_CHARS else text[: LINE_CHARS - 3] + "...")
