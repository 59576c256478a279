"""``attnkit import``: bring in attention saved from a Hugging Face model (output_attentions)."""

from __future__ import annotations

import importlib.util

import click

from attnkit.data.importers import READOUTS

from ._common import UserError, check_output_path, quiet_option, user_errors


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokens", type=click.Path(exists=True, dir_okay=False), required=True,
              metavar="T", help="Tokens of each sample, special tokens included: a .json list "
                                "of token lists, or text with one sample per line, tokens "
                                "separated by spaces.")
@click.option("--attention-mask", type=click.Path(exists=True, dir_okay=False), required=True,
              metavar="M", help="The tokenizer's attention_mask (batch, n), right padded: "
                                ".npy, .npz (one array, or one named attention_mask) or .json.")
@click.option("-o", "--output", type=click.Path(), required=True, metavar="DS",
              help="Where to write the dataset: .nc (netCDF4) or .zarr.")
@click.option("--model", default="", metavar="NAME", help="Model name, stored as the model attr "
                                          "(e.g. bert-base-uncased).")
@click.option("--readout", type=click.Choice(READOUTS), default=None,
              help="How the model reads its output, stored as the readout attr "
                   "(the default target of scores).")
@click.option("--atol", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Tolerance on the row sums [default: 1e-3; 1e-2 for bfloat16 arrays].")
@quiet_option
@user_errors
def import_(file, tokens, attention_mask, output, model, readout, atol, quiet):
    """Check attention saved from a Hugging Face model and write it as a dataset.

    FILE is the output_attentions tuple of one batch: an .npz with one array
    per layer, a stacked .npy (layer, batch, heads, n, n), a .safetensors
    file, or a .pt file (needs torch). Each sample's length comes from the
    mask; the weights must be finite, non-negative and sum to 1 over the
    valid keys of every row (they are then renormalised). Nothing is written
    unless every check passes.

    \b
    Example:
      attnkit import attn.npz --tokens tokens.json --attention-mask mask.npy \\
          -o bert.nc --model bert-base-uncased --readout cls
    """
    import attnkit as ak

    path = check_output_path(output, (".nc", ".zarr"), "attention.nc")
    if path.suffix.lower() == ".zarr" and importlib.util.find_spec("zarr") is None:
        raise UserError(f"--output: writing {path} needs zarr, which is not installed. "
                        "Fix: pip install 'attnkit[zarr]', or write a .nc file")
    try:
        ds = ak.from_hf_attentions(file, tokens=tokens, attention_mask=attention_mask,
                                   model=model, readout=readout, atol=atol)
    except ImportError as exc:  # .safetensors or .pt without their package
        raise UserError(str(exc)) from exc
    ak.save_dataset(ds, path)
    if quiet:
        return
    lengths = ds["length"].values
    click.echo(f"wrote {path}: {ds.sizes['sample']} samples, {ds.sizes['layer']} layers, "
               f"{ds.sizes['head']} heads, max length {int(lengths.max())} "
               f"(shortest {int(lengths.min())}), from {file}")
