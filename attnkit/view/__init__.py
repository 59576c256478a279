"""The self-contained HTML explorer of one sample: :func:`view` and :class:`View`.

One page, one file, no network: the head view (lines from each token to the
tokens it attends to, one colour per head), the model view (every layer x
head as a thumbnail), score strips (raw attention, rollout, flow, gradient
rollout, and the dataset's ablation impacts and attributions, token by token)
and, for image datasets (a ``grid`` attr), the image with a patch overlay.
The script, the style and the data are inline; see ``docs/view.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._page import page
from ._payload import (DEFAULT_MAX_TOKENS, DEFAULT_TOP_K, FLOW_MAX_TOKENS, SCORE_CHOICES,
                       build_payload, decode_attention)

__all__ = ["view", "View", "decode_attention", "DEFAULT_MAX_TOKENS", "DEFAULT_TOP_K",
           "FLOW_MAX_TOKENS", "SCORE_CHOICES"]

#: Height of the frame a notebook shows the page in.
NOTEBOOK_HEIGHT = 760


class View:
    """An HTML explorer of one sample, made by :func:`view`.

    Attributes
    ----------
    data : dict
        What the page embeds (tokens, quantised weights, scores, notes), JSON-ready.
    html : str
        The complete self-contained page.
    """

    def __init__(self, data: dict):
        self.data = data
        self.html = page(data)

    @property
    def nbytes(self) -> int:
        """Size of the page in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    @property
    def notes(self) -> list[str]:
        """What the page leaves out (top-k rows, unchosen layers or heads, skipped scores)."""
        return list(self.data["notes"])

    def save(self, path) -> Path:
        """Write the page to ``path`` (atomically: never a partial file) and return the path.

        Examples
        --------
        >>> import os, tempfile, numpy as np, attnkit as ak
        >>> v = ak.view(np.full((1, 1, 2, 2), 0.5))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = v.save(os.path.join(tmp, "view.html"))
        ...     path.name, path.stat().st_size == v.nbytes
        ('view.html', True)
        """
        from ..data import atomic_file

        path = Path(os.fspath(path))
        with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(self.html)
        return path

    def _repr_html_(self) -> str:
        """The page in an isolated frame, for Jupyter (its ids and style stay inside)."""
        import html

        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
                f'style="width:100%;height:{NOTEBOOK_HEIGHT}px;border:1px solid #ddd" '
                f'title="attnkit view"></iframe>')

    def __repr__(self) -> str:
        d = self.data
        return (f"<attnkit View: sample {d['sample']}, {d['n']} tokens, {len(d['layers'])} "
                f"layers x {len(d['heads'])} heads, {d['attention']['mode']}, "
                f"{self.nbytes / 1e6:.2f} MB>")


def view(ds, sample=0, layers=None, heads=None, scores="auto", *, max_tokens=None,
         top_k=None) -> View:
    """A self-contained HTML explorer of one sample's attention.

    Parameters
    ----------
    ds : xarray.Dataset or array_like
        A schema-1 attention dataset (``attention``, ``length``; optional
        ``token``, ``gradient``, ``impact``, ``attribution``; for images a
        ``grid`` attr and optional ``image`` and ``saliency``), or one sample's
        attention (layer, head, query, key). Only the chosen sample is read.
    sample : int
        The sample shown.
    layers, heads : int or sequence of int, optional
        The layers and heads embedded (default: all; negative counts from the end).
    scores : "auto", None or sequence of str
        Score strips: kinds of :func:`attnkit.attention_scores` ("raw", "rollout",
        "flow", "grad") computed on the sample, and "impact" / "attribution"
        read from the dataset. "auto": raw, rollout, flow (up to
        ``FLOW_MAX_TOKENS`` tokens), grad where the dataset has ``gradient``,
        and every stored impact and attribution. None: no strips.
    max_tokens : int, optional
        Inputs up to this many tokens embed every weight (default
        ``DEFAULT_MAX_TOKENS`` = 128); longer ones only the ``top_k`` largest of
        every query row, and the page says so.
    top_k : int, optional
        Keys kept per row when the input is longer than ``max_tokens``
        (default ``DEFAULT_TOP_K`` = 32); given for a shorter input, it applies too.

    Returns
    -------
    View
        ``.save(path)`` writes the page; in Jupyter it shows itself
        (``_repr_html_``); ``.data`` is what the page embeds, ``.nbytes`` its size.

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((2, 3, 5, 5)); a /= a.sum(-1, keepdims=True)   # 2 layers, 3 heads
    >>> ds = ak.from_arrays(a, tokens=["[CLS]", "the", "<b>cat</b>", "sat", "[SEP]"])
    >>> v = ak.view(ds, layers=[1])
    >>> v.data["tokens"][2], v.data["layers"], v.data["attention"]["mode"]
    ('<b>cat</b>', [1], 'dense')
    >>> [s["name"] for s in v.data["scores"]]
    ['raw', 'rollout', 'flow']
    >>> "<b>cat" in v.html                 # tokens are data, never markup
    False
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     size = v.save(os.path.join(tmp, "view.html")).stat().st_size
    >>> size < 100_000
    True
    """
    return View(build_payload(ds, sample=sample, layers=layers, heads=heads, scores=scores,
                              max_tokens=max_tokens, top_k=top_k))
