"""``attnkit attribute``: add gradient attributions to a MiniLM attention dataset."""

from __future__ import annotations

import time

import click
import numpy as np

from attnkit.attribution import ATTRIBUTION_METHODS, BASELINES, METHOD_DIM

from ._common import (UserError, dataset_argument, in_place_target, merge_methods,
                      progress_quiet_option, user_errors)

#: What ``attnkit attribute`` computes when no --method is given.
DEFAULT_METHODS = ("input_x_gradient", "integrated_gradients", "grad_rollout")


@click.command()
@dataset_argument
@click.option("-m", "--method", "methods", multiple=True, type=click.Choice(ATTRIBUTION_METHODS),
              default=DEFAULT_METHODS, show_default=True,
              help="Attribution method; repeat for several.")
@click.option("--baseline", type=click.Choice(BASELINES), default="zero", show_default=True,
              help="Integrated gradients' baseline: zero word embeddings, or [MASK] on every "
                   "token but [CLS]/[SEP].")
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True,
              help="Integrated gradients' path points.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Sentences (or path points) per forward/backward pass.")
@click.option("--replace", is_flag=True, help="Drop attributions already in the dataset.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Write here instead of rewriting DATASET (atomically) in place.")
@progress_quiet_option
@user_errors
def attribute(dataset, methods, baseline, steps, batch_size, replace, output, quiet):
    """Add gradient attributions (sample, position, attribution_method) to DATASET.

    DATASET is a .nc or .zarr file written by `attnkit compute` (the built-in
    MiniLM). Each method scores every token for T = <r(x'), r(x)/|r(x)|>, the
    mean-pooled last hidden state projected on its own direction:
    input_x_gradient, integrated_gradients (the completeness error is printed),
    gradient_norm, grad_rollout (Chefer's rule read at the mean read-out).
    Methods already in the file are recomputed, others kept.

    \b
    Example:
      attnkit attribute out/minilm.nc -m integrated_gradients --steps 64
    """
    import attnkit as ak

    from .compute import dataset_and_model

    target = in_place_target(dataset, output)
    if target.suffix.lower() not in (".nc", ".nc4", ".zarr"):
        raise UserError(f"--output: expected a name ending in .nc or .zarr, got {str(target)!r}. "
                        f"Fix: e.g. -o {target.with_suffix('.nc')}")
    ds, model = dataset_and_model(dataset, "ak.attribute")
    methods = tuple(dict.fromkeys(methods))
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
    click.echo(f"wrote {target}: {ds.sizes['sample']} sentences in {seconds:.1f} s")
