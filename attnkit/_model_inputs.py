"""Token-id sequences from what users pass to model-driven functions (ablate, attribute)."""

from __future__ import annotations

import numpy as np

from .errors import value_error


def input_ids(model, inputs):
    """Token-id sequences of ``inputs`` for ``model``.

    Parameters
    ----------
    model : object
        Uses ``model.tokenize(texts)`` for str inputs and
        ``model.token_to_id(tokens)`` for a dataset.
    inputs : str, list of str, list of token-id sequences, or xarray.Dataset
        A dataset made by ``model.run``: its tokens are mapped back to ids.

    Returns
    -------
    ids : list of 1-d int64 arrays
    n_positions : int
        The longest sequence (the dataset's ``position`` size for a dataset).
    ds : xarray.Dataset or None
        The dataset, when ``inputs`` is one.
    """
    try:
        import xarray as xr

        is_ds = isinstance(inputs, xr.Dataset)
    except ImportError:  # pragma: no cover - xarray is a dependency
        is_ds = False
    if is_ds:
        if "token" not in inputs.variables or "length" not in inputs.variables:
            raise value_error("inputs", "an attention dataset with 'token' and 'length'",
                              "a dataset without them", "build it with model.run(...)")
        if not hasattr(model, "token_to_id"):
            raise TypeError("inputs: a dataset needs a model with token_to_id(tokens) to map its "
                            "tokens back to ids, got a model without it. Fix: pass the token-id "
                            "sequences instead")
        tokens = inputs["token"].values
        lengths = inputs["length"].values
        ids = [np.asarray(model.token_to_id(tokens[i, : int(lengths[i])]), dtype=np.int64)
               for i in range(tokens.shape[0])]
        return ids, int(inputs.sizes["position"]), inputs
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise value_error("inputs", "at least one sequence", "an empty list",
                          "pass a list of str or of token-id sequences")
    if all(isinstance(t, str) for t in inputs):
        if not hasattr(model, "tokenize"):
            raise TypeError("inputs: str inputs need a model with tokenize(texts), got a model "
                            "without it. Fix: pass token-id sequences")
        ids = [np.asarray(s, dtype=np.int64) for s in model.tokenize(inputs)]
    else:
        ids = []
        for i, seq in enumerate(inputs):
            a = np.asarray(seq)
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise TypeError(f"inputs[{i}]: expected a 1-d sequence of int token ids, got "
                                f"{a.dtype} {a.shape}. Fix: pass all str or all id sequences")
            ids.append(a.astype(np.int64))
    return ids, max(s.size for s in ids), None
