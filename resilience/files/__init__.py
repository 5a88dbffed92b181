"""The file side of the auth state: Baileys directories written, read and swapped in.

Export (PostgreSQL -> a company directory, manifest and digest), import (a directory -> the
company's rows, the way back's three-way merge), snapshots and their standby copies, staging
and atomic swaps, the manifest. The switch (:mod:`resilience.restore`), backups, the mirror and
maintenance use it; it uses none of them.
"""
