"""Cost of a no-op `dvc repro` on this repository, against DVC's own start-up (`dvc version`).

Run from the repository root after a complete `dvc repro`. Prints the median seconds of each and,
as its last line, the ratio no-op repro / start-up (the pipeline's own bookkeeping on top of
starting DVC). The issue's bar: a no-op repro in under 3 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 5


def seconds(*cmd: str) -> float:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    if cmd[1] == "repro" and "Running stage" in proc.stdout:
        sys.exit("the pipeline is not up to date: run `dvc repro` first, then this benchmark")
    return elapsed


def main() -> None:
    startup, repro = [], []
    for _ in range(REPEATS):  # alternate, so drift in machine load hits both alike
        startup.append(seconds("dvc", "version"))
        repro.append(seconds("dvc", "repro"))
    s, r = statistics.median(startup), statistics.median(repro)
    print(f"dvc_version_s: {s:.3f}")
    print(f"noop_repro_s: {r:.3f}")
    print(f"noop_repro_over_startup: {r / s:.2f}")


if __name__ == "__main__":
    main()
