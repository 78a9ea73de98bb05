"""What a spec and its model may be on disk: only regular files are read as specs (a FIFO or a
device is refused, never waited on), a symlinked spec resolves its files next to its target, and
a raw control character is a located error, through the real CLI."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from orchestrator.cli.app import main
from orchestrator.core.spec import load_spec
from orchestrator.daemon.bundle import pack_bundle
from orchestrator.errors import SpecError

CORPUS = Path(__file__).resolve().parent / "corpus" / "specs"


def copy_good(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("good.yaml", "model.joblib", "requirements.lock", "golden.npz"):
        shutil.copy(CORPUS / name, folder / name)
    return folder / "good.yaml"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_fifo_spec_is_refused_not_waited_on(tmp_path: Path, command: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    code, _out, err = run_cli([command, str(fifo)], capsys)
    assert time.monotonic() - started < 10
    assert code == 2, err
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in err


def test_a_symlinked_spec_resolves_its_files_next_to_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = copy_good(tmp_path / "app")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "spec.yaml"
    os.symlink(target, link)
    spec = load_spec(link)
    assert spec.paths.model == (tmp_path / "app" / "model.joblib").resolve()
    assert spec.dir == (tmp_path / "app").resolve()
    code, _out, err = run_cli(["validate", str(link)], capsys)
    assert (code, err) == (0, ""), err


def test_a_control_character_in_a_comment_exits_2_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy_good(tmp_path)
    lines = spec.read_text().splitlines(keepends=True)
    lines.insert(2, "# a title change \x1b]0;pwned\x07 in a comment\n")
    spec.write_text("".join(lines))
    code, _out, err = run_cli(["validate", str(spec)], capsys)
    assert code == 2, err
    assert err.startswith(f"error: {spec}:3: control character U+001B at column 18"), err
    assert "internal error" not in err


def test_submit_packs_a_symlinked_specs_target_not_the_link(tmp_path: Path) -> None:
    target = copy_good(tmp_path / "app")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "spec.yaml"
    os.symlink(target, link)
    out = io.BytesIO()
    pack_bundle(link, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar}
        assert all(m.isfile() or m.isdir() for m in members.values())
        spec = tar.extractfile(members["spec.yaml"])
        assert spec is not None and spec.read() == target.read_bytes()
        model = tar.extractfile(members["model.joblib"])
        expected = (tmp_path / "app" / "model.joblib").read_bytes()
        assert model is not None and model.read() == expected


def test_submit_refuses_a_fifo_spec_before_connecting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    code = main(["submit", str(fifo), "--socket", str(tmp_path / "no-daemon.sock")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is a FIFO (named pipe), not a regular file" in err
    with pytest.raises(SpecError, match="FIFO"):
        pack_bundle(fifo, io.BytesIO())
