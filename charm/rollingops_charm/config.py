"""Charm config, parsed once per hook; an invalid value blocks the unit with the reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollingops.backend_choice import Fallback

ClusterId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class InvalidConfigError(ValueError):
    """A config option is invalid; the message names it and says why."""


class CharmConfig(BaseModel):
    """The options of ``config.yaml``."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=lambda n: n.replace("_", "-")
    )

    cluster_id: ClusterId | None = None
    """Lock domain shared by every application with the same id; default: app and model."""
    max_concurrent: Annotated[int, Field(ge=1, le=1000)] = 1
    lease_ttl: Annotated[int, Field(ge=5, le=3600)] = 30
    etcd_failure_deadline: Annotated[int, Field(ge=5, le=3600)] = 30
    fallback: Fallback = Fallback.PEER
    """When etcd is lost: ``peer`` keeps granting (per application), ``none`` stops granting."""

    @classmethod
    def parse(cls, raw: Mapping[str, bool | int | float | str]) -> CharmConfig:
        """Validate Juju's config; an empty ``cluster-id`` means the default."""
        values = {key: value for key, value in raw.items() if value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            option = ".".join(str(part) for part in first["loc"])
            raise InvalidConfigError(f"{option} invalid: {first['msg']}") from error

    def effective_cluster_id(self, app: str, model_uuid: str) -> str:
        """The configured id, or one unique to this application in this model."""
        return self.cluster_id or f"{app}-{model_uuid[:8]}"


def etcd_prefix(cluster_id: str) -> str:
    """The etcd key prefix requested from charmed-etcd for a cluster id."""
    return f"/rollingops/{cluster_id}/"
