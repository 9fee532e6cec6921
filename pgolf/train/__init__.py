"""Training: data streams, schedules, the loop, checkpoints, EMA and the stage entry point."""
