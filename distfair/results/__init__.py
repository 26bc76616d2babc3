"""What a run produced: the versioned result records (and the metric names)."""
