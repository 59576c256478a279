"""Make datasets/synthetic/planted.nc: attention with planted, known head roles.

Every head of every layer has one role, mixed with a little Dirichlet noise
(weight NOISE) so no row is exactly one-hot:

* previous-token: query i attends to key i-1 (key 0 for i = 0);
* next-token: query i attends to key i+1 (the last key for the last query);
* [CLS]-sink: every query attends to key 0;
* [SEP]-sink: every query attends to the last valid key;
* positional: a Gaussian window of width 1.5 around the query;
* uniform: every valid key equally.

The roles are stored as the ``role`` (layer, head) variable, so tests and
examples can check that head statistics, rollout and the plots recover them.
Tokens are made-up words framed by [CLS] ... [SEP] with some punctuation.

Run ``python datasets/make_planted_dataset.py`` (deterministic: fixed seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import attnkit as ak

SEED = 20261122
N_SAMPLES = 48
N_LAYERS = 4
N_HEADS = 6
MIN_LEN, MAX_LEN = 6, 32
NOISE = 0.1
ROLES = ("previous-token", "next-token", "cls-sink", "sep-sink", "positional", "uniform")
WORDS = ("alpha", "beta", "gamma", "delta", "kappa", "lambda", "omega", "sigma", "theta", "zeta")
PUNCT = (",", ".", ";", "!", "?")


def pattern(role: str, length: int) -> np.ndarray:
    """The noiseless (length, length) attention of a head with ``role``."""
    idx = np.arange(length)
    a = np.zeros((length, length))
    if role == "previous-token":
        a[idx, np.maximum(idx - 1, 0)] = 1
    elif role == "next-token":
        a[idx, np.minimum(idx + 1, length - 1)] = 1
    elif role == "cls-sink":
        a[:, 0] = 1
    elif role == "sep-sink":
        a[:, length - 1] = 1
    elif role == "positional":
        a = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / 1.5) ** 2)
    elif role == "uniform":
        a[:] = 1
    else:  # pragma: no cover - ROLES is fixed
        raise ValueError(role)
    return a / a.sum(1, keepdims=True)


def sentence(rng, length: int) -> list[str]:
    inner = [str(rng.choice(PUNCT)) if rng.random() < 0.2 else str(rng.choice(WORDS))
             for _ in range(length - 2)]
    return ["[CLS]"] + inner + ["[SEP]"]


def make(seed: int = SEED):
    rng = np.random.default_rng(seed)
    roles = np.array([[ROLES[(layer + head) % len(ROLES)] for head in range(N_HEADS)]
                      for layer in range(N_LAYERS)], dtype=object)
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=N_SAMPLES)
    samples, tokens, grads = [], [], []
    for length in lengths:
        a = np.empty((N_LAYERS, N_HEADS, length, length))
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                noise = rng.dirichlet(np.ones(length), size=length)
                a[layer, head] = (1 - NOISE) * pattern(roles[layer, head], length) + NOISE * noise
        samples.append(a.astype(np.float32))
        grads.append(rng.standard_normal(a.shape).astype(np.float32))
        tokens.append(sentence(rng, int(length)))
    ds = ak.from_arrays(samples, tokens=tokens, gradient=grads, model="synthetic planted heads",
                        source=f"datasets/make_planted_dataset.py seed={seed}")
    ds["role"] = (("layer", "head"), roles)
    ds["role"].attrs["description"] = "planted role of each head: " + ", ".join(ROLES)
    ds.attrs["noise"] = NOISE
    return ds


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "synthetic" / "planted.nc"
    out.parent.mkdir(exist_ok=True)
    ds = make()
    ak.save_dataset(ds, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {ds.sizes['sample']} samples, "
          f"{N_LAYERS} layers x {N_HEADS} heads, lengths {int(ds.length.min())}..{int(ds.length.max())}")
