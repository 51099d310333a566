"""Fixtures of the charm tests (defined in ``charm_helpers``, which tests import by name)."""

from charm_helpers import ctx, supervisor, wired

__all__ = ["ctx", "supervisor", "wired"]
