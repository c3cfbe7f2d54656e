"""Where the ordered bytes of the archive come from: one stream, parallel ranges, or both."""
