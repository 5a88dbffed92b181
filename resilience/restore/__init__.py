"""Emergency exit from PostgreSQL to Baileys files and back: export, snapshots, import, runner."""
