"""The ``etcd_client`` relation with charmed-etcd, through ``dpcharmlibs-interfaces``.

We request one key prefix and send our client certificate (``mtls-cert``, as a Juju secret);
charmed-etcd answers with ``endpoints`` and secrets holding our ``username`` (the certificate's
CN) and its ``tls-ca``.
"""

from __future__ import annotations

from dataclasses import dataclass

import ops
from dpcharmlibs.interfaces import (
    RequirerCommonModel,
    RequirerDataContractV1,
    ResourceProviderModel,
    ResourceRequirerEventHandler,
)


@dataclass(frozen=True)
class EtcdConnection:
    """What charmed-etcd gave us."""

    endpoints: list[str]
    ca_pem: str


def parse_endpoints(raw: str) -> list[str]:
    """``host:port`` items from charmed-etcd's comma-separated list (schemes dropped)."""
    endpoints = []
    for item in raw.split(","):
        endpoint = item.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint {item!r} is not host:port")
        endpoints.append(endpoint)
    return endpoints


class EtcdRequirer(ops.Object):
    """Our side of the relation: the request we publish and the answer we read."""

    def __init__(
        self, charm: ops.CharmBase, relation_name: str, prefix: str | None, cert_pem: str | None
    ) -> None:
        super().__init__(charm, f"etcd-requirer-{relation_name}")
        self._relation_name = relation_name
        self._prefix = prefix
        self._cert_pem = cert_pem
        self.handler = ResourceRequirerEventHandler(
            charm,
            relation_name,
            [self._request()] if prefix else [],
            response_model=ResourceProviderModel,
        )

    def set_certificate(self, cert_pem: str) -> None:
        """Use a newly created or renewed certificate from now on."""
        self._cert_pem = cert_pem

    def _request(self) -> RequirerCommonModel:
        return RequirerCommonModel(resource=self._prefix or "", mtls_cert=self._cert_pem)

    @property
    def relation(self) -> ops.Relation | None:
        """The relation with charmed-etcd, if any."""
        return self.model.get_relation(self._relation_name)

    def publish(self) -> None:
        """Leader: make our request carry the current prefix and certificate."""
        relation = self.relation
        if relation is None or not self._prefix or not self._cert_pem:
            return
        if not self.model.unit.is_leader():
            return
        interface = self.handler.interface
        local = interface.build_model(
            relation.id, RequirerDataContractV1[RequirerCommonModel], component=self.model.app
        )
        current = [r for r in local.requests if r.resource == self._prefix]
        if current and current[0].mtls_cert == self._cert_pem:
            return
        request = current[0] if current else self._request()
        request.mtls_cert = self._cert_pem
        interface.write_model(
            relation.id,
            RequirerDataContractV1[RequirerCommonModel](version="v1", requests=[request]),
        )

    def connection(self) -> EtcdConnection | None:
        """Endpoints and CA once charmed-etcd has answered for our prefix."""
        relation = self.relation
        if relation is None or relation.app is None or not self._prefix:
            return None
        model = self.handler.interface.build_model(relation.id, component=relation.app)
        for response in model.requests:
            if response.resource == self._prefix and response.endpoints and response.tls_ca:
                return EtcdConnection(parse_endpoints(response.endpoints), response.tls_ca)
        return None
