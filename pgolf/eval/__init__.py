"""Evaluation: exact val_bpb with plain, sliding-window and score-first test-time-training scoring."""
