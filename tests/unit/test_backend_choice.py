"""The leader's backend decision: every combination, and the rules that make switching safe."""

from __future__ import annotations

import itertools

import pytest

from rollingops.backend_choice import Backend, Fallback, Health, choose

HEALTHY = Health(etcd_usable=True, etcd_failed=False, peer_busy=False)


@pytest.mark.parametrize("fallback", list(Fallback))
def test_etcd_when_healthy_fallback_when_not(fallback):
    assert choose(None, HEALTHY, fallback) is Backend.ETCD
    lost = Health(etcd_usable=False, etcd_failed=False, peer_busy=False)
    failed = Health(etcd_usable=True, etcd_failed=True, peer_busy=False)
    assert choose(Backend.ETCD, lost, fallback) is Backend(fallback.value)
    assert choose(Backend.ETCD, failed, fallback) is Backend(fallback.value)


def test_back_to_etcd_only_once_the_peer_queues_are_empty():
    busy = Health(etcd_usable=True, etcd_failed=False, peer_busy=True)
    assert choose(Backend.PEER, busy, Fallback.PEER) is Backend.PEER
    assert choose(Backend.PEER, HEALTHY, Fallback.PEER) is Backend.ETCD


@pytest.mark.parametrize(
    ("current", "etcd_usable", "etcd_failed", "peer_busy", "fallback"),
    list(
        itertools.product([None, *Backend], [True, False], [True, False], [True, False], Fallback)
    ),
)
def test_never_leaves_peer_while_an_operation_is_under_way(
    current, etcd_usable, etcd_failed, peer_busy, fallback
):
    chosen = choose(current, Health(etcd_usable, etcd_failed, peer_busy), fallback)
    if current is Backend.PEER and peer_busy:
        assert chosen is Backend.PEER
    if chosen is Backend.ETCD:
        assert etcd_usable
        assert not etcd_failed
    if current is Backend.ETCD and etcd_usable and not etcd_failed:
        assert chosen is Backend.ETCD
