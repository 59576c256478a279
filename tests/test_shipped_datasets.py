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
