"""DropLog: a dropped message costs one bounded line per (sender, reason), then a count."""

from __future__ import annotations

import logging

from byzctl.transport.drops import LINE_CHARS, MAX_PAIRS, DropLog, Reason


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_drop_is_logged_repeats_are_summed_every_period(caplog):
    caplog.set_level(logging.WARNING)
    drops = DropLog(logging.getLogger("t"), "node 0", every=5.0)
    for i in range(1000):
        drops.drop(b"\x00abc", Reason.malformed, "header is not valid msgpack", now=100.0 + i * 0.001)
    assert drops.total == 1000
    assert _lines(caplog) == ["node 0 dropped a message from b'\\x00abc' (malformed): header is not valid msgpack"]
    drops.flush(now=106.0)
    assert _lines(caplog)[1] == "node 0 dropped 999 more messages from b'\\x00abc' (malformed) in the last 6s"
    drops.flush(now=112.0)
    assert len(_lines(caplog)) == 2  # nothing new, no line


def test_lines_are_bounded_whatever_the_peer_sent(caplog):
    caplog.set_level(logging.WARNING)
    drops = DropLog(logging.getLogger("t"), "relay", every=5.0)
    drops.drop(bytes(range(256)) * 800, Reason.no_edge, b"\xff" * 190_000 + b"\n" * 10, now=1.0)
    drops.drop("x" * 10_000, Reason.unknown_sender, "y\n" * 10_000, now=1.0)
    lines = _lines(caplog)
    assert len(lines) == 2 and all(len(line) <= LINE_CHARS and "\n" not in line for line in lines)


def test_senders_and_reasons_are_counted_apart_and_the_table_is_bounded(caplog):
    caplog.set_level(logging.WARNING)
    drops = DropLog(logging.getLogger("t"), "monitor", every=5.0)
    for sender in range(MAX_PAIRS + 100):
        drops.drop(sender, Reason.unknown_sender, "", now=1.0)
        drops.drop(sender, Reason.unknown_sender, "", now=1.0)
    assert len(_lines(caplog)) == MAX_PAIRS  # one first line each, up to the bound
    drops.flush(now=7.0)
    summary = _lines(caplog)[MAX_PAIRS:]
    assert "dropped 200 more messages from * (unknown sender)" in summary[-1]  # 100 unseen senders x 2
    # quiet pairs are forgotten after a while: a sender's next drop is logged again
    drops.flush(now=100.0)
    drops.drop(0, Reason.unknown_sender, "again", now=100.5)
    assert _lines(caplog)[-1] == "monitor dropped a message from 0 (unknown sender): again"


def test_normal_drops_are_counted_without_a_line(caplog):
    caplog.set_level(logging.WARNING)
    drops = DropLog(logging.getLogger("t"), "node 0")
    drops.count()
    assert drops.total == 1 and not caplog.records
