"""A known-bad etcd release is named in the unit's status and in lock-status (issue 19).

The version is what the worker read from etcd at its start (``etcd_versions``); a hook reads
the worker's file, with no etcd request of its own.
"""

from __future__ import annotations

from charm_helpers import peer, unit_dir
from ops import testing

from rollingops.etcd_versions import publish

NOTE = (
    "etcd 3.5.1 may revoke live leases when a paused leader resumes (etcd-io/etcd#15247): "
    "upgrade to 3.5.13+"
)


def test_a_known_bad_release_is_a_note_in_the_active_status_and_in_lock_status(
    ctx, supervisor, wired, tmp_path
):
    supervisor.running = True
    state = wired.state(peer(), leader=True)
    publish(unit_dir(tmp_path), "3.5.1")
    out = ctx.run(ctx.on.update_status(), state)
    assert out.unit_status == testing.ActiveStatus(f"idle (etcd, max-concurrent 1); {NOTE}")
    ctx.run(ctx.on.action("lock-status"), out)
    results = ctx.action_results or {}
    assert results["etcd-version"] == "3.5.1"
    assert results["etcd-known-bugs"] == {"01": NOTE}


def test_a_fixed_release_adds_nothing_to_the_status(ctx, supervisor, wired, tmp_path):
    supervisor.running = True
    publish(unit_dir(tmp_path), "3.5.13")
    out = ctx.run(ctx.on.update_status(), wired.state(peer(), leader=True))
    assert out.unit_status == testing.ActiveStatus("idle (etcd, max-concurrent 1)")
    ctx.run(ctx.on.action("lock-status"), out)
    results = ctx.action_results or {}
    assert results["etcd-version"] == "3.5.13"
    assert "etcd-known-bugs" not in results
