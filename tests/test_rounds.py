"""The shared round loop (node/rounds.py): when gathers close, and each role's policy
at round_timeout. Driven on bare role objects with a fake clock, no sockets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from byzctl.dag import Dag, DagRun, Gather, Op
from byzctl.errors import PeerError
from byzctl.node.peer import Peer
from byzctl.node.ps import PsServer
from byzctl.node.rounds import RoundLoop


def bare(cls: type[RoundLoop], gathers: dict[str, Gather], lost: frozenset[int] = frozenset()) -> Any:
    node = cls.__new__(cls)
    node.outbox = {}  # a peer's queued sends: none
    node.topo = SimpleNamespace(quorum_deadline=1.0, round_timeout=10.0)
    node.lost, node.round, node.round_t0, node.quorum_t = set(lost), 3, 0.0, {}
    ops = [Op(f"use_{g}", lambda v: v, (g,)) for g in gathers]
    node.run = DagRun(Dag([], ops, gathers))
    return node


@pytest.mark.parametrize("cls", [PsServer, Peer])
def test_a_gather_closes_when_every_live_node_answered(cls):
    node = bare(cls, {"vectors": Gather(frozenset({1, 2, 3}), 2)}, lost=frozenset({3}))
    node.run.feed("vectors", 1, "a")
    node.close_gathers(0.1)
    assert not node.run.has("vectors")
    node.run.feed("vectors", 2, "b")
    node.close_gathers(0.2)
    assert node.run.has("vectors") and node.next_deadline() is None


@pytest.mark.parametrize("cls", [PsServer, Peer])
def test_a_quorum_closes_the_gather_quorum_deadline_later(cls):
    node = bare(cls, {"vectors": Gather(frozenset({1, 2, 3}), 2)})
    node.run.feed("vectors", 1, "a")
    node.run.feed("vectors", 2, "b")
    node.close_gathers(5.0)
    assert not node.run.has("vectors") and node.next_deadline() == 6.0
    node.close_gathers(6.0)
    assert node.run.has("vectors") and node.run.arrived_from("vectors") == {1, 2}


def test_the_server_fails_the_round_at_round_timeout_naming_the_missing_workers():
    node = bare(PsServer, {"vectors": Gather(frozenset({1, 2, 3}), 3)})
    node.run.feed("vectors", 2, "b")
    assert node.next_deadline() == 10.0
    node.close_gathers(9.9)
    with pytest.raises(PeerError, match=r"round 3: no quorum after round_timeout=10.0s; missing workers \[1, 3\]"):
        node.close_gathers(10.0)


def test_a_peer_goes_on_at_round_timeout_with_what_arrived(caplog):
    node = bare(Peer, {"neigh": Gather(frozenset({1, 2, 3}), 3)})
    node.run.feed("neigh", 2, "b")
    node.close_gathers(10.0)
    assert node.run.has("neigh") and node.run.arrived_from("neigh") == {2}
    assert "round 3: round_timeout with neighbours [1, 3] missing; going on with 1" in caplog.text


def test_a_lost_neighbour_lowers_a_peers_quorum_but_not_the_servers():
    for cls, closes in ((Peer, True), (PsServer, False)):
        node = bare(cls, {"g": Gather(frozenset({1, 2, 3, 4}), 3)}, lost=frozenset({4}))
        node.run.feed("g", 1, "a")
        node.run.feed("g", 2, "b")
        node.close_gathers(0.0)
        node.close_gathers(1.0)
        assert node.run.has("g") is closes, cls


def test_the_servers_byzantine_gather_waits_for_the_oracle():
    node = bare(PsServer, {"byzantine": Gather(frozenset({5, 6}), 0)})
    node.close_gathers(2.0)  # its minimum (0) is met, but the oracle has not run
    assert not node.run.has("byzantine") and "byzantine" not in node.quorum_t
