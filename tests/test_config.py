"""params.yaml validation: every section, one readable line per problem, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.cli import main as cli_main
from pgolf.config.sections import SECTIONS, load_params, load_section
from pgolf.errors import ParamsError
from pgolf.profiles import apply_profile, list_profiles, load_profile

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_shipped_params_validate():
    sections = load_params(REPO / "params.yaml")
    assert set(sections) == set(SECTIONS)


def test_shipped_params_spell_out_every_key():
    """params.yaml documents each section in full: no key silently falls back to a default."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, model in SECTIONS.items():
        assert name in raw, f"params.yaml lacks section {name}"
        assert set(raw[name]) == set(model.model_fields), f"{name}: keys differ from the model"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_section_has_described_fields(name):
    for field_name, field in SECTIONS[name].model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"


def test_defaults_validate_when_section_missing(tmp_path):
    path = write_params(tmp_path, {})
    assert load_section("tokenizer", path).vocab_size == 1024


def test_out_of_range_names_key_and_bound(tmp_path):
    path = write_params(tmp_path, {"tokenizer": {"vocab_size": 3}})
    with pytest.raises(ParamsError) as info:
        load_section("tokenizer", path)
    assert str(info.value) == "tokenizer.vocab_size: must be >= 256, got 3"


def test_unknown_key_lists_allowed_keys(tmp_path):
    path = write_params(tmp_path, {"export": {"val_dox": 3}})
    with pytest.raises(ParamsError) as info:
        load_section("export", path)
    message = str(info.value)
    assert message.startswith("export.val_dox: unknown key")
    assert "val_docs" in message


def test_literal_and_type_errors_are_one_line(tmp_path):
    path = write_params(tmp_path, {"fetch": {"source": "ftp", "train_shards": "many"}})
    with pytest.raises(ParamsError) as info:
        load_section("fetch", path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fetch.source: must be 'builtin' or 'hf'")
    assert lines[1].startswith("fetch.train_shards:")


def test_unknown_section_and_non_mapping_section(tmp_path):
    path = write_params(tmp_path, {"trian": {}, "audit": [1, 2]})
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert "trian: unknown section" in message
    assert "audit: must be a mapping" in message


def test_invalid_yaml_is_reported_with_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("fetch:\n  source: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_yaml11_float_strings_are_coerced(tmp_path):
    """PyYAML reads `1e0` as a string (YAML 1.1); pydantic's lax mode still makes it a float."""
    path = tmp_path / "params.yaml"
    path.write_text("tokenizer:\n  character_coverage: 1e0\n", encoding="utf-8")
    assert isinstance(yaml.safe_load(path.read_text())["tokenizer"]["character_coverage"], str)
    assert load_section("tokenizer", path).character_coverage == 1.0


def full_params(tmp_path, overrides: dict) -> Path:
    """The shipped params.yaml with some sections replaced (every section written out)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, section in overrides.items():
        data[name] = {**data[name], **section}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_cli_params_check_exit_codes(tmp_path, capsys):
    good = full_params(tmp_path, {})
    assert cli_main(["params", "check", "--params", str(good)]) == 0
    bad = full_params(tmp_path, {"tokenizer": {"vocab_size": 3}})
    assert cli_main(["params", "check", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error: tokenizer.vocab_size: must be >= 256, got 3" in err
    assert "Traceback" not in err


def test_cli_params_check_stamp_is_constant(tmp_path):
    first = full_params(tmp_path, {"tokenizer": {"vocab_size": 512}})
    stamp = tmp_path / "ok"
    assert cli_main(["params", "check", "--params", str(first), "--stamp", str(stamp)]) == 0
    before = stamp.read_bytes()
    second = full_params(tmp_path, {"tokenizer": {"vocab_size": 2048}})
    assert cli_main(["params", "check", "--params", str(second), "--stamp", str(stamp)]) == 0
    assert stamp.read_bytes() == before


def test_cli_params_show_includes_defaults(tmp_path, capsys):
    path = write_params(tmp_path, {"tokenizer": {"vocab_size": 512}})
    assert cli_main(["params", "show", "tokenizer", "--params", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["tokenizer"]["vocab_size"] == 512
    assert shown["tokenizer"]["character_coverage"] == 0.999


def test_stage_script_exits_2_and_writes_nothing(tmp_path):
    """A stage validates its own section before reading or writing anything."""
    write_params(tmp_path, {"fetch": {"source": "builtin", "bogus": 1}})
    out = tmp_path / "out"
    body = f"from pgolf.stage import run_stage; from pgolf.config.data import FetchParams; run_stage({{'fetch': FetchParams}}, lambda p: open({str(out)!r}, 'w'))"
    proc = subprocess.run(
        [sys.executable, "-c", body],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: fetch.bogus: unknown key (allowed: " + ", ".join(
        sorted(SECTIONS["fetch"].model_fields)) + ")"
    assert not out.exists()


def test_shipped_profiles_validate(tmp_path):
    profiles = list_profiles(REPO / "profiles")
    for profile in profiles:
        params = tmp_path / f"{profile.name}.yaml"
        params.write_bytes((REPO / "params.yaml").read_bytes())
        apply_profile(profile.name, params, REPO / "profiles")
        load_params(params)
        assert profile.description, f"profile {profile.name} has no leading comment"


def test_apply_profile_keeps_comments_and_refuses_invalid(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "small.yaml").write_text("# A smaller vocabulary.\ntokenizer:\n  vocab_size: 512\n")
    (profiles / "broken.yaml").write_text("# Broken.\ntokenizer:\n  vocab_size: 2\n")
    params = tmp_path / "params.yaml"
    params.write_text("# top comment\ntokenizer:\n  vocab_size: 1024  # keep me\n  num_threads: 2\n")
    apply_profile("small", params, profiles)
    text = params.read_text()
    assert "# top comment" in text and "vocab_size: 512" in text and "num_threads: 2" in text
    before = params.read_bytes()
    with pytest.raises(ParamsError, match="tokenizer.vocab_size"):
        apply_profile("broken", params, profiles)
    assert params.read_bytes() == before
    assert load_profile("small", profiles).description == "A smaller vocabulary."
    with pytest.raises(ParamsError, match="no file"):
        load_profile("nope", profiles)


def test_booleans_and_integer_strings_are_not_coerced(tmp_path):
    path = write_params(tmp_path, {"export": {"val_docs": True}, "tokenizer": {"vocab_size": "1024"}})
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert "export.val_docs: must be a number, not true/false" in message
    assert "tokenizer.vocab_size: must be an integer, not a string" in message
    ok = write_params(tmp_path, {"tokenizer": {"vocab_size": 512}, "audit": {"compare_source_text": False}})
    assert load_params(ok)["audit"].compare_source_text is False


def _stage_proc(tmp_path, body_expr: str, params_text: str | None):
    if params_text is not None:
        (tmp_path / "params.yaml").write_text(params_text)
    body = "from pgolf.stage import run_stage; from pgolf.config.data import AuditParams; " + body_expr
    return subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_params_check_refuses_empty_file_and_missing_sections(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert cli_main(["params", "check", "--params", str(empty)]) == 2
    assert "section fetch is missing" in capsys.readouterr().err
    partial = tmp_path / "partial.yaml"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["audit"]
    partial.write_text(yaml.safe_dump(params))
    assert cli_main(["params", "check", "--params", str(partial)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: audit: section is missing from " + str(partial) + " (`pgolf params show audit` prints its defaults)"]
    assert cli_main(["params", "check", "--params", str(REPO / "params.yaml")]) == 0


def test_stage_fails_when_its_params_change_while_it_runs(tmp_path):
    """Editing params.yaml mid-run (e.g. applying a profile) must not let the stage report success."""
    params = tmp_path / "params.yaml"
    edit = f"open({str(params)!r}, 'w').write('audit: {{compare_source_text: false}}\\n')"
    proc = _stage_proc(tmp_path, f"run_stage({{'audit': AuditParams}}, lambda p: {edit})", "audit: {compare_source_text: true}\n")
    assert proc.returncode == 1, proc.stderr
    assert "section audit changed while the stage ran" in proc.stderr.strip().splitlines()[-1]
    other = f"open({str(params)!r}, 'a').write('fetch: {{source: builtin}}\\n')"
    proc = _stage_proc(tmp_path, f"run_stage({{'audit': AuditParams}}, lambda p: {other})", "audit: {compare_source_text: true}\n")
    assert proc.returncode == 0, proc.stderr  # another section's edit does not touch this stage's result
