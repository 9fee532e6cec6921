"""Training curves through DVCLive (rank 0 only); `dvc plots show` draws them from dvc.yaml."""

from __future__ import annotations

from pathlib import Path

# What DVCLive deletes in its directory when a run starts afresh (its own files of an earlier run).
DVCLIVE_CLEANS = ("dvc.yaml", "params.yaml", "metrics.json", "plots")


class Curves:
    """Loss, lr and tokens/s against step; a no-op when `directory` is None (other ranks, tests)."""

    def __init__(self, directory: Path | None, resume: bool) -> None:
        self.live = None
        if directory is not None:
            guard_live_dir(Path(directory))
            from dvclive import Live

            self.live = Live(str(directory), dvcyaml=False, resume=resume, save_dvc_exp=False, report=None)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, value)
        self.live.next_step()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def guard_live_dir(directory: Path) -> None:
    """ValueError when `directory` holds a project's files that DVCLive's clean-up would delete (a
    live directory of "." or the repository root removes dvc.yaml and params.yaml)."""
    if (directory / ".git").exists() or (directory / ".dvc").is_dir():
        raise ValueError(f"{directory}: the curves directory is a repository root; DVCLive would delete its "
                         f"{' and '.join(n for n in DVCLIVE_CLEANS[:2] if (directory / n).exists()) or 'files'} (pass a subdirectory such as dvclive/train)")
