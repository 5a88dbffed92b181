"""Monitoring: what the service's auth queries, pool, keys and database connections look like,
the rules that turn them into alerts, and the monitor process that serves them.

- :mod:`.contract`: the metric names the service publishes at ``/metrics``;
- :mod:`.latency`: the ring of recent queries, nearest-rank percentiles, the sliding window;
- :mod:`.instrument`: the timing cursor a service (the stand-in, or a Python service) uses;
- :mod:`.sources`: where numbers come from (the service's ``/metrics``, a synthetic probe, the
  database's own views);
- :mod:`.rules`: thresholds to findings; :mod:`.alertstate`: firing, cooldown, resolved;
- :mod:`.monitor`: one cycle and the long-running loop; :mod:`.server`: its HTTP face.
"""
