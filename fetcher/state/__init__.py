"""What survives a crash: typed, versioned checkpoints, the marker, atomic writes, the lock."""
