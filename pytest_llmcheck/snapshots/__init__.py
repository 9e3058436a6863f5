"""Snapshots: the syrupy extension, the snapshot text format, pending candidates and their review."""
