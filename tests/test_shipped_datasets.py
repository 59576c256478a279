"""The shipped datasets are valid, regenerate exactly, and hold what their README says."""

import importlib.util
from pathlib import Path

import numpy as np
import xarray as xr

import attnkit as ak

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, DATASETS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planted_dataset_is_valid_and_regenerates_exactly():
    shipped = ak.open_dataset(DATASETS / "synthetic" / "planted.nc")
    ak.validate(shipped)
    made = load_script("make_planted_dataset").make()
    xr.testing.assert_identical(shipped, made)


def test_head_stats_recover_the_planted_roles():
    ds = ak.open_dataset(DATASETS / "synthetic" / "planted.nc")
    st = ak.head_stats(ds).mean("sample")
    role = ds["role"].values
    expected_top = {"previous-token": "prev_mass", "next-token": "next_mass",
                    "cls-sink": "cls_mass", "sep-sink": "sep_mass"}
    for (layer, head), name in np.ndenumerate(role):
        if name in expected_top:
            assert st[expected_top[name]].values[layer, head] > 0.85, (layer, head, name)
        if name == "uniform":  # all uniform heads have (nearly) the largest entropy
            assert st.entropy.values[layer, head] > 0.99 * st.entropy.values.max()
        if name == "positional":
            assert st.self_mass.values[layer, head] > 0.25


def test_minilm_qk_file_recomputes_its_attention_and_rollout():
    """q/k stored for the classic sentences give back the stored attention and its rollout."""
    ds = ak.open_dataset(DATASETS / "minilm" / "minilm_classic_qk.nc")
    ak.validate(ds)
    lengths = ds.length.values
    q, k = ds.q.values, ds.k.values
    for s in (0, int(lengths.argmax())):
        m = int(lengths[s])
        w = np.stack([ak.attention_weights(q[s, l, :, :m], k[s, l, :, :m]) for l in range(6)])
        np.testing.assert_allclose(w, ds.attention.values[s, :, :, :m, :m], atol=1e-5)
    rows = ak.rollout_rows(q, k, [0], lengths=lengths)
    np.testing.assert_allclose(rows[:, 0], ak.rollout(ds).values[:, 0], atol=1e-5, equal_nan=True)
