"""Progress reporting: log lines on a non-terminal stream (what a DVC stage's log shows)."""

import logging

from pgolf.progress import progress, progress_line


def test_progress_line():
    assert progress_line(120, 480, 12.3, "batch") == "120/480 batch (25.0%) 12.3 s, eta 36.9 s"
    assert progress_line(5, None, 2.0, "round") == "5 round 2.0 s"


def test_progress_logs_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="pgolf.progress")
    items = list(progress(range(5), "score", every_s=0.0, unit="batch"))
    assert items == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("score: 1/5 batch (20.0%)") and lines[-1].startswith("score: 5/5 batch (100.0%)")
