"""Training curves through DVCLive (rank 0 only); `dvc plots show` draws them from dvc.yaml."""

from __future__ import annotations

from pathlib import Path


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
    """ValueError when `directory` is a repository root: DVCLive's clean-up of a fresh run deletes the
    stage and params files it would have written there, which in a project root are the project's."""
    if (directory / ".git").exists() or (directory / ".dvc").is_dir():
        raise ValueError(f"{directory}: the curves directory is a repository root, whose stage and params files "
                         "DVCLive's clean-up would delete (pass a subdirectory such as dvclive/train)")
