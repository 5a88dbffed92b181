"""`diagnose`: which of the four incident scenarios of docs/domain.md §6 this is, from evidence.

- :mod:`.connectivity`: DNS, TCP, TLS and authentication, each timed and reported;
- :mod:`.integrity`: creds holding what Baileys needs, every key decoding, no unresolved
  legacy collision (scenario 2);
- :mod:`.completeness`: key counts per type against the newest backup (scenarios 3 and 4);
- :mod:`.exposure`: how much would be lost: the newest snapshot and backup per region;
- :mod:`.tree`: the runbook's decision tree over those, and the next command.
"""
