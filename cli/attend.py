"""``attnkit attend``: attention on saved q/k/v tensors."""

from __future__ import annotations

import time
import zipfile
import zlib
from pathlib import Path

import click
import numpy as np

from ._common import (DatasetPath, UserError, emit, format_option, quiet_option, save_npz_atomic,
                      user_errors)


def _unreadable(path: str, exc: Exception) -> UserError:
    kind = ".npz archive (np.savez)" if path.endswith(".npz") else ".npy array (np.save)"
    return UserError(f"{path}: expected a NumPy {kind} of numbers, got an unreadable file "
                     f"({exc}). Fix: save the arrays again with np.savez / np.save")


_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _np_load(path: str):
    """np.load without pickles; an unreadable file is a one-line UserError."""
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def _load(inputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    if len(inputs) == 1 and inputs[0].endswith(".npz"):
        with _np_load(inputs[0]) as data:
            missing = [name for name in ("q", "k", "v") if name not in data]
            if missing:
                raise UserError(
                    f"{inputs[0]}: expected arrays named q, k and v, missing {missing}. "
                    "Fix: save them with np.savez(path, q=q, k=k, v=v)."
                )
            try:
                return {name: data[name] for name in data.files}
            except _READ_ERRORS as exc:  # a member that is truncated, corrupt or pickled
                raise _unreadable(inputs[0], exc) from exc
    if len(inputs) == 3 and all(p.endswith(".npy") for p in inputs):
        return dict(zip(("q", "k", "v"), (_np_load(p) for p in inputs)))
    raise UserError(
        f"expected one .npz file with q, k, v or three .npy files Q K V, got {list(inputs)}. "
        "Fix: attnkit attend qkv.npz  or  attnkit attend q.npy k.npy v.npy"
    )


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=DatasetPath())
@click.option("--causal", is_flag=True, help="Each query sees only keys at or before it.")
@click.option("--mask", "mask_spec", default=None, metavar="SPEC",
              help="Mask such as 'local:256', 'strided:64|local:64', 'global:0', '~causal'; "
                   "~ before & before |, as in Python, and (parentheses).")
@click.option("--scale", type=float, default=None, help="Score scale (default 1/sqrt(d)).")
@click.option("--variant", type=click.Choice(["softmax", "linear"]), default="softmax",
              show_default=True,
              help="softmax: exact scaled dot-product attention; linear: kernelised linear "
                   "attention (elu+1 features; output only, no lse or stats).")
@click.option("--stats/--no-stats", default=True, show_default=True,
              help="Also compute per-query entropy, max, distance and per-key received attention.")
@click.option("--topk", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --stats, also keep the k most attended keys per query.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write out, lse (and stats) to this .npz file.")
@click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@format_option
@quiet_option
@user_errors
def attend(inputs, causal, mask_spec, scale, variant, stats, topk, output, backend, fmt, quiet):
    """Compute exact attention (and its statistics) on saved tensors.

    INPUTS is one .npz holding arrays q, k, v (optionally q_lengths and
    kv_lengths), or three .npy files Q K V. Shapes: q (..., n, d), k (..., m, d),
    v (..., m, dv). Prints one row per attention head: mean entropy, mean
    largest probability, mean attention distance and the most attended key.

    \b
    Example:
      attnkit attend planted_heads --causal -o out.npz   # the shipped q/k/v
    """
    import attnkit as ak

    arrays = _load(inputs)
    if variant == "linear":
        if mask_spec or scale is not None:
            raise UserError("--variant linear takes no --mask or --scale (only --causal). "
                            "Fix: drop them, or use --variant softmax.")
        return _attend_linear(arrays, causal, output, fmt, quiet, backend)
    mask = ak.masks.parse(mask_spec) if mask_spec else None
    common = dict(
        scale=scale, causal=causal, mask=mask, q_lengths=arrays.get("q_lengths"),
        kv_lengths=arrays.get("kv_lengths"), backend=backend,
    )
    # A one-row call first loads (or compiles) the same kernel specialisation,
    # so the timing below is compute alone.
    start = time.perf_counter()
    ak.attention(*(arrays[x][..., :1, :] for x in "qkv"), scale=scale, causal=causal,
                 backend=backend)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    out, lse = ak.attention(arrays["q"], arrays["k"], arrays["v"], return_lse=True, **common)
    seconds = time.perf_counter() - start
    result = {"out": out, "lse": lse}
    if stats:
        result.update(ak.attention_stats(arrays["q"], arrays["k"], topk=topk, **common))
    if output:
        save_npz_atomic(Path(output), result)
    if quiet:
        return
    q, k = arrays["q"], arrays["k"]
    batch = out.shape[:-2]
    flops = 4 * int(np.prod(batch, dtype=np.int64)) * q.shape[-2] * k.shape[-2] * q.shape[-1]
    if fmt == "table":
        click.echo(
            f"attention: q {q.shape} k {k.shape} v {arrays['v'].shape} -> out {out.shape}; "
            f"{seconds * 1e3:.1f} ms ({flops / seconds / 1e9:.1f} GFLOP/s dense-equivalent; "
            f"kernel load/compile {load_seconds:.2f} s)"
        )
    if stats:
        emit(_head_rows(result, batch), fmt)
    if output and fmt == "table":
        click.echo(f"wrote {output}")


def _attend_linear(arrays: dict, causal: bool, output, fmt: str, quiet: bool,
                   backend: str) -> None:
    import attnkit as ak

    start = time.perf_counter()
    out = ak.linear_attention(arrays["q"], arrays["k"], arrays["v"], causal=causal,
                              kv_lengths=arrays.get("kv_lengths"), backend=backend)
    seconds = time.perf_counter() - start
    if output:
        save_npz_atomic(Path(output), {"out": out})
    if quiet:
        return
    if fmt == "table":
        click.echo(f"linear attention (elu+1): q {arrays['q'].shape} -> out {out.shape}; "
                   f"{seconds * 1e3:.1f} ms (includes compilation on first use)")
        click.echo("(statistics describe softmax attention; not computed for --variant linear)")
    else:
        emit([{"variant": "linear", "out_shape": "x".join(map(str, out.shape)),
               "seconds": seconds}], fmt)
    if output and fmt == "table":
        click.echo(f"wrote {output}")


def _head_rows(result: dict, batch: tuple) -> list[dict]:
    """One row per (batch..., head): means over queries of the per-query stats."""
    rows = []
    for index in np.ndindex(*batch):
        received = result["received"][index]
        rows.append({
            "head": "/".join(map(str, index)) or "0",
            "entropy_nats": float(result["entropy"][index].mean()),
            "max_prob": float(result["max"][index].mean()),
            "distance": float(result["distance"][index].mean()),
            # -1 / 0 when nothing is attended (fully masked or no keys)
            "top_key": int(received.argmax()) if received.sum() > 0 else -1,
            "top_key_share": float(received.max() / received.sum())
            if received.sum() > 0 else 0.0,
        })
    return rows
