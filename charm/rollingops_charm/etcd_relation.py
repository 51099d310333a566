"""The ``etcd_client`` relation with charmed-etcd, in dpcharmlibs-interfaces' data format.

We publish one request: our key prefix and the enrolment certificate (``mtls-cert``, sent in a
Juju secret), under a request-id derived from the application, the model and the prefix, so it
is the same in every hook, on every leader and after upgrades. charmed-etcd (dpcharmlibs'
``ResourceProviderEventHandler`` with ``bulk_event=True``) keys users and replies by that id.
A new certificate is an update of the same request (charmed-etcd answers it, replacing the
user if the CN changed). A new prefix (a cluster-id change) is a *new* request: the provider
library refuses to change the resource of an existing one, failing its own hook.

Only the library's data models and repositories are used, not its requirer event handler: that
handler raises inside relation-changed when a reply names a request it does not know (an older
request, another requirer's library), which would put this unit in error. Here a reply that
is not for our current request, or that cannot be read, is simply not an answer yet.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import ops
from dpcharmlibs.interfaces import (
    DataContractV1,
    OpsRelationRepositoryInterface,
    RequirerCommonModel,
    RequirerDataContractV1,
    ResourceProviderModel,
)
from pydantic import ValidationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EtcdConnection:
    """What charmed-etcd gave us for our current request."""

    endpoints: list[str]
    ca_pem: str


def parse_endpoints(raw: str) -> list[str]:
    """``host:port`` items from charmed-etcd's comma-separated list (schemes dropped)."""
    endpoints: list[str] = []
    for item in raw.split(","):
        endpoint = item.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint {item!r} is not host:port")
        endpoints.append(endpoint)
    return endpoints


def request_id(app: str, model_uuid: str, prefix: str) -> str:
    """The request-id for ``prefix``: stable across hooks, leaders and upgrades."""
    return hashlib.sha256(f"rollingops/{model_uuid}/{app}/{prefix}".encode()).hexdigest()[:16]


class EtcdRequirer:
    """Our side of the relation: the request we publish and the answer we read."""

    def __init__(self, model: ops.Model, relation_name: str) -> None:
        self._model = model
        self._relation_name = relation_name
        self._ours = OpsRelationRepositoryInterface(
            model, relation_name, RequirerDataContractV1[RequirerCommonModel]
        )
        self._theirs = OpsRelationRepositoryInterface(
            model, relation_name, DataContractV1[ResourceProviderModel]
        )

    @property
    def relation(self) -> ops.Relation | None:
        """The relation with charmed-etcd, if any."""
        return self._model.get_relation(self._relation_name)

    def publish(self, prefix: str, mtls_cert: str) -> bool:
        """Leader: make our one request ask for ``prefix`` with ``mtls_cert``; True if written."""
        relation = self.relation
        if relation is None or not self._model.unit.is_leader():
            return False
        rid = request_id(self._model.app.name, self._model.uuid, prefix)
        current = self._published(relation, rid)
        if current is not None and (current.resource, current.mtls_cert) == (prefix, mtls_cert):
            return False
        # An update keeps the request's own secret (``secret-mtls``): the library puts the new
        # certificate in it, and charmed-etcd sees a secret-changed for the same request.
        wanted = current or RequirerCommonModel(resource=prefix, request_id=rid, salt=rid)
        wanted.mtls_cert = mtls_cert
        self._ours.write_model(
            relation.id,
            RequirerDataContractV1[RequirerCommonModel](version="v1", requests=[wanted]),
        )
        return True

    def _published(self, relation: ops.Relation, rid: str) -> RequirerCommonModel | None:
        """Our request ``rid`` as it stands in our databag, if it is there."""
        try:
            local = self._ours.build_model(relation.id, component=self._model.app)
        except (ValidationError, ValueError, ops.ModelError) as error:
            logger.warning("our etcd request is unreadable, rewriting it: %s", error)
            return None
        return next((r for r in local.requests if r.request_id == rid), None)

    def connection(self, prefix: str, user: str) -> EtcdConnection | None:
        """Endpoints and CA once charmed-etcd answered our request for ``prefix`` as ``user``.

        A reply for an older prefix or user (a cluster-id change still being served) is not an
        answer yet: using it would connect to a prefix our user may no longer reach.
        """
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        rid = request_id(self._model.app.name, self._model.uuid, prefix)
        try:
            replies = self._theirs.build_model(relation.id, component=relation.app).requests
            for reply in replies:
                if (
                    reply.request_id == rid
                    and reply.resource == prefix
                    and reply.username == user
                    and reply.endpoints
                    and reply.tls_ca
                ):
                    return EtcdConnection(parse_endpoints(reply.endpoints), reply.tls_ca)
        except (ValidationError, ValueError, ops.ModelError) as error:
            logger.warning("charmed-etcd's reply is unreadable: %s", error)
        return None
