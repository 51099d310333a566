"""ops.testing harness for the charm: metadata from the repo, a per-test state dir, and states
wired to a real test-bed etcd when a test needs one."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rollingops_charm.worker_lifecycle as lifecycle_module
import yaml
from ops import testing
from rollingops_charm.charm import RollingOpsCharm
from rollingops_charm.identity import AppIdentity
from rollingops_charm.unit_record import UnitRecord
from scenario.state import _Event  # pyright: ignore[reportPrivateUsage]
from testbed.charmed_etcd import CharmedEtcd, connect
from testbed.etcd import EtcdCluster

from rollingops.certificates import ClientIdentity
from rollingops.models import UnitQueue

ROOT = Path(__file__).resolve().parents[2]
UNIT = "rollingops/0"
PRINCIPAL = "principal/0"


def load_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def unit_context(charm_root: Path, unit_id: int = 0) -> testing.Context[RollingOpsCharm]:
    """ops.testing context of ``rollingops/<unit_id>``, metadata from the repository."""
    charm_root.mkdir()
    return testing.Context(
        RollingOpsCharm,
        charm_root=charm_root,
        meta=load_yaml("metadata.yaml"),
        actions=load_yaml("actions.yaml"),
        config=load_yaml("config.yaml"),
        unit_id=unit_id,
        app_name="rollingops",
    )


@pytest.fixture
def ctx(tmp_path: Path) -> testing.Context[RollingOpsCharm]:
    return unit_context(tmp_path / "charm")


@dataclass
class FakeSupervisor:
    """Records what the charm asks of the worker's supervisor (tested for real elsewhere)."""

    calls: list[tuple[str, bool]] = field(default_factory=list[tuple[str, bool]])
    running: bool = False

    def ensure_running(self, restart: bool = False) -> None:
        self.calls.append(("ensure_running", restart))
        self.running = True

    def is_running(self) -> bool:
        return self.running

    def remove(self) -> None:
        self.calls.append(("remove", False))
        self.running = False


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeSupervisor:
    fake = FakeSupervisor()
    monkeypatch.setattr(lifecycle_module, "supervisor_for", lambda command, state_dir: fake)
    monkeypatch.setenv("ROLLINGOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ROLLINGOPS_HOOK_RUNNER", str(tmp_path / "juju-exec"))
    return fake


def unit_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / UNIT.replace("/", "-")


def peer(**kwargs: Any) -> testing.PeerRelation:
    return testing.PeerRelation("cluster", **kwargs)


def stored(record: UnitRecord | str) -> testing.StoredState:
    """The charm's stored state holding ``record`` (or raw text, to test a corrupt one)."""
    raw = record if isinstance(record, str) else record.dump()
    return testing.StoredState("_stored", owner_path="RollingOpsCharm", content={"record": raw})


def principal_relation(**bag: Any) -> testing.SubordinateRelation:
    data = {
        key: value if isinstance(value, str) else json.dumps(value) for key, value in bag.items()
    }
    return testing.SubordinateRelation(
        "rollingops", remote_app_name="principal", remote_unit_id=0, remote_unit_data=data
    )


def request(op_id: str, callback: str = "restart", **extra: Any) -> dict[str, Any]:
    requested_at = dt.datetime.now(dt.timezone.utc).isoformat()
    return {
        "id": op_id,
        "callback": callback,
        "kwargs": {},
        "max-retry": None,
        "requested-at": requested_at,
        **extra,
    }


@dataclass
class EtcdWiring:
    """Relation, secrets and config that connect the charm to a test-bed etcd."""

    cluster: EtcdCluster
    relation: testing.Relation
    secrets: list[testing.Secret]
    config: dict[str, str | int]
    model: testing.Model
    provider: CharmedEtcd

    def state(self, *relations: testing.RelationBase, **kwargs: Any) -> testing.State:
        return testing.State(
            relations={self.relation, *relations},
            secrets=set(self.secrets),
            config={**self.config, **kwargs.pop("config", {})},
            model=kwargs.pop("model", self.model),
            **kwargs,
        )


@pytest.fixture
def wired(etcd: EtcdCluster, supervisor: FakeSupervisor) -> EtcdWiring:
    """The leader related to charmed-etcd: its request answered by the real provider code.

    The handshake's own hook is not the test's: what it asked of the supervisor is forgotten.
    """
    given = connect(etcd)
    supervisor.calls.clear()
    return EtcdWiring(
        etcd, given.relation, list(given.secrets), given.config, given.model, given.provider
    )


def read_content(secret: testing.Secret) -> AppIdentity:
    """The application identity held in the leader's secret."""
    content = secret.latest_content or secret.tracked_content
    return AppIdentity(
        ca=ClientIdentity(content["ca-key"], content["ca-cert"]),
        enrolment=ClientIdentity(content["key"], content["cert"]),
        previous_ca_cert=content.get("previous-ca-cert", ""),
    )


def record_of(state: testing.State) -> UnitRecord:
    return UnitRecord.load(
        state.get_stored_state("_stored", owner_path="RollingOpsCharm").content["record"]
    )


def sub_bag(state: testing.State) -> dict[str, Any]:
    data = state.get_relations("rollingops")[0].local_unit_data
    keys = ("granted", "state", "accepted", "rejected", "finished", "sync-socket")
    return {"protocol": data["protocol"]} | {k: json.loads(data.get(k) or "null") for k in keys}


def empty_queue() -> UnitQueue:
    return UnitQueue()


def worker_hook(name: str) -> Any:
    """One of the custom hooks the worker fires through juju-exec (``hooks/<name>``).

    ``ctx.on.custom`` only reaches events of charm libraries, not the charm's own ``on``;
    Scenario runs a charm-level event from its name.
    """
    return _Event(name)
