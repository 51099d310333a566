"""The ops layer of rollingops: translates Juju events into engine calls, nothing more."""
