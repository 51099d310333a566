"""Fixtures of the engine tests on etcd (defined in ``etcd_helpers``)."""

from etcd_helpers import client, cluster_farm, contenders, farm

__all__ = ["client", "cluster_farm", "contenders", "farm"]
