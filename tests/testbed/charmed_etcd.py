"""charmed-etcd's side of the ``etcd_client`` relation, as dpcharmlibs-interfaces writes it,
pointing at a test-bed cluster; and the client identity the test bed trusts, as the leader's
app secret. Used by the charm tests and by the cluster simulator."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ops import testing
from rollingops_charm.identity import LABEL

from testbed.etcd import EtcdCluster


@dataclass(frozen=True)
class EtcdAnswer:
    """Relation, secrets and config that connect a rollingops unit to the cluster."""

    relation: testing.Relation
    secrets: tuple[testing.Secret, ...]
    config: dict[str, str | int]


def cluster_id(cluster: EtcdCluster) -> str:
    """The rollingops ``cluster-id`` whose prefix is the one the test bed's RBAC grants."""
    return cluster.prefix.removeprefix("/rollingops/").rstrip("/")


def identity_secret(cluster: EtcdCluster) -> testing.Secret:
    """The leader's identity secret, holding the certificate the test bed trusts."""
    identity = cluster.client_identity
    return testing.Secret(
        {"key": identity.key_pem, "cert": identity.cert_pem}, label=LABEL, owner="app"
    )


def answer(cluster: EtcdCluster, relation_id: int | None = None) -> EtcdAnswer:
    """charmed-etcd's response for our prefix: endpoints, and secrets with user and CA."""
    user = testing.Secret({"username": cluster.client_cn})
    tls = testing.Secret({"tls-ca": cluster.ca_file.read_text()})
    response = {
        "request-id": "r1",
        "resource": cluster.prefix,
        "endpoints": ",".join(cluster.endpoints),
        "secret-user": user.id,
        "secret-tls": tls.id,
    }
    extra = {} if relation_id is None else {"id": relation_id}
    relation = testing.Relation(
        "etcd",
        remote_app_name="etcd",
        remote_app_data={"version": "v1", "requests": json.dumps([response])},
        **extra,
    )
    return EtcdAnswer(
        relation, (identity_secret(cluster), user, tls), {"cluster-id": cluster_id(cluster)}
    )
