"""``attnkit`` command line: attend on .npz / .npy inputs, formats, output files, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose, assert_array_equal

import attnkit as ak
from attnkit_cli.main import cli
from cli_checks import assert_user_error


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def qkv(rng):
    B, H = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    n, m, d = int(rng.integers(2, 70)), int(rng.integers(2, 70)), int(rng.integers(1, 9))
    return (rng.standard_normal((B, H, n, d)), rng.standard_normal((B, H, m, d)),
            rng.standard_normal((B, H, m, d + 1)))


@pytest.fixture
def npz(tmp_path, qkv):
    q, k, v = qkv
    path = tmp_path / "qkv.npz"
    np.savez(path, q=q, k=k, v=v)
    return str(path)


def invoke(runner, *args):
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    return result


# ------------------------------------------------------------------ success
def test_attend_npz_table(runner, npz, qkv):
    q, k, v = qkv
    result = invoke(runner, "attend", npz)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("attention: q ")
    assert f"-> out {q.shape[:-1] + (v.shape[-1],)}" in lines[0]
    header = lines[1].split()
    assert header == ["head", "entropy_nats", "max_prob", "distance", "top_key", "top_key_share"]
    assert len(lines) == 2 + q.shape[0] * q.shape[1]


def test_attend_npy_json(runner, tmp_path, qkv):
    q, k, v = qkv
    paths = []
    for name, arr in zip("qkv", (q, k, v)):
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        paths.append(str(path))
    result = invoke(runner, "attend", *paths, "--causal", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    B, H = q.shape[:2]
    assert len(rows) == B * H
    st = ak.attention_stats(q, k, causal=True)
    for row, (b, h) in zip(rows, np.ndindex(B, H)):
        assert row["head"] == f"{b}/{h}"
        assert row["entropy_nats"] == pytest.approx(st["entropy"][b, h].mean(), rel=1e-12)
        assert row["max_prob"] == pytest.approx(st["max"][b, h].mean(), rel=1e-12)
        assert row["distance"] == pytest.approx(st["distance"][b, h].mean(), rel=1e-12, abs=1e-12)
        received = st["received"][b, h]
        assert row["top_key"] == int(received.argmax())
        assert row["top_key_share"] == pytest.approx(received.max() / received.sum(), rel=1e-12)


def test_attend_csv(runner, npz, qkv):
    result = invoke(runner, "attend", npz, "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "head,entropy_nats,max_prob,distance,top_key,top_key_share"
    assert len(lines) == 1 + qkv[0].shape[0] * qkv[0].shape[1]


def test_attend_output_file(runner, npz, qkv, tmp_path, rng):
    q, k, v = qkv
    out_path = tmp_path / "sub" / "result.npz"
    topk = int(rng.integers(1, 4))
    scale = float(rng.uniform(0.1, 1.0))
    result = invoke(runner, "attend", npz, "--causal", "--topk", str(topk), "--scale", str(scale),
                    "-o", str(out_path))
    assert result.exit_code == 0, result.output
    assert f"wrote {out_path}" in result.output
    assert [p.name for p in out_path.parent.iterdir()] == ["result.npz"]  # no temp file left
    with np.load(out_path) as saved:
        want, want_lse = ak.attention(q, k, v, causal=True, scale=scale, return_lse=True)
        assert_array_equal(saved["out"], want)
        assert_array_equal(saved["lse"], want_lse)
        st = ak.attention_stats(q, k, causal=True, scale=scale, topk=topk)
        assert set(saved.files) == {"out", "lse", *st}
        for name in st:
            assert_array_equal(saved[name], st[name])


def test_attend_no_stats_quiet(runner, npz, qkv, tmp_path):
    out_path = tmp_path / "r.npz"
    result = invoke(runner, "attend", npz, "--no-stats", "-q", "-o", str(out_path))
    assert result.exit_code == 0
    assert result.output == ""
    with np.load(out_path) as saved:
        assert set(saved.files) == {"out", "lse"}
        assert_array_equal(saved["out"], ak.attention(*qkv))


def test_attend_mask_matches_library(runner, npz, qkv, tmp_path, rng):
    q, k, v = qkv
    w = int(rng.integers(1, 6))
    out_path = tmp_path / "masked.npz"
    result = invoke(runner, "attend", npz, "--mask", f"local:{w}&causal", "-o", str(out_path),
                    "--format", "json")
    assert result.exit_code == 0, result.output
    mask = ak.masks.local(w) & ak.masks.causal()
    with np.load(out_path) as saved:
        assert_array_equal(saved["out"], ak.attention(q, k, v, mask=mask))
        assert_array_equal(saved["entropy"], ak.attention_stats(q, k, mask=mask)["entropy"])
        assert not np.allclose(saved["out"], ak.attention(q, k, v))


def test_attend_lengths_from_npz(runner, tmp_path, qkv, rng):
    q, k, v = qkv
    B, n, m = q.shape[0], q.shape[-2], k.shape[-2]
    ql, kl = rng.integers(1, n + 1, size=B), rng.integers(1, m + 1, size=B)
    path = tmp_path / "padded.npz"
    np.savez(path, q=q, k=k, v=v, q_lengths=ql, kv_lengths=kl)
    out_path = tmp_path / "r.npz"
    result = invoke(runner, "attend", str(path), "-o", str(out_path), "-q")
    assert result.exit_code == 0, result.output
    with np.load(out_path) as saved:
        assert_array_equal(saved["out"], ak.attention(q, k, v, q_lengths=ql, kv_lengths=kl))


# ------------------------------------------------------------------- errors
def test_bad_mask_spec(runner, npz):
    line = assert_user_error(invoke(runner, "attend", npz, "--mask", "bogus:3"), "mask spec", "bogus:3")
    assert "Fix:" in line
    assert_user_error(invoke(runner, "attend", npz, "--mask", "local:x"), "integer argument for 'local'")
    assert_user_error(invoke(runner, "attend", npz, "--mask", "local:0"), "window")


def test_missing_file(runner, tmp_path):
    missing = tmp_path / "nope.npz"
    assert_user_error(invoke(runner, "attend", str(missing)), "does not exist")


def test_npz_without_v(runner, tmp_path, rng):
    path = tmp_path / "qk.npz"
    np.savez(path, q=rng.standard_normal((3, 4)), k=rng.standard_normal((5, 4)))
    assert_user_error(invoke(runner, "attend", str(path)), "expected arrays named q, k and v", "'v'")


@pytest.mark.parametrize("count", [2, 4])
def test_wrong_number_of_inputs(runner, tmp_path, rng, count):
    paths = []
    for i in range(count):
        path = tmp_path / f"x{i}.npy"
        np.save(path, rng.standard_normal((3, 4)))
        paths.append(str(path))
    assert_user_error(invoke(runner, "attend", *paths), "expected one .npz file with q, k, v or three .npy files")


def test_no_inputs(runner):
    result = invoke(runner, "attend")
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "Missing argument" in result.output


def test_library_errors_become_one_line(runner, tmp_path, rng):
    path = tmp_path / "bad.npz"
    np.savez(path, q=rng.standard_normal((2, 5, 4)), k=rng.standard_normal((2, 6, 3)),
             v=rng.standard_normal((2, 6, 3)))
    assert_user_error(invoke(runner, "attend", str(path)), "k: expected shape last dim d = 4")
    path = tmp_path / "int.npz"
    np.savez(path, q=rng.integers(0, 5, (2, 5, 4)), k=rng.standard_normal((2, 6, 4)),
             v=rng.standard_normal((2, 6, 4)))
    assert_user_error(invoke(runner, "attend", str(path)), "q: expected float16", "int64")


def test_negative_topk(runner, npz):
    result = invoke(runner, "attend", npz, "--topk", "-1")
    assert result.exit_code == 2 and "Traceback" not in result.output


# -------------------------------------------------------------- help/version
def test_help(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    assert "attend" in result.output and "Compute attention on saved q/k/v tensors." in result.output
    result = invoke(runner, "attend", "--help")
    assert result.exit_code == 0
    for option in ("--causal", "--mask", "--topk", "--format", "--output"):
        assert option in result.output


def test_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert ak.__version__ in result.output


def test_unknown_command(runner):
    result = invoke(runner, "nonsense")
    assert result.exit_code == 2 and "Traceback" not in result.output


CHECK_IMPORTS = """
import sys
import attnkit_cli.main
from attnkit_cli.main import cli
from click.testing import CliRunner
runner = CliRunner()
for args in (["--help"], ["--version"], ["attend", "--help"]):
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, (args, result.output)
bad = sorted(m for m in ("numba", "attnkit.kernels", "attnkit.kernels.cpu") if m in sys.modules)
print("HEAVY:" + ",".join(bad))
"""


def test_cli_help_does_not_import_numba():
    proc = subprocess.run([sys.executable, "-c", CHECK_IMPORTS], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:", proc.stdout


def test_python_dash_m(tmp_path, rng):
    for module in ("attnkit", "attnkit_cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert ak.__version__ in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "attnkit", "attend", str(tmp_path / "missing.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def test_fully_masked_head_reports_no_top_key(runner, tmp_path, rng):
    """A head whose keys are all padding attends to nothing: top_key -1, share 0."""
    q, k, v = (rng.standard_normal((2, 6, 4)).astype(np.float32) for _ in range(3))
    path = tmp_path / "masked.npz"
    np.savez(path, q=q, k=k, v=v, kv_lengths=np.array([0, 6]))
    result = invoke(runner, "attend", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["top_key"] for r in rows][0] == -1 and rows[0]["top_key_share"] == 0.0
    assert rows[1]["top_key"] >= 0 and 0 < rows[1]["top_key_share"] <= 1


def test_attend_linear_variant_matches_library(runner, tmp_path, rng):
    q, k, v = (rng.standard_normal((2, 9, 4)) for _ in range(3))
    path = tmp_path / "qkv.npz"
    np.savez(path, q=q, k=k, v=v)
    out_path = tmp_path / "lin.npz"
    result = invoke(runner, "attend", str(path), "--variant", "linear", "--causal",
                    "-o", str(out_path))
    assert result.exit_code == 0, result.output
    assert "not computed for --variant linear" in result.output
    with np.load(out_path) as saved:
        assert set(saved.files) == {"out"}
        assert_allclose(saved["out"], ak.linear_attention(q, k, v, causal=True), rtol=1e-12)


def test_attend_linear_variant_passes_lengths_and_backend(runner, tmp_path, rng):
    q, k, v = (rng.standard_normal((2, 9, 4)) for _ in range(3))
    path = tmp_path / "qkv.npz"
    np.savez(path, q=q, k=k, v=v, kv_lengths=np.array([9, 5]))
    out_path = tmp_path / "lin.npz"
    result = invoke(runner, "attend", str(path), "--variant", "linear", "-o", str(out_path))
    assert result.exit_code == 0, result.output
    with np.load(out_path) as saved:
        assert_allclose(saved["out"], ak.linear_attention(q, k, v, kv_lengths=[9, 5]), rtol=1e-12)
    result = invoke(runner, "attend", str(path), "--variant", "linear", "--backend", "cuda")
    assert_user_error(result, "backend='cuda': linear_attention has no CUDA implementation")


def test_attend_linear_variant_rejects_mask(runner, npz):
    result = invoke(runner, "attend", npz, "--variant", "linear", "--mask", "local:3")
    assert_user_error(result, "--variant linear takes no --mask")
