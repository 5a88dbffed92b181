"""The metric contract: what a service publishes at ``/metrics`` for the monitor to read.

The stand-in publishes exactly these through prometheus-client; the real Node service can
publish the same with prom-client (``docs/monitoring.md`` states the contract for it).
Names here are the exposition names (a counter's ``_total`` included).
"""

from __future__ import annotations

#: histogram, label ``outcome`` (``ok`` | ``error``): duration of every auth-state query
QUERY_DURATION = "baileys_auth_query_duration_seconds"
#: gauge, label ``quantile`` (``0.5`` | ``0.95`` | ``0.99``): nearest rank over the last 1,000
#: successful queries
QUERY_LATENCY = "baileys_auth_query_latency_seconds"
#: counter: queries slower than the service's slow threshold (500 ms by default)
SLOW_QUERIES = "baileys_auth_slow_queries_total"
#: gauge, label ``state`` (``idle`` | ``active``): connections of the service's pool
POOL_CONNECTIONS = "baileys_auth_pool_connections"
#: gauge: the pool's maximum size
POOL_MAX = "baileys_auth_pool_max_connections"
#: gauge: requests waiting for a connection
POOL_WAITING = "baileys_auth_pool_waiting_requests"
#: gauge: the process start time, seconds since the epoch (counters reset when it changes)
START_TIME = "process_start_time_seconds"

OUTCOMES = ("ok", "error")
QUANTILES = ("0.5", "0.95", "0.99")
#: histogram buckets, seconds: fine around the 100/200/500 ms colours of the status page
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
