"""Streaming, verified, resumable download-and-extract of a model into a directory."""
