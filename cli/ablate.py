"""``attnkit ablate``: add leave-one-out impacts to a dataset of a built-in model."""

from __future__ import annotations

import time

import click
import numpy as np

from ._common import (dataset_argument, in_place_target, merge_methods, progress_quiet_option,
                      user_errors)


@click.command()
@dataset_argument
@click.option("-m", "--method", "methods", multiple=True,
              type=click.Choice(["delete", "mask", "zero", "key_mask"]),
              help="Ablation method; repeat for several. Text: delete, mask, zero (default "
                   "delete and mask). Images: mask (occlusion), key_mask (default both).")
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default="cosine",
              show_default=True,
              help="Change of the output (sentence embedding, or saliency logits).")
@click.option("--special", type=click.Choice(["nan", "compute"]), default="nan", show_default=True,
              help="Impact of [CLS]/[SEP]: NaN, or computed like any token.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Ablated inputs per forward pass (default 64 sentences, 16 images).")
@click.option("--replace", is_flag=True, help="Drop impacts already in the dataset.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Write here instead of rewriting DATASET (atomically) in place.")
@progress_quiet_option
@user_errors
def ablate(dataset, methods, metric, special, batch_size, replace, output, quiet):
    """Add leave-one-out impacts (sample, position, method) to DATASET.

    DATASET is a .nc or .zarr file written by `attnkit compute`. MiniLM: each
    token is deleted, replaced by [MASK] or has its embedding zeroed, one at
    a time; its impact is the change of the sentence embedding (cosine
    distance by default). SaliencyViT: each patch is occluded (its pixels set
    to the normalisation mean, "mask") or removed as a key in every layer
    ("key_mask"); the impact is the change of the saliency logits. Methods
    already in the file are recomputed, others kept.

    \b
    Example:
      attnkit ablate out/minilm.nc -m delete -m mask
      attnkit ablate out/vision.nc -m mask -o out/vision_impacts.nc
    """
    import attnkit as ak

    from .compute import dataset_and_model, is_image_model

    target = in_place_target(dataset, output)
    ds, model = dataset_and_model(dataset, "ak.ablate")
    image = is_image_model(model)
    methods = tuple(dict.fromkeys(methods)) or (("mask", "key_mask") if image
                                                 else ("delete", "mask"))
    batch_size = batch_size or (16 if image else 64)
    start = time.perf_counter()
    impact = ak.ablate(model, ds, method=methods, metric=metric, special=special,
                       batch_size=batch_size, progress=not quiet)
    seconds = time.perf_counter() - start
    ds = merge_methods(ds, impact, "method", replace=replace, same={
        "metric": "pass the same --metric, or --replace to drop the old impacts",
        "special": "pass the matching --special, or --replace"})
    ak.save_dataset(ds, target)
    if quiet:
        return
    forwards = int(np.isfinite(impact.values).sum())
    for m in methods:
        values = impact.sel({"method": m}).values
        click.echo(f"{m}: mean impact {np.nanmean(values):.4g}, max {np.nanmax(values):.4g} "
                   f"({int(np.isfinite(values).sum())} tokens)")
    click.echo(f"wrote {target}: {forwards} ablated forwards in {seconds:.1f} s "
               f"({forwards / max(seconds, 1e-9):.0f}/s)")
