"""The worker reads etcd's release from the cluster itself and publishes it (issue 19)."""

from __future__ import annotations

from etcd_helpers import operation, wait_until
from test_worker import events, finished
from testbed.etcd import etcd_version

from rollingops.etcd_versions import observed, warnings


def test_the_client_reads_the_release_the_member_runs(client):
    assert client.server_version() == etcd_version()  # 3.5.1 or 3.4.23: the binary's own word
    assert client.requests["status"] == 1


def test_the_worker_publishes_the_release_and_logs_its_known_bugs_at_start(farm, client):
    farm.start("app/0")
    (noted,) = wait_until(lambda: events(farm, "app/0", "etcd-version"), what="version noted")
    assert noted["version"] == etcd_version()
    assert noted["warnings"] == warnings(etcd_version())
    assert noted["warnings"], "both builds of the test bed have etcd-io/etcd#15247"
    assert observed(farm.config("app/0").state_dir) == etcd_version()
    farm.enqueue(client, "app/0", operation("after"))
    assert [entry.id for entry in finished(farm, client, "app/0", 1)] == ["after"]
