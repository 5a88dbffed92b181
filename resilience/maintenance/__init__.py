"""Maintenance of the auth store: key expiry and cleanup, legacy rows, and the schedules."""
