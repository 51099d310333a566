"""The principal charm simulated units run: any charm directory, the demo principal by default.

A charm directory as charmcraft packs it: ``src/charm.py`` defines the charm class, and its
metadata, actions and config come from ``metadata.yaml``/``actions.yaml``/``config.yaml`` or from
``charmcraft.yaml``. The endpoint it relates to rollingops on is the one whose interface is
``rollingops``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ops
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
DEMO = REPOSITORY / "demo" / "principal"
"""The demo principal: requests restarts through its ``restart`` action, records each grant."""
INTERFACE = "rollingops"
_BUILD_KEYS = frozenset(
    {
        "type",
        "bases",
        "base",
        "build-base",
        "platforms",
        "parts",
        "actions",
        "config",
        "charm-libs",
    }
)
"""Keys of ``charmcraft.yaml`` that are not charm metadata."""


class PrincipalCharmError(ValueError):
    """The directory holds no usable principal charm; the message says what is missing."""


def _yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise PrincipalCharmError(f"{path} is not a YAML mapping")
    return loaded  # type: ignore[return-value]


@dataclass(frozen=True)
class PrincipalCharm:
    """A principal charm directory, and the class in its ``src/charm.py`` (by name, or the one)."""

    directory: Path = DEMO
    class_name: str | None = None

    def charm_class(self) -> type[ops.CharmBase]:
        """Import ``src/charm.py`` and return the charm class.

        The charm's ``src/`` and ``lib/`` go on the import path first, as the ``PYTHONPATH``
        of charmcraft's ``dispatch`` puts them: a charm imports its own modules and charm libs
        by their plain names.
        """
        source = self.directory / "src" / "charm.py"
        if not source.is_file():
            raise PrincipalCharmError(f"{source} does not exist")
        for folder in (self.directory / "lib", self.directory / "src"):
            if folder.is_dir() and str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
        name = f"principal_charm_{abs(hash(str(source)))}"
        spec = importlib.util.spec_from_file_location(name, source)
        if spec is None or spec.loader is None:
            raise PrincipalCharmError(f"cannot import {source}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        classes = [
            value
            for value in vars(module).values()
            if inspect.isclass(value)
            and issubclass(value, ops.CharmBase)
            and value.__module__ == name
            and (self.class_name is None or value.__name__ == self.class_name)
        ]
        if len(classes) != 1:
            found = ", ".join(c.__name__ for c in classes) or "none"
            raise PrincipalCharmError(
                f"{source}: {len(classes)} charm classes match ({found}); name one with --class"
            )
        return classes[0]

    def _charmcraft(self) -> dict[str, Any]:
        return _yaml(self.directory / "charmcraft.yaml")

    def meta(self) -> dict[str, Any]:
        """``metadata.yaml``, or the metadata keys of ``charmcraft.yaml``."""
        meta = _yaml(self.directory / "metadata.yaml")
        if meta:
            return meta
        return {k: v for k, v in self._charmcraft().items() if k not in _BUILD_KEYS}

    def actions(self) -> dict[str, Any] | None:
        """``actions.yaml``, or the ``actions`` of ``charmcraft.yaml``."""
        return _yaml(self.directory / "actions.yaml") or self._charmcraft().get("actions")

    def config(self) -> dict[str, Any] | None:
        """``config.yaml``, or the ``config`` of ``charmcraft.yaml``."""
        return _yaml(self.directory / "config.yaml") or self._charmcraft().get("config")

    def endpoint(self) -> str:
        """The endpoint on the ``rollingops`` interface."""
        return self._endpoint_spec()[0]

    def container_scoped(self) -> bool:
        """Whether that endpoint declares ``scope: container``.

        ops.testing then wants a ``SubordinateRelation`` for it.
        """
        return self._endpoint_spec()[1].get("scope") == "container"

    def _endpoint_spec(self) -> tuple[str, dict[str, Any]]:
        meta = self.meta()
        for role in ("provides", "requires"):
            for name, spec in (meta.get(role) or {}).items():
                if isinstance(spec, dict) and spec.get("interface") == INTERFACE:
                    return str(name), spec  # type: ignore[return-value]
        raise PrincipalCharmError(f"{self.directory}: no endpoint on the {INTERFACE!r} interface")
