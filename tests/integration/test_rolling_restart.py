"""On a real controller: rollingops beside a principal, with charmed-etcd, restarting in turn.

What only a real Juju run confirms (the rest is covered on ops.testing and real etcd):
the packed charm installs on the base, the worker runs under systemd, juju-exec fires the custom
hook, charmed-etcd accepts our certificate and prefix, and run-exclusive rolls over the units.
"""

from __future__ import annotations

import jubilant


def test_run_exclusive_rolls_one_unit_at_a_time(juju: jubilant.Juju, charm):
    juju.deploy("ubuntu", num_units=3)
    juju.deploy(charm, "rollingops")
    juju.deploy("charmed-etcd", "etcd", channel="3.6/edge", num_units=3)
    juju.integrate("rollingops:juju-info", "ubuntu:juju-info")
    juju.integrate("rollingops:etcd", "etcd:etcd-client")
    juju.wait(lambda status: jubilant.all_active(status, "rollingops", "etcd"))

    for unit in ("rollingops/0", "rollingops/1", "rollingops/2"):
        task = juju.run(unit, "run-exclusive", {"command": "sh -c 'date +%s.%N; sleep 2'"})
        assert task.results["queued"] is True

    def all_done(status: jubilant.Status) -> bool:
        return all(
            unit.workload_status.message.startswith("idle")
            for unit in status.get_units("rollingops").values()
        )

    juju.wait(all_done)
    task = juju.run("rollingops/0", "lock-status")
    assert task.results["backend"] == "etcd"
    assert task.results["etcd-reachable"] is True
