"""``attnkit view``: write the self-contained HTML explorer of one sample."""

from __future__ import annotations

import click

from ._common import UserError, check_output_path, dataset_argument, quiet_option, user_errors

#: What --scores accepts besides "auto" and "none".
SCORE_NAMES = ("raw", "rollout", "flow", "grad", "impact", "attribution")


def parse_indices(option: str, values: tuple[str, ...]) -> list[int] | None:
    """``("0,2", "5")`` -> ``[0, 2, 5]``; nothing -> None (all). Negative counts from the end."""
    if not values:
        return None
    out = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise UserError(f"{option}: expected comma-separated ints, got {value!r}. "
                                f"Fix: e.g. {option} 0,2,5") from None
    if not out:
        raise UserError(f"{option}: expected at least one index, got {' '.join(values)!r}. "
                        f"Fix: e.g. {option} 0,2,5, or leave it out for all")
    return out


def parse_scores(values: tuple[str, ...]):
    """--scores: "auto" (default), "none", or names among SCORE_NAMES (commas or repeats)."""
    names = [p.strip() for v in values for p in v.split(",") if p.strip()]
    if not names or names == ["auto"]:
        return "auto"
    if names == ["none"]:
        return None
    for name in names:
        if name not in SCORE_NAMES:
            raise UserError(f"--scores: expected auto, none or names among "
                            f"{', '.join(SCORE_NAMES)}, got {name!r}. Fix: e.g. --scores "
                            f"rollout,impact")
    return names


@click.command()
@dataset_argument
@click.option("-o", "--output", type=click.Path(), default="view.html", show_default=True,
              help="The HTML file to write (.html).")
@click.option("--sample", type=int, default=0, show_default=True, metavar="N",
              help="The sample shown (counted from 0).")
@click.option("--layers", multiple=True, metavar="L[,L...]",
              help="Layers to embed, e.g. 0,2,5 (repeatable; default all).")
@click.option("--heads", multiple=True, metavar="H[,H...]",
              help="Heads to embed, e.g. 0,3 (repeatable; default all).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="Embed every weight up to N tokens (default 128); longer inputs keep the "
                   "top-k keys of each query row, and the page says so.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, metavar="K",
              help="Keys kept per query row for long inputs (default 32).")
@click.option("--scores", "scores", multiple=True, metavar="NAME[,NAME...]",
              help="Score strips: auto (default), none, or among raw, rollout, flow, grad, "
                   "impact, attribution.")
@quiet_option
@user_errors
def view(dataset, output, sample, layers, heads, max_tokens, top_k, scores, quiet):
    """Write a self-contained HTML explorer of one sample of DATASET.

    DATASET is an attention dataset (.nc or .zarr) or a shipped dataset's
    name. The page holds a head view (lines from each token to the tokens it
    attends to, one colour per head), a model view (every layer x head; click
    one to open it), token score strips (raw attention, rollout, flow,
    gradient rollout, and the dataset's ablation impacts and attributions) and,
    for image datasets, the image with a patch overlay. It works offline: no
    network request, no CDN.

    \b
    Example:
      attnkit view minilm --sample 8 -o view.html
      attnkit view out/vit.nc --layers 0,11 --heads 0,1 -o vit.html
    """
    import attnkit as ak

    path = check_output_path(output, (".html", ".htm"), "view.html")
    ds = ak.open_dataset(dataset, chunks={"sample": 1})  # lazy where dask is installed
    try:
        page = ak.view(ds, sample=sample, layers=parse_indices("--layers", layers),
                       heads=parse_indices("--heads", heads), scores=parse_scores(scores),
                       max_tokens=max_tokens, top_k=top_k)
    except ValueError as exc:  # name the option, not the Python argument
        message = str(exc)
        for name in ("sample", "layers", "heads", "scores"):
            if message.startswith(name + ":"):
                raise UserError(f"--{message}") from exc
        raise
    finally:
        ds.close()
    page.save(path)
    if quiet:
        return
    data = page.data
    click.echo(f"wrote {path} ({page.nbytes / 1e6:.2f} MB): sample {data['sample']}, "
               f"{data['n']} tokens, {len(data['layers'])} layers x {len(data['heads'])} heads, "
               f"{len(data['scores'])} score strips")
    for note in page.notes:
        click.echo(f"note: {note}")
