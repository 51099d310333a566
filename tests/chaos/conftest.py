"""The chaos suite: real workers, a three-member etcd, seeded faults (see ``chaos.py``)."""
