"""The shipped datasets are found from any folder: in this checkout and in an installed wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit_cli.main import cli

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_name_is_a_file_in_the_repository_datasets_folder():
    assert ak.datasets.folder().resolve() == (REPO / "datasets").resolve()
    for row in ak.datasets.describe():
        file = ak.datasets.path(row["name"])
        assert str(file) == row["file"]
        if row["kind"] == "images":
            images = sorted(file.glob("*.jpg"))
            assert len(images) == 8 and file.is_dir()
            size = sum(f.stat().st_size for f in images)
        else:
            assert file.is_file()
            size = file.stat().st_size
        assert row["size_mb"] == pytest.approx(size / 1e6, abs=0.06)
    assert ak.datasets.path() == ak.datasets.path("minilm") == REPO / "datasets/minilm/minilm.nc"


def test_every_shipped_attention_dataset_opens_and_validates():
    for row in ak.datasets.describe():
        if row["kind"] == "dataset":
            ds = ak.datasets.open(row["name"])
            ak.validate(ds)
            assert ds.sizes["sample"] >= 3
    with np.load(ak.datasets.path("planted_heads")) as tensors:
        assert set(tensors.files) >= {"q", "k", "v"}


def test_names_resolve_but_a_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ak.datasets.resolve("planted") == ak.datasets.path("planted")
    (tmp_path / "planted").write_text("mine")
    assert ak.datasets.resolve("planted") == Path("planted")
    with pytest.raises(FileNotFoundError, match="minilm, minilm_classic_qk, planted"):
        ak.datasets.resolve("nothing_here.nc")
    with pytest.raises(ValueError, match="a shipped dataset name.*got 'bert'"):
        ak.datasets.path("bert")
    with pytest.raises(ValueError, match="numpy.load"):
        ak.datasets.open("planted_heads")


def test_the_environment_variable_points_at_another_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_DATASETS", str(tmp_path))
    assert ak.datasets.folder() == tmp_path
    with pytest.raises(FileNotFoundError, match="ATTNKIT_DATASETS"):
        ak.datasets.path("minilm")
    (tmp_path / "synthetic").mkdir()
    shutil.copy(REPO / "datasets/synthetic/planted.nc", tmp_path / "synthetic/planted.nc")
    assert ak.datasets.path("planted") == tmp_path / "synthetic/planted.nc"


def test_commands_take_shipped_names_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["info", "planted"])
    assert result.exit_code == 0, result.output
    assert "sample=48, layer=4, head=6" in result.output
    result = CliRunner().invoke(cli, ["datasets", "--path", "minilm"])
    assert result.exit_code == 0 and result.output.strip() == str(ak.datasets.path("minilm"))
    result = CliRunner().invoke(cli, ["datasets", "--format", "json"])
    assert result.exit_code == 0 and '"name": "planted_heads"' in result.output
    result = CliRunner().invoke(cli, ["info", "nothing_here.nc"])
    assert result.exit_code == 2 and "attnkit datasets" in result.output


def test_analyze_with_no_argument_reads_the_shipped_default_from_any_folder(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["analyze", "--quick", "--no-equivariance", "--no-figures",
                                      "-o", "report", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "report.md").read_text()
    assert "minilm.nc" in report or "all-MiniLM-L6-v2" in report


@pytest.mark.parametrize("command", ["ablate", "attribute"])
def test_a_shipped_dataset_is_never_rewritten_in_place(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = ak.datasets.path("minilm").stat().st_mtime_ns
    result = CliRunner().invoke(cli, [command, "minilm"])
    assert result.exit_code == 2
    assert "got a shipped dataset" in result.output and "-o OUT.nc" in result.output
    assert ak.datasets.path("minilm").stat().st_mtime_ns == before


def test_an_installed_wheel_carries_the_datasets_and_finds_them(tmp_path):
    """Build the wheel offline, install it into a bare folder and use it from elsewhere."""
    wheels, target, elsewhere = (tmp_path / name for name in ("wheels", "site", "elsewhere"))
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                          str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("attnkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    for row in ak.datasets.describe():
        file = Path(row["file"])
        for one in sorted(file.glob("*.jpg")) if file.is_dir() else [file]:
            relative = one.relative_to(ak.datasets.folder()).as_posix()
            assert f"attnkit_datasets/{relative}" in packaged, relative
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("ATTNKIT_DATASETS", None)
    script = ("import attnkit as ak\n"
              "print(ak.__file__)\n"
              "print(ak.datasets.folder())\n"
              "print(ak.datasets.open('planted').sizes['sample'])\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    assert Path(out[0]).is_relative_to(target)
    assert Path(out[1]) == target / "attnkit_datasets"
    assert out[2] == "48"
    info = subprocess.run([sys.executable, "-m", "attnkit", "info", "minilm_classic_qk"],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "sample=20" in info.stdout
