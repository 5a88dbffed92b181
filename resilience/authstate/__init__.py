"""The Baileys auth state: codec, records, file naming, fingerprints and the file store."""
