"""Storage: the per-machine cache, file digests, hub downloads and the embedded model's file."""
