"""model-fetch pack: a directory as a reproducible tar in independent zstd frames, seekable."""
