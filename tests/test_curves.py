"""Training curves: DVCLive never runs in a repository root (its clean-up deletes dvc.yaml and params.yaml)."""

from __future__ import annotations

import pytest

from pgolf.train.curves import Curves


def test_curves_refuse_a_repository_root_and_keep_its_files(tmp_path):
    (tmp_path / ".git").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text("keep: me\n")
    with pytest.raises(ValueError, match="repository root, whose stage and params files DVCLive"):
        Curves(tmp_path, resume=False)
    assert (tmp_path / "dvc.yaml").read_text() == "keep: me\n" and (tmp_path / "params.yaml").is_file()


def test_curves_in_a_subdirectory_log_steps(tmp_path):
    (tmp_path / ".git").mkdir()
    curves = Curves(tmp_path / "dvclive" / "train", resume=False)
    curves.log(1, {"loss": 2.5})
    curves.close()
    assert (tmp_path / "dvclive" / "train" / "metrics.json").is_file()
