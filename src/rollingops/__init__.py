"""The rollingops engine: fair fenced locking over etcd, operation queues and the worker.

This package never imports ``ops``: it is driven by the charm in ``charm/`` and is testable with
no Juju at all.
"""
