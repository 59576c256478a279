"""``attnkit attribute``: add gradient attributions to a MiniLM attention dataset."""

from __future__ import annotations

import time

import click
import numpy as np

from attnkit.attribution import BASELINES, IMAGE_ATTRIBUTION_METHODS, METHOD_DIM
from attnkit.models._vit_attribution import IMAGE_BASELINES

from ._common import (UserError, dataset_argument, in_place_target, merge_methods,
                      progress_quiet_option, user_errors)

#: What ``attnkit attribute`` computes when no --method is given (text, images).
DEFAULT_METHODS = ("input_x_gradient", "integrated_gradients", "grad_rollout")
IMAGE_DEFAULT_METHODS = ("input_x_gradient", "grad_rollout", "gradcam")


@click.command()
@dataset_argument
@click.option("-m", "--method", "methods", multiple=True,
              type=click.Choice(IMAGE_ATTRIBUTION_METHODS),
              help="Attribution method; repeat for several. Default: "
                   f"{', '.join(DEFAULT_METHODS)} (text); {', '.join(IMAGE_DEFAULT_METHODS)} "
                   "(images; gradcam is for images only).")
@click.option("--baseline", type=click.Choice(tuple(dict.fromkeys(BASELINES + IMAGE_BASELINES))),
              default="zero", show_default=True,
              help="Integrated gradients' baseline. Text: zero word embeddings, or [MASK] on every "
                   "token but [CLS]/[SEP]. Images: zero normalised pixels (the mean colour), or "
                   "black.")
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True,
              help="Integrated gradients' path points.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Inputs (or path points) per forward/backward pass (default 32 sentences, "
                   "8 images).")
@click.option("--replace", is_flag=True, help="Drop attributions already in the dataset.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Write here instead of rewriting DATASET (atomically) in place.")
@progress_quiet_option
@user_errors
def attribute(dataset, methods, baseline, steps, batch_size, replace, output, quiet):
    """Add gradient attributions (sample, position, attribution_method) to DATASET.

    DATASET is a .nc or .zarr file written by `attnkit compute`. Each method
    scores every token for T = <r(x'), r(x)/|r(x)|>, the model's read-out
    projected on its own direction (MiniLM: the mean-pooled last hidden state;
    SaliencyViT: the pre-sigmoid saliency logits): input_x_gradient,
    integrated_gradients (the completeness error is printed), gradient_norm,
    grad_rollout (Chefer's rule read at the model's read-out) and, for images,
    gradcam; image scores are per patch. Methods already in the file are
    recomputed, others kept.

    \b
    Example:
      attnkit attribute out/minilm.nc -m integrated_gradients --steps 64
      attnkit attribute out/vision.nc -m gradcam -m grad_rollout -o out/vision_attr.nc
    """
    import attnkit as ak

    from .compute import dataset_and_model, is_image_model

    target = in_place_target(dataset, output)
    if target.suffix.lower() not in (".nc", ".nc4", ".zarr"):
        raise UserError(f"--output: expected a name ending in .nc or .zarr, got {str(target)!r}. "
                        f"Fix: e.g. -o {target.with_suffix('.nc')}")
    ds, model = dataset_and_model(dataset, "ak.attribute")
    image = is_image_model(model)
    methods = tuple(dict.fromkeys(methods)) or (IMAGE_DEFAULT_METHODS if image
                                                 else DEFAULT_METHODS)
    batch_size = batch_size or (8 if image else 32)
    start = time.perf_counter()
    scores = ak.attribute(model, ds, method=methods, baseline=baseline, steps=steps,
                          batch_size=batch_size, progress=not quiet)
    seconds = time.perf_counter() - start
    ds = merge_methods(ds, scores, METHOD_DIM, replace=replace, same={
        "target": "all attributions of a dataset explain one target; pass --replace"})
    ak.save_dataset(ds, target)
    if quiet:
        return
    for m in methods:
        values = scores.sel({METHOD_DIM: m}).values
        click.echo(f"{m}: mean {np.nanmean(values):.4g}, max |a| {np.nanmax(np.abs(values)):.4g} "
                   f"({int(np.isfinite(values).sum())} tokens)")
    if "integrated_gradients" in methods:
        click.echo(f"integrated gradients completeness error: at most "
                   f"{scores.attrs['completeness_relative_error']:.2%} of T(x) - T(baseline) "
                   f"({steps} steps, baseline {baseline})")
    click.echo(f"wrote {target}: {ds.sizes['sample']} {'images' if image else 'sentences'} in "
               f"{seconds:.1f} s")
