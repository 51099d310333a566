"""A real-etcd test bed: TLS everywhere, auth on, one client user limited to one key prefix.

Tests, benchmarks and the demo share it so that they all exercise the engine against the same
thing charmed-etcd gives a client in production, not against a mock.
"""
