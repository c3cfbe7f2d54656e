"""HTTP edge: the shared client, the response classifier, retries, pacing, object-store signers."""
