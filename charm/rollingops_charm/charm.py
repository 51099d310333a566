"""The rollingops subordinate charm: Juju events in, engine calls out.

Every hook that can change anything ends in ``_sync``: read this unit's record (peer databag),
take new requests and results from the principal, apply them to the unit's queue in etcd in one
transaction, mirror the queue back to the peer databag and publish the protocol v1 bag to the
principal. The worker process does the waiting; no hook ever waits for the lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import ops
from charmlibs.interfaces.certificate_transfer import CertificateTransferProvides

from rollingops import etcd_versions, worker_log
from rollingops.backend_choice import Backend
from rollingops.control import DomainControl
from rollingops.etcd_client import EtcdClient, EtcdError, EtcdSettings
from rollingops.files import write_private
from rollingops.leadership import Leadership, PeerState, lead
from rollingops.models import utcnow
from rollingops.store import OperationStore
from rollingops.supervisor import WorkerCommand
from rollingops.worker_config import WorkerConfig

from . import actions, backends, peer_relation
from .backends import LockBackend, PeerLink
from .config import CharmConfig, InvalidConfigError, etcd_prefix
from .credentials import (
    Credential,
    activate,
    choose_credential,
    enrolment,
    forget_probe,
    own_leaf,
    read_active,
    write_probe,
)
from .etcd_relation import EtcdConnection, EtcdRequirer
from .identity import AppIdentity, client_cn, ensure_identity, read_identity
from .paths import UnitPaths
from .principal import PrincipalLink, subordinate_bag
from .status import StatusInputs, unit_status
from .unit_record import EtcdFailure, RecordStore, UnitRecord
from .worker_lifecycle import NOTHING_RUNS, WorkerLifecycle
from .worker_lifecycle import Outcome as WorkerOutcome

logger = logging.getLogger(__name__)

PEER = "cluster"
PRINCIPAL = "rollingops"
ETCD = "etcd"
CLIENT_CA = "etcd-client-ca"
HOOK_RUNNER_ENV = "ROLLINGOPS_HOOK_RUNNER"
HOOK_ETCD_BOUND = 2.0
"""Seconds any etcd call may take inside a hook: a hook holds the machine lock."""
WORKER_ETCD_BOUND = 5.0
RELAYED_EVENTS = 50
"""Worker events relayed to juju-log in one hook; the rest are counted."""
RECENT_EVENTS = 20
"""Worker events ``lock-status`` shows."""


class LockGrantedEvent(ops.EventBase):
    """Fired by the worker (through juju-exec) once it holds the lock for this unit."""


class EtcdFailedEvent(ops.EventBase):
    """Fired by the worker when etcd stayed unreachable past the deadline."""


class QueueChangedEvent(ops.EventBase):
    """Fired by the worker when the running operation ended other than by a result.

    Lock lost, hook never fired, revoked or cancelled elsewhere: mirror etcd and tell the
    principal.
    """


class RollingOpsEvents(ops.CharmEvents):
    """Juju's events plus the three custom hooks the worker fires."""

    rollingops_lock_granted = ops.EventSource(LockGrantedEvent)
    rollingops_etcd_failed = ops.EventSource(EtcdFailedEvent)
    rollingops_queue_changed = ops.EventSource(QueueChangedEvent)


class RollingOpsCharm(ops.CharmBase):
    """Rolling operations as a service for the co-located principal."""

    on = RollingOpsEvents()  # type: ignore[reportAssignmentType]
    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.config_error = ""
        self._settings_memo: tuple[AppIdentity | None, EtcdSettings | None] | None = None
        self._credential_memo: tuple[Credential | None] | None = None
        self.settings: CharmConfig | None = None
        try:
            self.settings = CharmConfig.parse(self.config)
        except InvalidConfigError as error:
            self.config_error = str(error)
        self.identity = read_identity(self.model)
        cluster_id = (
            self.settings.effective_cluster_id(self.app.name, self.model.uuid)
            if self.settings
            else None
        )
        self.prefix = etcd_prefix(cluster_id) if cluster_id else None
        self.client_cn = (
            client_cn(self.app.name, self.model.uuid, cluster_id) if cluster_id else None
        )
        self.etcd = EtcdRequirer(self.model, ETCD)
        self.client_ca = CertificateTransferProvides(self, CLIENT_CA)
        self.principal = PrincipalLink(self.model, PRINCIPAL)
        self._stored.set_default(
            record="",
            active_prefix="",
            worker_digest="",
            worker_log_offset=0,
            restart_waiting_since="",
            restart_waiting_for="",
        )
        self.records = RecordStore(self._stored)
        self._observe()

    def _observe(self) -> None:
        observe = self.framework.observe
        observe(self.framework.on.pre_commit, self._relay_worker_log)
        for event in (
            self.on.install,
            self.on.start,
            self.on.config_changed,
            self.on.leader_elected,
            self.on.update_status,
            self.on.secret_changed,
            self.on[PEER].relation_created,
            self.on[PEER].relation_changed,
            self.on[ETCD].relation_joined,
            self.on[ETCD].relation_changed,
            self.on[CLIENT_CA].relation_joined,
            self.on[CLIENT_CA].relation_changed,
            self.on[CLIENT_CA].relation_broken,
            self.on[PRINCIPAL].relation_joined,
            self.on[PRINCIPAL].relation_changed,
            self.on[PRINCIPAL].relation_departed,
        ):
            observe(event, self._on_change)
        observe(self.on.upgrade_charm, self._on_upgrade)
        observe(self.on.secret_remove, self._on_secret_remove)
        observe(self.on[ETCD].relation_broken, self._on_etcd_broken)
        observe(self.on.rollingops_lock_granted, self._on_lock_granted)
        observe(self.on.rollingops_etcd_failed, self._on_etcd_failed)
        observe(self.on.rollingops_queue_changed, self._on_queue_changed)
        observe(self.on.stop, self._on_stop)
        observe(self.on.remove, self._on_stop)
        observe(self.on.collect_unit_status, self._on_collect_status)
        for name in (*READ_ACTIONS, *CHANGING_ACTIONS):
            observe(self.on[name].action, self._on_action)

    # -- lifecycle ---------------------------------------------------------------------------

    def _on_change(self, event: ops.EventBase) -> None:
        etcd_event = isinstance(event, ops.RelationEvent) and event.relation.name in (
            ETCD,
            CLIENT_CA,
        )
        self._reconcile(probe=etcd_event or isinstance(event, ops.UpdateStatusEvent))

    def _on_secret_remove(self, event: ops.SecretRemoveEvent) -> None:
        """A revision of one of our secrets is tracked by nobody any more: delete it."""
        event.remove_revision()

    def _on_upgrade(self, _: ops.EventBase) -> None:
        """New code: restart the worker, but only once this unit runs no operation."""
        self._stored.worker_digest = ""
        self._reconcile(probe=True)

    def _on_etcd_broken(self, _: ops.EventBase) -> None:
        self._lifecycle().stop()
        self._remember(NOTHING_RUNS)
        self._sync()

    def _on_stop(self, _: ops.EventBase) -> None:
        self._lifecycle().stop()
        shutil.rmtree(self.paths.root, ignore_errors=True)
        self._credential_memo = (None,)  # nothing may write the unit's files again

    def _on_lock_granted(self, _: ops.EventBase) -> None:
        self._sync(on_grant=True)

    def _on_queue_changed(self, _: ops.EventBase) -> None:
        """The worker's queue ended other than by a result, or its last hold ended."""
        self._sync()
        self._drive_worker()  # a restart that waited for it goes ahead now

    def _on_etcd_failed(self, _: ops.EventBase) -> None:
        record = self.records.load()
        if record is not None:
            failure = EtcdFailure(since=utcnow(), reason="the worker gave up on etcd")
            self.records.save(record.model_copy(update={"etcd_failure": failure}))
        relation = self.model.get_relation(PEER)
        if relation is not None:
            peer_relation.flag_etcd_failure(relation, self.unit, failed=True)
        self._reconcile(probe=True)  # a renewed pair etcd now wants may be what was missing

    def _reconcile(self, probe: bool = False) -> None:
        """Bring identity, relation requests, credentials and worker in line; then sync."""
        if self.unit.is_leader() and self.client_cn is not None and self.prefix is not None:
            self.identity = ensure_identity(self.model, self.client_cn)
            self.etcd.publish(self.prefix, self.identity.enrolment.cert_pem)
            self._publish_client_cas(self.identity)
        self._credential_memo = (self._active_credential(probe),)
        self._settings_memo = None
        self._sync(probe=probe)
        self._drive_worker()

    def _drive_worker(self) -> None:
        """Start, keep, restart, hold off or stop the worker (``worker_lifecycle``'s rules)."""
        settings = self.etcd_settings()
        wanted = settings is not None and self.decided() is Backend.ETCD
        record = self.records.load()
        running = record.queue.current if record else None
        outcome = self._lifecycle().drive(
            self._worker_config(settings) if settings and wanted else None,
            operation=running.operation.id if running else None,
            last=self._worker_memory(),
        )
        if outcome.waiting_for:
            logger.info("worker restart waits for %s", outcome.waiting_for)
        self._remember(outcome)

    def _remember(self, outcome: WorkerOutcome) -> None:
        """Keep what the next hook's ``_drive_worker`` needs of this one."""
        self._stored.worker_digest = outcome.running_digest
        since = outcome.waiting_since
        self._stored.restart_waiting_since = since.isoformat() if since else ""
        self._stored.restart_waiting_for = outcome.waiting_for

    def _worker_memory(self) -> WorkerOutcome:
        since = str(self._stored.restart_waiting_since)
        return WorkerOutcome(
            running_digest=str(self._stored.worker_digest),
            waiting_since=dt.datetime.fromisoformat(since) if since else None,
            waiting_for=str(self._stored.restart_waiting_for),
        )

    def _lifecycle(self) -> WorkerLifecycle:
        return WorkerLifecycle(self._worker_command(), self.paths)

    def _publish_client_cas(self, identity: AppIdentity) -> None:
        """Leader: offer our client CA(s) to charmed-etcd's ``client-cas``."""
        relation = self.model.get_relation(CLIENT_CA)
        if relation is None:
            return
        published = set(json.loads(relation.data[self.app].get("certificates") or "[]"))
        if published != identity.trusted_cas:
            self.client_ca.remove_all_certificates(relation.id)
            self.client_ca.add_certificates(identity.trusted_cas, relation.id)

    # -- etcd and worker ---------------------------------------------------------------------

    @property
    def paths(self) -> UnitPaths:
        """The unit's own directory and files."""
        return UnitPaths.for_unit(self.unit.name)

    def credential(self) -> Credential | None:
        """The pair this unit connects with (see ``credentials``); chosen once per hook."""
        if self._credential_memo is None:
            self._credential_memo = (self._active_credential(probe=False),)
        return self._credential_memo[0]

    def _candidates(self) -> list[Credential]:
        """Better pairs than the active one could be, best first."""
        identity, cn, prefix = self.identity, self.client_cn, self.prefix
        if identity is None or cn is None or prefix is None:
            return []
        found: list[Credential] = []
        if self.model.get_relation(CLIENT_CA) is not None:
            found.append(own_leaf(self.paths, identity, cn, prefix))
        found.append(enrolment(identity, prefix))
        return found

    def _active_credential(self, probe: bool) -> Credential | None:
        paths = self.paths
        candidates = self._candidates()
        own = next((c.cert_pem for c in candidates if c.kind == "own leaf"), "")
        active = read_active(paths, self._stored.active_prefix or self.prefix or "", own)
        chosen = choose_credential(active, candidates, self._accepted if probe else None)
        if chosen is not None and chosen != active:
            activate(paths, chosen)
            self._stored.active_prefix = chosen.prefix
            logger.info("etcd credentials: now %s (was %s)", chosen, active)
        return chosen

    def _accepted(self, candidate: Credential) -> bool:
        """Whether etcd accepts ``candidate`` now: one bounded call (1 s) with it."""
        connection = self.etcd.connection(candidate.prefix, candidate.user)
        if connection is None:
            return False
        write_private(self.paths.etcd_ca, connection.ca_pem)
        key_file, cert_file = write_probe(self.paths, candidate)
        probe = self._settings_for(connection, candidate.prefix, key_file, cert_file, 1.0)
        try:
            with EtcdClient(probe) as client:
                client.get(client.prefix)
        except (EtcdError, ValueError) as error:
            logger.info("etcd does not accept %s yet: %s", candidate, error)
            return False
        finally:
            forget_probe(self.paths)
        return True

    def _connection(self) -> EtcdConnection | None:
        credential = self.credential()
        if credential is None:
            return None
        return self.etcd.connection(credential.prefix, credential.user)

    def etcd_waiting_for(self) -> str:
        """Why this unit cannot use etcd yet ("" when it can): said in status, never silent."""
        if self.etcd.relation is None:
            return "integrate with charmed-etcd"
        credential = self.credential()
        if credential is None:
            return "waiting for the client certificate from the leader"
        if self._connection() is None:
            return f"waiting for charmed-etcd to grant {credential.user} on {credential.prefix}"
        return ""

    def etcd_settings(self) -> EtcdSettings | None:
        """Client settings once etcd answered; writes the etcd CA (0600) on the way.

        Computed once per hook (one charm instance lives for one hook): relation data and
        secrets are hook-tool calls on a real unit. A new identity (leader renewal) recomputes.
        """
        if self._settings_memo is None or self._settings_memo[0] is not self.identity:
            self._settings_memo = (self.identity, self._build_etcd_settings())
        return self._settings_memo[1]

    def _build_etcd_settings(self) -> EtcdSettings | None:
        credential, connection = self.credential(), self._connection()
        if credential is None or connection is None:
            return None
        write_private(self.paths.etcd_ca, connection.ca_pem)
        paths = self.paths
        return self._settings_for(
            connection, credential.prefix, paths.client_key, paths.client_cert, HOOK_ETCD_BOUND
        )

    def _settings_for(
        self, connection: EtcdConnection, prefix: str, key: Path, cert: Path, bound: float
    ) -> EtcdSettings:
        return EtcdSettings(
            total_timeout=bound,
            call_timeout=min(bound, EtcdSettings.model_fields["call_timeout"].default),
            endpoints=connection.endpoints,
            ca_file=self.paths.etcd_ca,
            cert_file=cert,
            key_file=key,
            prefix=prefix,
        )

    def credential_mode(self) -> str:
        """Which pair this unit connects with, for lock-status."""
        if self.etcd.relation is None:
            return "none"
        credential = self.credential()
        return credential.kind if credential else "none"

    def _worker_config(self, settings: EtcdSettings) -> WorkerConfig:
        """The worker's settings: the charm's config and etcd's, with the unit's own paths."""
        assert self.settings is not None  # noqa: S101 - settings exist when etcd settings do
        return WorkerConfig(
            unit=self.unit.name,
            charm_dir=self.charm_dir,
            etcd=settings.model_copy(update={"total_timeout": WORKER_ETCD_BOUND}),
            lease_ttl=self.settings.lease_ttl,
            max_concurrent=self.settings.max_concurrent,
            state_dir=self.paths.root,
            hook_runner=_hook_runner(),
            failure_deadline=self.settings.etcd_failure_deadline,
        )

    def _worker_command(self) -> WorkerCommand:
        return WorkerCommand(
            unit=self.unit.name,
            config_file=self.paths.worker_config,
            python_path=tuple(Path(p) for p in sys.path if p and Path(p).is_dir()),
        )

    # -- the backend and the queue ------------------------------------------------------------

    def _peer(self) -> PeerLink | None:
        relation = self.model.get_relation(PEER)
        return None if relation is None else PeerLink(relation, self.app, self.unit)

    def _peer_state(self) -> PeerState:
        peer = self._peer()
        return peer.state() if peer else PeerState()

    def decided(self) -> Backend:
        """The backend the leader chose; etcd until it has said anything."""
        return self._peer_state().backend

    def lock_backend(self, state: PeerState | None = None) -> LockBackend:
        """The unit's backend under the leader's decision (``backends.select``)."""
        state = state or self._peer_state()
        capacity = self.settings.max_concurrent if self.settings else 1
        return backends.select(
            state.backend,
            etcd=self.etcd_settings(),
            peer=self._peer(),
            unit=self.unit.name,
            capacity=capacity,
            waiting_for=self.etcd_waiting_for() or "invalid config",
        )

    def _sync(self, on_grant: bool = False, probe: bool = False) -> None:
        """Requests in, queue through the backend, record and protocol bag out.

        The leader then decides the backend and (under peer) the grants; if that changed
        anything for this unit, one more pass takes it up in the same hook.
        """
        for _ in range(2):
            record = self.records.load()
            if record is None:
                return
            self._sync_once(record, on_grant, probe)
            if not (self.unit.is_leader() and self._lead()):
                return
            on_grant = probe = False

    def _sync_once(self, record: UnitRecord, on_grant: bool, probe: bool) -> None:
        peer, state = self._peer(), self._peer_state()
        backend = self.lock_backend(state)
        try:
            record = backend.sync(record, self.principal.read(), on_grant)
            if backend.granting is Backend.ETCD:
                self._etcd_answered(peer)
        except EtcdError as error:
            logger.warning("etcd unavailable in this hook: %s", error)
        if peer is not None:
            published = backend.published(record)
            peer_relation.write_queue(peer.relation, self.unit, published, state.epoch)
        settings = self.etcd_settings()
        if backend.queue_is_local and probe and settings and self._etcd_reachable(settings):
            self._etcd_answered(peer)
        self.records.save(record)
        sync_socket = self.paths.sync_socket if backend.granting is Backend.ETCD else None
        self.principal.publish(subordinate_bag(record, backend.granting, sync_socket))

    def _etcd_answered(self, peer: PeerLink | None) -> None:
        if peer is not None:
            peer_relation.flag_etcd_failure(peer.relation, self.unit, failed=False)

    def _etcd_reachable(self, settings: EtcdSettings) -> bool:
        """A quick, bounded look at etcd (1 s) while another backend is in use."""
        quick = settings.model_copy(update={"total_timeout": 1.0, "call_timeout": 1.0})
        try:
            with EtcdClient(quick) as client:
                OperationStore(client, client.prefix, self.unit.name).load()
        except EtcdError:
            return False
        return True

    def _lead(self) -> bool:
        """Leader: one pass of ``rollingops.leadership.lead``; whether it changed anything."""
        peer = self._peer()
        if peer is None or self.settings is None:
            return False
        state = peer.state()
        if state.backend is Backend.ETCD:
            state = self._mirror_etcd_pause(peer, state)
        known = Leadership(
            members=frozenset({self.unit.name, *(u.name for u in peer.relation.units)}),
            etcd_usable=self.etcd_settings() is not None,
            fallback=self.settings.fallback,
            capacity=self.settings.max_concurrent,
        )
        step = lead(state, known, lambda token: self._fence_past_peer(token, state), utcnow())
        peer_relation.write_step(peer.relation, self.app, step)
        return step.changed

    def _domain_control(self, client: EtcdClient) -> DomainControl:
        capacity = self.settings.max_concurrent if self.settings else 1
        return DomainControl(client, client.prefix, capacity)

    def _mirror_etcd_pause(self, peer: PeerLink, state: PeerState) -> PeerState:
        """Under etcd, keep etcd's pause in the peer bag too, so a fallback keeps it."""
        settings = self.etcd_settings()
        if settings is None:
            return state
        try:
            with EtcdClient(settings) as client:
                pause = self._domain_control(client).paused()
        except EtcdError:
            return state  # etcd unreachable: the last mirrored pause stands
        if pause != state.pause:
            peer.write_pause(pause)
        return dataclasses.replace(state, pause=pause)

    def _fence_past_peer(self, highest_peer_token: int, state: PeerState) -> bool:
        """Make etcd ready to grant again after peer or none.

        Its token floor goes past every peer token (tokens keep rising), and it takes the peer
        backend's pause, or loses a stale one an operator lifted meanwhile.
        """
        settings = self.etcd_settings()
        if settings is None:
            return False
        try:
            with EtcdClient(settings) as client:
                control = self._domain_control(client)
                control.raise_token_floor(highest_peer_token)
                if state.pause is None:
                    control.resume()
                elif control.paused() != state.pause:
                    control.pause(state.pause.reason, state.pause.by)
        except EtcdError as error:
            logger.warning("cannot raise etcd's token floor yet, staying off etcd: %s", error)
            return False
        return True

    def _relay_worker_log(self, _: ops.EventBase) -> None:
        """What the worker did since this unit's previous hook, one juju-log line per event."""
        tail = worker_log.read_since(self.paths.worker_log, int(self._stored.worker_log_offset))
        for line in tail.lines[:RELAYED_EVENTS]:
            logger.info("worker: %s", line)
        if len(tail.lines) > RELAYED_EVENTS:
            logger.info(
                "worker: %d more events (lock-status shows the last ones)",
                len(tail.lines) - RELAYED_EVENTS,
            )
        self._stored.worker_log_offset = tail.offset

    def worker_running(self) -> bool:
        """Whether this unit's worker process is alive."""
        return self._lifecycle().running()

    # -- status and actions ------------------------------------------------------------------

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        try:
            record, record_error = UnitRecord.load(self.records.raw()), ""
        except ValueError as error:
            record, record_error = None, str(error)
        state = self._peer_state()
        inputs = StatusInputs(
            config_error=self.config_error,
            record_error=record_error,
            has_etcd_relation=self.etcd.relation is not None,
            etcd_waiting_for=self.etcd_waiting_for(),
            worker_running=self.worker_running(),
            record=record,
            max_concurrent=self.settings.max_concurrent if self.settings else 1,
            backend=state.backend,
            backend_since=state.decision.since if state.decision else None,
            pause=state.pause if state.backend is Backend.PEER else None,
            restart_waits_for=str(self._stored.restart_waiting_for),
            etcd_version=etcd_versions.observed(self.paths.root),
        )
        event.add_status(unit_status(inputs))

    def _action_context(self) -> actions.ActionContext:
        return actions.ActionContext(
            unit=self.unit.name,
            backend=self.lock_backend(),
            records=self.records,
            worker_running=self.worker_running,
            credentials=self.credential_mode(),
            worker_events=lambda: worker_log.last(self.paths.worker_log, RECENT_EVENTS),
            etcd_version=lambda: etcd_versions.observed(self.paths.root),
        )

    def _on_action(self, event: ops.ActionEvent) -> None:
        """Run the action through the unit's backend.

        One that changes the lock ends in a sync, so the principal and (on the leader) the
        grants follow at once.
        """
        name = event.handle.kind.removesuffix("_action").replace("_", "-")
        changing = name in CHANGING_ACTIONS
        run = CHANGING_ACTIONS[name] if changing else READ_ACTIONS[name]
        run(self._action_context(), event)
        if changing:
            self._sync()


ActionHandler = Callable[[actions.ActionContext, ops.ActionEvent], None]
READ_ACTIONS: dict[str, ActionHandler] = {
    "lock-status": actions.lock_status,
    "history": actions.history,
}
CHANGING_ACTIONS: dict[str, ActionHandler] = {
    "force-release": actions.force_release,
    "pause": actions.pause,
    "resume": actions.resume,
    "cancel": actions.cancel,
    "run-exclusive": actions.run_exclusive,
}


def _hook_runner() -> Path:
    """``juju-exec`` (the simulator points this elsewhere)."""
    override = os.environ.get(HOOK_RUNNER_ENV)
    found = override or shutil.which("juju-exec") or "/usr/bin/juju-exec"
    return Path(found)


def main() -> None:
    """Entry point of the packed charm."""
    ops.main(RollingOpsCharm)
