"""Backups in several regions: dumps with manifests, validation, restores, retention."""
