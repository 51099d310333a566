"""The ``etcd_client`` relation with charmed-etcd, in dpcharmlibs-interfaces' data format.

We publish one request: our key prefix and the enrolment certificate (``mtls-cert``, in a Juju
secret in one model, encrypted across models), under a request-id derived from the application,
the model and the prefix, so it is the same in every hook, on every leader and after upgrades.
charmed-etcd (dpcharmlibs' ``ResourceProviderEventHandler`` with ``bulk_event=True``) keys
users and replies by that id.
A new certificate is an update of the same request (charmed-etcd answers it, replacing the
user if the CN changed). A new prefix (a cluster-id change) is a *new* request: the provider
library refuses to change the resource of an existing one, failing its own hook.

Across models (charmed-etcd offered from its own model) Juju cannot share a requirer's secret,
so the library sends ``mtls-cert`` in our databag, Fernet-encrypted with a key charmed-etcd's
library makes at relation-created: a secret it grants us, named in its ``encryption-secret``.
As the library's requirer does, we name that secret in our own ``encryption-secret`` and let
the library's ``write_model`` encrypt; until charmed-etcd's key is there we publish nothing (a
request without a certificate fails charmed-etcd's handler for every request of the relation).

Only the library's data models and repositories are used, not its requirer event handler: that
handler raises inside relation-changed when a reply names a request it does not know (an older
request, another requirer's library), which would put this unit in error. Here a reply that
is not for our current request, or that cannot be read, is simply not an answer yet.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
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

ENCRYPTION_KEY_FIELD = "encryption-secret"
"""Where each side names the secret holding the relation's Fernet key (across models)."""


@dataclass(frozen=True)
class EtcdConnection:
    """What charmed-etcd gave us for our current request."""

    endpoints: list[str]
    ca_pem: str


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)$")
MAX_ENDPOINTS = 64


def parse_endpoints(raw: str) -> list[str]:
    """``host:port`` items from charmed-etcd's comma-separated list (schemes dropped).

    Anything that is not a plain host name, IPv4 or bracketed IPv6 address with a port in
    1..65535 is refused: the list comes from another application.
    """
    items = raw.split(",")
    if len(items) > MAX_ENDPOINTS:
        raise ValueError(f"{len(items)} etcd endpoints: more than {MAX_ENDPOINTS}")
    endpoints: list[str] = []
    for item in items:
        endpoint = item.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        host, _, port = endpoint.rpartition(":")
        if not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {item[:80]!r} is not host:port")
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
        """Leader: make our request for ``prefix`` carry ``mtls_cert``; True if written.

        Requests for other prefixes (an earlier cluster-id, an earlier version of this charm)
        stay as they are: units may still connect with their users until a newer pair is
        proven (``credentials``), and going back to a cluster-id finds its request intact.
        """
        relation = self.relation
        if relation is None or not self._model.unit.is_leader():
            return False
        if not self._can_send_certificates(relation):
            return False
        rid = request_id(self._model.app.name, self._model.uuid, prefix)
        requests = self._published(relation)
        current = next((r for r in requests if r.request_id == rid), None)
        if current is not None and (current.resource, current.mtls_cert) == (prefix, mtls_cert):
            return False
        # An update keeps the request's own secret (``secret-mtls``): the library puts the new
        # certificate in it, and charmed-etcd sees a secret-changed for the same request.
        if current is None:
            current = RequirerCommonModel(resource=prefix, request_id=rid, salt=rid)
            requests.append(current)
        current.mtls_cert = mtls_cert
        self._ours.write_model(
            relation.id,
            RequirerDataContractV1[RequirerCommonModel](version="v1", requests=requests),
        )
        return True

    def _can_send_certificates(self, relation: ops.Relation) -> bool:
        """Whether ``mtls-cert`` can travel now; across models, name charmed-etcd's key first.

        In one model it always can. Across models it can once charmed-etcd's key is named in
        our databag: copied from its own, as the library's requirer does; ``write_model`` then
        encrypts with it.
        """
        ours = self._ours.repository(relation.id)
        if not ours.is_cross_model_relation or ours.get_field(ENCRYPTION_KEY_FIELD):
            return True
        theirs = self._theirs.repository(relation.id, relation.app)
        secret_uri = theirs.get_field(ENCRYPTION_KEY_FIELD)
        if not secret_uri:
            logger.info("waiting for charmed-etcd's encryption key (a cross-model relation)")
            return False
        ours.write_field(ENCRYPTION_KEY_FIELD, secret_uri)
        return True

    def _published(self, relation: ops.Relation) -> list[RequirerCommonModel]:
        """Our requests as they stand in our databag."""
        try:
            local = self._ours.build_model(relation.id, component=self._model.app)
        except (ValidationError, ValueError, RecursionError, ops.ModelError) as error:
            logger.warning("our etcd requests are unreadable, rewriting them: %s", error)
            return []
        return list(local.requests)

    def connection(self, prefix: str, user: str) -> EtcdConnection | None:
        """Endpoints and CA once charmed-etcd granted ``user`` access to ``prefix``.

        Any reply naming both counts, whatever its request-id: a unit still connected with the
        pair of an earlier request (an upgrade, a cluster-id change in progress) keeps working.
        """
        try:
            for reply in self._replies:
                if (
                    reply.resource == prefix
                    and reply.username == user
                    and reply.endpoints
                    and reply.tls_ca
                ):
                    return EtcdConnection(parse_endpoints(reply.endpoints), reply.tls_ca)
        except (ValidationError, ValueError, RecursionError, ops.ModelError) as error:
            logger.warning("charmed-etcd's reply is unreadable: %s", error)
        return None

    @functools.cached_property
    def _replies(self) -> list[ResourceProviderModel]:
        """charmed-etcd's replies, read once per hook (this object lives for one hook).

        Reading them builds the relation's model, a run of ``secret-get`` per secret field;
        the charm asks for the connection several times in a hook, and charmed-etcd's bag
        cannot change under a running hook.
        """
        relation = self.relation
        if relation is None or relation.app is None:
            return []
        try:
            return list(self._theirs.build_model(relation.id, component=relation.app).requests)
        except (ValidationError, ValueError, RecursionError, ops.ModelError) as error:
            logger.warning("charmed-etcd's reply is unreadable: %s", error)
            return []
