"""charmed-etcd's side of ``etcd_client`` and ``client-cas``, answered by the real provider code.

``CharmedEtcd`` runs a small provider charm in ops.testing built on the very classes charmed-etcd
uses: dpcharmlibs-interfaces' ``ResourceProviderEventHandler`` (``RequirerCommonModel``,
``mtls_enabled=True``, ``bulk_event=True``) and the certificate-transfer requirer. What the
provider charm does on their events follows charmed-etcd's ``ExternalClientsEvents``: one etcd
user per request-id named after the CN of the ``mtls-cert`` leaf, readwrite on the requested
prefix, users of other requests refused, a changed CN replaces the user, and a trust store made of
every pinned leaf and every ``client-cas`` certificate, whose change restarts etcd (counted in
``restarts``). Relation data and secrets travel between the two sides exactly as the charms wrote
them; nothing of the reply is written by hand.

``connect`` does the whole handshake for a rollingops leader and returns the state pieces a test
starts from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import ops
import yaml
from charmlibs.interfaces.certificate_transfer import CertificateTransferRequires
from cryptography import x509
from dpcharmlibs.interfaces import (
    BulkResourcesRequestedEvent,
    MtlsCertUpdatedEvent,
    RequirerCommonModel,
    ResourceProviderEventHandler,
    ResourceProviderModel,
)
from ops import testing
from rollingops_charm.charm import RollingOpsCharm

from rollingops.certificates import common_name
from testbed.etcd import EtcdCluster

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ETCD_APP = "etcd"
ETCD_ID = 901
"""Relation id of etcd-client/etcd on both sides: equal ids read easier, and high ones never
meet the ids ops.testing hands out to a test's other relations."""
CLIENT_CA_ID = 902
PEERS_ID = 903
PROVIDER_META: dict[str, Any] = {
    "name": "charmed-etcd",
    "provides": {"etcd-client": {"interface": "etcd_client"}},
    "requires": {"client-cas": {"interface": "certificate_transfer"}},
    "peers": {"etcd-peers": {"interface": "etcd_peers"}},
}


def load_yaml(name: str) -> dict[str, Any]:
    """One of the project's packaging files."""
    return yaml.safe_load((ROOT / name).read_text())


def cluster_id(cluster: EtcdCluster) -> str:
    """A rollingops ``cluster-id`` whose prefix is the test bed's own."""
    return cluster.prefix.removeprefix("/rollingops/").rstrip("/")


def first_certificate(chain: str) -> str:
    """The leaf of a PEM chain, as charmed-etcd cuts it."""
    end = "-----END CERTIFICATE-----"
    return chain.split(end, maxsplit=1)[0].strip() + f"\n{end}\n"


@dataclass
class Deployment:
    """What charmed-etcd keeps between hooks: managed users, and what etcd trusts."""

    cluster: EtcdCluster
    managed_users: dict[str, str] = field(default_factory=dict[str, str])
    """``<relation-id>-<request-id>`` -> CN, as charmed-etcd's peer data keeps it."""
    client_cas: set[str] = field(default_factory=set[str])
    pinned: dict[str, set[str]] = field(default_factory=dict[str, set[str]])
    """Leaves pinned for the requests of each requirer application."""
    trusted: set[str] = field(default_factory=set[str])
    """What etcd trusts now besides the test bed's own certificates."""
    extra_server_ca: str = ""
    """A second server CA in the bundle handed to clients (charmed-etcd's CA rotation)."""
    extra_endpoints: list[str] = field(default_factory=list[str])
    restarts: int = 0
    refused: list[str] = field(default_factory=list[str])

    def apply_trust(self) -> None:
        """Rewrite etcd's client trust bundle and restart the members if it changed."""
        wanted = set(self.client_cas).union(*self.pinned.values())
        if wanted == self.trusted:
            return
        self.cluster.trust(wanted)
        self.trusted = wanted
        self.restarts += 1


def is_leaf_certificate_valid(chain: str) -> bool:
    """charmed-etcd's check: the first certificate must not be able to sign others."""
    cert = x509.load_pem_x509_certificate(first_certificate(chain).encode())
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return not constraints.ca
    return not (usage.key_cert_sign or usage.crl_sign or constraints.ca)


class ProviderCharm(ops.CharmBase):
    """charmed-etcd's client-facing handlers (``ExternalClientsEvents``), step for step.

    Left out: the deferrals charmed-etcd makes while its own TLS, a CA rotation, a restore or a
    refresh is in progress (a test bed is never in those states).
    """

    deployment: ClassVar[Deployment]
    requirer: ClassVar[str]

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.provides = ResourceProviderEventHandler(
            self, "etcd-client", RequirerCommonModel, mtls_enabled=True, bulk_event=True
        )
        self.client_cas = CertificateTransferRequires(self, "client-cas")
        observe = framework.observe
        observe(self.provides.on.bulk_resources_requested, self._on_requested)
        observe(self.provides.on.mtls_cert_updated, self._on_mtls_cert_updated)
        observe(self.client_cas.on.certificate_set_updated, self._on_client_cas)
        observe(self.client_cas.on.certificates_removed, self._on_client_cas_removed)
        observe(self.on["etcd-client"].relation_broken, self._on_broken)
        observe(self.on.update_status, self._on_update_status)

    @property
    def _world(self) -> Deployment:
        return type(self).deployment

    def _on_requested(self, event: BulkResourcesRequestedEvent[RequirerCommonModel]) -> None:
        for request in event.requests:
            if not request.mtls_cert or not request.resource:
                logger.error("CA chain, keys prefix, or common name not provided")
                return
        responses: list[ResourceProviderModel] = []
        for request in event.requests:
            key = f"{event.relation.id}-{request.request_id}"
            cert = str(request.mtls_cert)
            cn = common_name(first_certificate(cert))
            if not is_leaf_certificate_valid(cert):
                logger.error("Invalid end-entity certificate for user %s", cn)
                continue
            managed = self._world.managed_users.get(key)
            if managed == cn:
                continue
            if self._world.cluster.has_user(cn):
                self._world.refused.append(f"{cn}: user already exists for another request")
                continue
            if managed:
                self._remove_user(key)
            self._add_user(key, cn, request.resource)
            responses.append(self._response(event.relation, request, cn))
        if responses:
            self.provides.set_responses(event.relation.id, responses)
            self._update_truststore()

    def _on_mtls_cert_updated(self, event: MtlsCertUpdatedEvent[RequirerCommonModel]) -> None:
        request = event.request
        if not request.mtls_cert or not request.resource:
            return
        key = f"{event.relation.id}-{request.request_id}"
        old_cn = None
        if self._world.managed_users.get(key) and event.old_mtls_cert:
            old_cn = common_name(first_certificate(event.old_mtls_cert))
        cn = common_name(first_certificate(str(request.mtls_cert)))
        if not is_leaf_certificate_valid(str(request.mtls_cert)):
            if old_cn:
                self._remove_user(key)
                self._update_truststore()
            return
        if old_cn != cn:
            if old_cn:
                self._remove_user(key)
            if self._world.cluster.has_user(cn):
                if cn != self._world.managed_users.get(key):
                    self._world.refused.append(f"{cn}: user already exists")
                return
            if self._world.managed_users.get(key) is None:
                self._add_user(key, cn, request.resource)
                self.provides.set_response(
                    event.relation.id, self._response(event.relation, request, cn)
                )
        if self._world.managed_users.get(key) != cn:
            self._world.refused.append(f"{cn}: new user not created yet (deferred)")
            return
        self._update_truststore()

    def _remove_user(self, key: str) -> None:
        self._world.cluster.remove_user(self._world.managed_users.pop(key))

    def _update_truststore(self) -> None:
        """Every current request's leaf (pinned) and every client-cas certificate."""
        pinned: set[str] = set()
        for relation in self.model.relations["etcd-client"]:
            for request in self.provides.requests(relation):
                cert = str(request.mtls_cert or "")
                if cert and is_leaf_certificate_valid(cert):
                    pinned.add(first_certificate(cert))
        self._world.pinned[type(self).requirer] = pinned
        self._world.apply_trust()

    def _add_user(self, key: str, cn: str, prefix: str) -> None:
        self._world.cluster.add_user(cn, prefix)
        self._world.managed_users[key] = cn

    def _response(
        self, relation: ops.Relation, request: RequirerCommonModel, cn: str
    ) -> ResourceProviderModel:
        existing = next(
            (
                r
                for r in self.provides.responses(relation, ResourceProviderModel)
                if r.request_id == request.request_id
            ),
            None,
        )
        response = existing or ResourceProviderModel(
            username=cn,
            request_id=request.request_id,
            resource=request.resource,
            salt=request.salt,
        )
        response.username = cn
        response.resource = request.resource
        response.endpoints = ",".join(
            f"https://{e}" for e in [*self._world.cluster.endpoints, *self._world.extra_endpoints]
        )
        response.tls_ca = self._world.cluster.ca_file.read_text() + self._world.extra_server_ca
        response.version = "3.5"
        return response

    def _on_update_status(self, _: ops.EventBase) -> None:
        """Refresh endpoints and CA in every reply, as charmed-etcd does periodically."""
        for relation in self.model.relations["etcd-client"]:
            replies = self.provides.responses(relation, ResourceProviderModel)
            requests = {r.request_id: r for r in self.provides.requests(relation)}
            fresh = [
                self._response(relation, requests[r.request_id], str(r.username))
                for r in replies
                if r.request_id in requests
            ]
            if fresh:
                self.provides.set_responses(relation.id, fresh)

    def _on_client_cas(self, _: ops.EventBase) -> None:
        self._world.client_cas = set(self.client_cas.get_all_certificates())
        if self._world.client_cas:
            self._update_truststore()

    def _on_client_cas_removed(self, _: ops.EventBase) -> None:
        self._world.client_cas = set(self.client_cas.get_all_certificates())
        self._update_truststore()

    def _on_broken(self, event: ops.RelationBrokenEvent) -> None:
        for key in [k for k in self._world.managed_users if k.startswith(f"{event.relation.id}-")]:
            self._remove_user(key)
        self._update_truststore()


def _as_remote(secret: testing.Secret) -> testing.Secret:
    """A secret as the other side sees it: granted to it, owned by someone else."""
    return dataclasses.replace(secret, owner=None, label=None, remote_grants={})


def _owned(state: testing.State) -> set[testing.Secret]:
    return {s for s in state.secrets if s.owner is not None}


def _granted(state: testing.State, relation_id: int) -> set[testing.Secret]:
    """The secrets a charm granted to the other side of ``relation_id``: all it can read."""
    return {s for s in _owned(state) if relation_id in s.remote_grants}


@dataclass
class CharmedEtcd:
    """The charmed-etcd application of a test: one leader unit, its state kept across hooks.

    ``deliver`` hands it what the requirer wrote and runs the hooks Juju would run for that:
    relation-changed when the requirer's app data changed, secret-changed for each requirer
    secret whose content changed. It returns the reply as the requirer must be given it.
    """

    cluster: EtcdCluster
    requirer_app: str = "rollingops"
    deployment: Deployment | None = None
    """Shared by the ``CharmedEtcd`` of several requirer applications on one cluster."""
    relation_id: int = ETCD_ID
    """The etcd-client relation; a re-added relation gets a new id, as in Juju."""
    requirer_model_uuid: str | None = None
    """The requirer's model when it is not ours: a cross-model relation (``juju consume``)."""
    state: testing.State = field(init=False)
    _seen_data: dict[str, str] = field(default_factory=dict[str, str])

    def __post_init__(self) -> None:
        self.deployment = self.deployment or Deployment(self.cluster)
        peers = testing.PeerRelation("etcd-peers", id=PEERS_ID)
        self.state = testing.State(leader=True, relations={peers})

    @property
    def model_uuid(self) -> str:
        """charmed-etcd's own model: the requirer's ``remote_model_uuid`` across models."""
        return self.state.model.uuid

    @property
    def world(self) -> Deployment:
        """Users, trust and restarts of this charmed-etcd."""
        assert self.deployment is not None
        return self.deployment

    def _context(self) -> testing.Context[ProviderCharm]:
        charm_type = type(
            "CharmedEtcdProvider",
            (ProviderCharm,),
            {"deployment": self.world, "requirer": self.requirer_app},
        )
        return testing.Context(charm_type, meta=PROVIDER_META, app_name=ETCD_APP, unit_id=0)

    def _run(self, event: Any, relation: testing.RelationBase | None = None) -> None:
        relations = {r for r in self.state.relations if relation is None or r.id != relation.id}
        state = dataclasses.replace(
            self.state, relations=relations | ({relation} if relation else set())
        )
        ctx = self._context()
        self.state = ctx.run(event(ctx), state)

    def _client_relation(self, requirer: testing.Relation) -> testing.Relation:
        mine = next((r for r in self.state.relations if r.id == self.relation_id), None)
        return testing.Relation(
            "etcd-client",
            id=self.relation_id,
            remote_app_name=self.requirer_app,
            local_app_data=dict(mine.local_app_data) if isinstance(mine, testing.Relation) else {},
            remote_app_data=dict(requirer.local_app_data),
            remote_units_data={0: {}},
            remote_model_uuid=self.requirer_model_uuid,
        )

    def _take_secrets(self, requirer_secrets: set[testing.Secret]) -> list[testing.Secret]:
        """Put the requirer's secrets in our state as we see them; return the changed ones."""
        known = {s.id: s for s in self.state.secrets}
        changed: list[testing.Secret] = []
        for secret in requirer_secrets:
            content = secret.latest_content or secret.tracked_content
            if secret.id not in known:
                known[secret.id] = _as_remote(secret)
            elif (known[secret.id].latest_content or known[secret.id].tracked_content) != content:
                old = known[secret.id]
                known[secret.id] = dataclasses.replace(
                    old, tracked_content=old.latest_content or old.tracked_content,
                    latest_content=content,
                )  # fmt: skip
                changed.append(known[secret.id])
        self.state = dataclasses.replace(self.state, secrets=set(known.values()))
        return changed

    def created(self, requirer: testing.Relation) -> tuple[dict[str, str], set[testing.Secret]]:
        """charmed-etcd's relation-created; return what it wrote for the requirer.

        Across models the provider library makes the relation's encryption key here (a secret
        granted to the requirer, named in ``encryption-secret``); in one model it writes nothing.
        """
        relation = self._client_relation(requirer)
        self._run(lambda ctx: ctx.on.relation_created(relation), relation)
        return self.reply()

    def deliver(
        self, requirer: testing.Relation, requirer_secrets: set[testing.Secret]
    ) -> tuple[dict[str, str], set[testing.Secret]]:
        """Run what Juju runs on charmed-etcd after the requirer's hook; return the reply."""
        changed = self._take_secrets(requirer_secrets)
        if dict(requirer.local_app_data) != self._seen_data:
            self._seen_data = dict(requirer.local_app_data)
            relation = self._client_relation(requirer)
            self._run(lambda ctx: ctx.on.relation_changed(relation), relation)
        for secret in changed:
            self._run(
                lambda ctx, s=secret: ctx.on.secret_changed(s), self._client_relation(requirer)
            )
        return self.reply()

    def reply(self) -> tuple[dict[str, str], set[testing.Secret]]:
        """Our app data on etcd-client, and our secrets as the requirer sees them."""
        mine = next((r for r in self.state.relations if r.id == self.relation_id), None)
        data = dict(mine.local_app_data) if isinstance(mine, testing.Relation) else {}
        return data, {_as_remote(s) for s in _granted(self.state, self.relation_id)}

    def refresh(self) -> tuple[dict[str, str], set[testing.Secret]]:
        """charmed-etcd's periodic refresh of endpoints and CA in its replies."""
        self._run(lambda ctx: ctx.on.update_status())
        return self.reply()

    def client_cas_created(self) -> dict[str, str]:
        """charmed-etcd's leader joins ``client-cas``: what its library writes for us to read."""
        relation = testing.Relation(
            "client-cas", id=CLIENT_CA_ID, remote_app_name=self.requirer_app
        )
        self._run(lambda ctx: ctx.on.relation_created(relation), relation)
        mine = next(r for r in self.state.relations if r.id == CLIENT_CA_ID)
        assert isinstance(mine, testing.Relation)
        return dict(mine.local_app_data)

    def client_cas_changed(self, certificates_bag: dict[str, str]) -> None:
        """The requirer (rollingops) changed what it offers over ``client-cas``."""
        mine = next((r for r in self.state.relations if r.id == CLIENT_CA_ID), None)
        relation = testing.Relation(
            "client-cas",
            id=CLIENT_CA_ID,
            remote_app_name=self.requirer_app,
            local_app_data=dict(mine.local_app_data) if isinstance(mine, testing.Relation) else {},
            remote_app_data=certificates_bag,
        )
        self._run(lambda ctx: ctx.on.relation_changed(relation), relation)

    def broken(self, requirer: testing.Relation) -> None:
        """The requirer left: charmed-etcd removes its users."""
        relation = self._client_relation(requirer)
        self._run(lambda ctx: ctx.on.relation_broken(relation), relation)
        self.state = dataclasses.replace(
            self.state, relations={r for r in self.state.relations if r.id != self.relation_id}
        )
        self._seen_data = {}

    def relate_again(self, relation_id: int) -> None:
        """A new etcd-client relation with the same requirer application."""
        self.relation_id = relation_id


@dataclass(frozen=True)
class EtcdAnswer:
    """Relation, secrets, config and model that connect a rollingops unit to the cluster."""

    relation: testing.Relation
    secrets: tuple[testing.Secret, ...]
    config: dict[str, str | int]
    model: testing.Model
    provider: CharmedEtcd


@contextlib.contextmanager
def _state_dir() -> Iterator[None]:
    """The handshake's own hook writes unit files: keep them out of /var/lib."""
    previous = os.environ.get("ROLLINGOPS_STATE_DIR")
    with tempfile.TemporaryDirectory(prefix="rollingops-handshake-") as tmp:
        os.environ["ROLLINGOPS_STATE_DIR"] = tmp
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("ROLLINGOPS_STATE_DIR", None)
            else:
                os.environ["ROLLINGOPS_STATE_DIR"] = previous


def rollingops_context(app: str = "rollingops", unit_id: int = 0) -> testing.Context[Any]:
    """ops.testing context of the subordinate, metadata from the repository."""
    return testing.Context(
        RollingOpsCharm,
        meta=load_yaml("metadata.yaml"),
        actions=load_yaml("actions.yaml"),
        config=load_yaml("config.yaml"),
        app_name=app,
        unit_id=unit_id,
    )


def requirer_relation(provider: CharmedEtcd) -> testing.Relation:
    """The ``etcd`` relation with ``provider`` as rollingops sees it."""
    across = provider.requirer_model_uuid is not None
    return testing.Relation(
        "etcd",
        id=provider.relation_id,
        remote_app_name=ETCD_APP,
        remote_model_uuid=provider.model_uuid if across else None,
    )


def connect(
    cluster: EtcdCluster,
    *,
    app: str = "rollingops",
    model: testing.Model | None = None,
    config: dict[str, str | int] | None = None,
    provider: CharmedEtcd | None = None,
    cross_model: bool = False,
) -> EtcdAnswer:
    """The rollingops leader relates to charmed-etcd: its request, the provider's reply.

    charmed-etcd's relation-created runs first (across models it makes the relation's
    encryption key there). Then one hook of the real subordinate publishes the request
    (identity secret, ``mtls-cert``, prefix, request-id); charmed-etcd's handlers create the user
    and answer. What comes back is what any unit of ``app`` needs to reach the cluster.
    ``cross_model`` puts charmed-etcd in a model of its own (ignored with a given ``provider``).
    """
    model = model or testing.Model()
    config = {"cluster-id": cluster_id(cluster), **(config or {})}
    provider = provider or CharmedEtcd(
        cluster, requirer_app=app, requirer_model_uuid=model.uuid if cross_model else None
    )
    relation = requirer_relation(provider)
    created, provider_secrets = provider.created(relation)
    relation = dataclasses.replace(relation, remote_app_data=created)
    ctx = rollingops_context(app)
    state = testing.State(
        leader=True, relations={relation}, config=config, model=model, secrets=provider_secrets
    )
    with _state_dir():
        out = ctx.run(ctx.on.relation_joined(relation), state)
    ours = out.get_relation(provider.relation_id)
    assert isinstance(ours, testing.Relation)
    reply, provider_secrets = provider.deliver(ours, _granted(out, provider.relation_id))
    answered = dataclasses.replace(ours, remote_app_data=reply)
    return EtcdAnswer(answered, tuple(_owned(out) | provider_secrets), config, model, provider)


def relay(out: testing.State, provider: CharmedEtcd) -> testing.State:
    """charmed-etcd takes what a rollingops hook left on the relation and answers.

    Returns ``out`` with the reply in place: the state of the requirer's next hook.
    """
    ours = out.get_relation(provider.relation_id)
    assert isinstance(ours, testing.Relation)
    data, provider_secrets = provider.deliver(ours, _granted(out, provider.relation_id))
    return with_reply(out, data, provider_secrets, provider.relation_id)


def with_reply(
    state: testing.State,
    data: dict[str, str],
    provider_secrets: set[testing.Secret],
    relation_id: int = ETCD_ID,
) -> testing.State:
    """``state`` with charmed-etcd's current reply on the etcd relation."""
    ours = state.get_relation(relation_id)
    answered = dataclasses.replace(ours, remote_app_data=data)
    relations = {r for r in state.relations if r.id != relation_id} | {answered}
    secrets = _owned(state) | provider_secrets
    return dataclasses.replace(state, relations=relations, secrets=secrets)


def certificates_bag(state: testing.State) -> dict[str, str]:
    """What rollingops wrote on ``etcd-client-ca`` (its app data there)."""
    relation = next(r for r in state.relations if r.endpoint == "etcd-client-ca")
    return dict(relation.local_app_data)


def published_cas(state: testing.State) -> set[str]:
    """The CA certificates rollingops offers over ``etcd-client-ca``."""
    return set(json.loads(certificates_bag(state).get("certificates", "[]")))
