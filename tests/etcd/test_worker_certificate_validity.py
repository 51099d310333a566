"""A client certificate etcd's clock finds expired or not yet valid (clock skew), on real etcd.

etcd refuses it in the TLS handshake with a bare ``bad certificate`` alert. The worker must say
what that means, give up like for any etcd loss (the charm falls back), lose nothing, and serve
the queue again once it runs with a valid certificate.
"""

from __future__ import annotations

import datetime as dt

import pytest
from etcd_helpers import distro_build, operation
from test_worker import events, finished
from testbed.pki import write_pair
from testbed.workers import settings_for

from rollingops.models import Outcome
from rollingops.worker import EXIT_ETCD_FAILED

__all__ = ["distro_build"]

DAY = dt.timedelta(days=1)


@pytest.mark.parametrize("validity", ["expired", "not yet valid"])
def test_a_refused_certificate_is_named_nothing_is_lost_and_a_valid_one_recovers(
    farm, client, validity
):
    now = dt.datetime.now(dt.timezone.utc)
    window = (now - 3 * DAY, now - DAY) if validity == "expired" else (now + DAY, now + 3 * DAY)
    cluster = farm.cluster
    pair = cluster.ca.issue_client_cert(cluster.client_cn, *window)
    cert_file, key_file = write_pair(farm.root, "skewed", pair)
    files = {"cert_file": cert_file, "key_file": key_file}
    skewed = settings_for(cluster, total_timeout=1.0).model_copy(update=files)
    farm.enqueue(client, "app/0", operation("queued"))

    worker = farm.start("app/0", etcd=skewed, failure_deadline=2.0)
    assert worker.wait(timeout=60) == EXIT_ETCD_FAILED
    (gave_up,) = events(farm, "app/0", "etcd-failed")
    for said in (events(farm, "app/0", "etcd-unreachable")[0], gave_up):
        assert "etcd refused this unit's client certificate" in said["message"]
        assert "not yet valid by etcd's clock" in said["message"]
    fired = [r["hook"] for r in farm.records() if r["unit"] == "app/0"]
    assert fired == ["rollingops-etcd-failed"], "the charm is told, nothing else ran"
    assert [op.id for op in farm.store(client, "app/0").load().queue.pending] == ["queued"]

    farm.start("app/0")  # the charm restarts its worker with a valid certificate
    (entry,) = finished(farm, client, "app/0", 1)
    assert (entry.id, entry.outcome) == ("queued", Outcome.DONE)
