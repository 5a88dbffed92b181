"""The live file mirror: a Baileys directory per company kept current with PostgreSQL."""
