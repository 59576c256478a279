"""Attention masks: which (query, key) pairs may attend.

A mask is a predicate ``allowed(q_idx, kv_idx)`` over positions. Masks combine
with ``&`` (both allow), ``|`` (either allows) and ``~`` (negation)::

    import attnkit as ak
    sliding = ak.masks.local(256) & ak.masks.causal()      # last 256 tokens
    longformer = ak.masks.local(64) | ak.masks.global_tokens([0])

The kernels never build an n x m boolean matrix. Each mask compiles to a short
postfix program (:meth:`Mask.program`) that the kernels evaluate per element,
and that also classifies whole tiles as *empty* (skipped, never computed),
*full* (no per-element test) or *partial*. ``Mask.dense`` gives the same mask
as a NumPy array, for references and plots.

Padding is not a mask: pass ``q_lengths`` / ``kv_lengths`` to the attention
functions instead.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from .errors import nonnegative_int, positive_int, value_error

__all__ = [
    "Mask",
    "full",
    "causal",
    "local",
    "strided",
    "global_tokens",
    "block_sparse",
    "random",
    "parse",
]

# Opcodes of the mask program. Each row of the program is (opcode, a, b, c, d).
# Keep in sync with attnkit/kernels/cpu/masking.py (and the CUDA twin).
OP_ALL = 0
OP_CAUSAL = 1  # a = offset: allowed if kv <= q + offset
OP_LOCAL = 2  # a = window: allowed if |q - kv| < window
OP_STRIDED = 3  # a = stride: allowed if (q - kv) % stride == 0
OP_GLOBAL = 4  # a = flags offset, b = prefix-count offset, c = number of flags
OP_BLOCK = 5  # a = block, b = layout offset, c = layout rows, d = layout cols
OP_AND = 6
OP_OR = 7
OP_NOT = 8

#: Deepest expression the kernels can evaluate (size of their fixed stack).
MAX_STACK_DEPTH = 16


class Mask:
    """A boolean predicate over (query position, key position).

    Subclasses implement :meth:`_dense` and :meth:`_emit`. Users build masks
    with the factory functions of this module and combine them with
    ``&``, ``|`` and ``~``.
    """

    def __and__(self, other: "Mask") -> "Mask":
        return _Combine(OP_AND, self, _as_mask(other, "&"))

    def __or__(self, other: "Mask") -> "Mask":
        return _Combine(OP_OR, self, _as_mask(other, "|"))

    def __invert__(self) -> "Mask":
        return _Not(self)

    def dense(self, n: int, m: int | None = None) -> np.ndarray:
        """The mask as an ``(n, m)`` boolean NumPy array (True = may attend).

        Examples
        --------
        >>> import attnkit as ak
        >>> ak.masks.causal().dense(3).astype(int)
        array([[1, 0, 0],
               [1, 1, 0],
               [1, 1, 1]])
        """
        m = n if m is None else m
        self._validate(n, m)
        qi = np.arange(n)[:, None]
        kj = np.arange(m)[None, :]
        return np.broadcast_to(self._dense(qi, kj, n, m), (n, m)).copy()

    def program(self, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Compile the mask for an ``n``-query, ``m``-key problem.

        Returns
        -------
        ops : ndarray of int64, shape (n_ops, 5)
            Postfix program, one ``(opcode, a, b, c, d)`` row per node.
        aux : ndarray of int64, shape (n_aux,)
            Side data (global-token flags, block layouts) the ops point into.

        Examples
        --------
        >>> import attnkit as ak
        >>> ops, aux = (ak.masks.causal() & ak.masks.local(4)).program(8, 8)
        >>> ops[:, 0].tolist()   # causal, local, and
        [1, 2, 6]
        """
        self._validate(n, m)
        ops: list[list[int]] = []
        aux: list[np.ndarray] = []
        self._emit(ops, aux, [0], n, m)
        depth = self._depth()
        if depth > MAX_STACK_DEPTH:
            raise value_error(
                "mask", f"an expression at most {MAX_STACK_DEPTH} levels deep",
                f"{depth} levels", "simplify the mask expression",
            )
        ops_arr = np.asarray(ops, dtype=np.int64).reshape(-1, 5)
        aux_arr = np.concatenate(aux).astype(np.int64) if aux else np.zeros(1, np.int64)
        return ops_arr, aux_arr

    # ------------------------------------------------------------------ hooks
    def _validate(self, n: int, m: int) -> None:
        """Raise if the mask cannot apply to an n x m problem."""

    def _depth(self) -> int:
        return 1

    def _dense(self, qi, kj, n, m):  # pragma: no cover - abstract
        raise NotImplementedError

    def _emit(self, ops, aux, aux_len, n, m):  # pragma: no cover - abstract
        raise NotImplementedError


def _as_mask(other, op: str) -> Mask:
    if not isinstance(other, Mask):
        raise TypeError(
            f"mask {op} {type(other).__name__}: both operands must be attnkit masks. "
            "Fix: build them with attnkit.masks (causal(), local(w), ...)."
        )
    return other


class _Combine(Mask):
    def __init__(self, op: int, left: Mask, right: Mask) -> None:
        self.op, self.left, self.right = op, left, right

    def __repr__(self) -> str:
        sym = "&" if self.op == OP_AND else "|"
        return f"({self.left!r} {sym} {self.right!r})"

    def _validate(self, n, m):
        self.left._validate(n, m)
        self.right._validate(n, m)

    def _depth(self):
        return 1 + max(self.left._depth(), self.right._depth())

    def _dense(self, qi, kj, n, m):
        a = self.left._dense(qi, kj, n, m)
        b = self.right._dense(qi, kj, n, m)
        return (a & b) if self.op == OP_AND else (a | b)

    def _emit(self, ops, aux, aux_len, n, m):
        self.left._emit(ops, aux, aux_len, n, m)
        self.right._emit(ops, aux, aux_len, n, m)
        ops.append([self.op, 0, 0, 0, 0])


class _Not(Mask):
    def __init__(self, inner: Mask) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"~{self.inner!r}"

    def _validate(self, n, m):
        self.inner._validate(n, m)

    def _depth(self):
        return 1 + self.inner._depth()

    def _dense(self, qi, kj, n, m):
        return ~self.inner._dense(qi, kj, n, m)

    def _emit(self, ops, aux, aux_len, n, m):
        self.inner._emit(ops, aux, aux_len, n, m)
        ops.append([OP_NOT, 0, 0, 0, 0])


class _Full(Mask):
    def __repr__(self) -> str:
        return "full()"

    def _dense(self, qi, kj, n, m):
        return np.ones((n, m), dtype=bool)

    def _emit(self, ops, aux, aux_len, n, m):
        ops.append([OP_ALL, 0, 0, 0, 0])


class _Causal(Mask):
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __repr__(self) -> str:
        return f"causal(offset={self.offset})" if self.offset else "causal()"

    def _dense(self, qi, kj, n, m):
        return kj <= qi + self.offset

    def _emit(self, ops, aux, aux_len, n, m):
        ops.append([OP_CAUSAL, self.offset, 0, 0, 0])


class _Local(Mask):
    def __init__(self, window: int) -> None:
        self.window = window

    def __repr__(self) -> str:
        return f"local({self.window})"

    def _dense(self, qi, kj, n, m):
        return np.abs(qi - kj) < self.window

    def _emit(self, ops, aux, aux_len, n, m):
        ops.append([OP_LOCAL, self.window, 0, 0, 0])


class _Strided(Mask):
    def __init__(self, stride: int) -> None:
        self.stride = stride

    def __repr__(self) -> str:
        return f"strided({self.stride})"

    def _dense(self, qi, kj, n, m):
        return (qi - kj) % self.stride == 0

    def _emit(self, ops, aux, aux_len, n, m):
        ops.append([OP_STRIDED, self.stride, 0, 0, 0])


class _GlobalTokens(Mask):
    def __init__(self, index: np.ndarray) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"global_tokens({self.index.tolist()})"

    def _validate(self, n, m):
        limit = max(n, m)
        if self.index.size and (self.index.min() < 0 or self.index.max() >= limit):
            raise value_error(
                "global_tokens", f"positions in [0, {limit})", self.index.tolist(),
                "pass positions inside the sequence (negative indices are not wrapped)",
            )

    def _flags(self, length: int) -> np.ndarray:
        flags = np.zeros(length, dtype=bool)
        flags[self.index] = True
        return flags

    def _dense(self, qi, kj, n, m):
        flags = self._flags(max(n, m))
        return flags[qi] | flags[kj]

    def _emit(self, ops, aux, aux_len, n, m):
        length = max(n, m)
        flags = self._flags(length).astype(np.int64)
        prefix = np.concatenate([[0], np.cumsum(flags)]).astype(np.int64)
        flags_at = aux_len[0]
        prefix_at = flags_at + length
        aux.extend([flags, prefix])
        aux_len[0] = prefix_at + length + 1
        ops.append([OP_GLOBAL, flags_at, prefix_at, length, 0])


class _BlockSparse(Mask):
    def __init__(self, layout: np.ndarray, block: int) -> None:
        self.layout, self.block = layout, block

    def __repr__(self) -> str:
        return f"block_sparse(layout{self.layout.shape}, block={self.block})"

    def _validate(self, n, m):
        rows, cols = self.layout.shape
        if rows * self.block < n or cols * self.block < m:
            need = (-(-n // self.block), -(-m // self.block))
            raise value_error(
                "block_sparse layout", f"at least {need} blocks of {self.block} for "
                f"{n} queries x {m} keys", f"shape {self.layout.shape}",
                "enlarge the layout or the block size",
            )

    def _dense(self, qi, kj, n, m):
        return self.layout[qi // self.block, kj // self.block]

    def _emit(self, ops, aux, aux_len, n, m):
        rows, cols = self.layout.shape
        at = aux_len[0]
        aux.append(self.layout.astype(np.int64).ravel())
        aux_len[0] = at + rows * cols
        ops.append([OP_BLOCK, self.block, at, rows, cols])


class _Random(Mask):
    """Seeded random tiles; the layout is drawn once the problem size is known."""

    def __init__(self, density: float, block: int, seed: int) -> None:
        self.density, self.block, self.seed = density, block, seed

    def __repr__(self) -> str:
        return f"random({self.density}, block={self.block}, seed={self.seed})"

    def layout(self, n: int, m: int) -> np.ndarray:
        """The boolean tile layout used for an n x m problem (same seed, same layout)."""
        rows, cols = -(-n // self.block), -(-m // self.block)
        rng = np.random.default_rng([self.seed, n, m])
        return rng.random((max(rows, 1), max(cols, 1))) < self.density

    def _tiles(self, n, m) -> _BlockSparse:
        return _BlockSparse(self.layout(n, m), self.block)

    def _dense(self, qi, kj, n, m):
        return self._tiles(n, m)._dense(qi, kj, n, m)

    def _emit(self, ops, aux, aux_len, n, m):
        self._tiles(n, m)._emit(ops, aux, aux_len, n, m)


# ---------------------------------------------------------------- factories
def full() -> Mask:
    """Every query may attend to every key (the identity of ``&``).

    Examples
    --------
    >>> import attnkit as ak
    >>> bool(ak.masks.full().dense(2, 3).all())
    True
    """
    return _Full()


def causal(offset: int = 0) -> Mask:
    """Query ``i`` attends to keys ``j <= i + offset`` (top-left aligned).

    ``offset`` shifts the diagonal: for decoding with a cache of ``m - n``
    earlier tokens, ``causal(offset=m - n)`` aligns it bottom-right.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.masks.causal(1).dense(2, 3).astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])
    """
    if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)):
        raise value_error("offset", "an int", repr(offset), "pass an integer offset")
    return _Causal(int(offset))


def local(window: int) -> Mask:
    """Query ``i`` attends to keys with ``|i - j| < window`` (symmetric band).

    Combine with :func:`causal` for a sliding window over the last ``window``
    tokens, as in Mistral: ``local(w) & causal()``.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.masks.local(2).dense(4).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 1, 0],
           [0, 1, 1, 1],
           [0, 0, 1, 1]])
    """
    return _Local(positive_int("window", window))


def strided(stride: int) -> Mask:
    """Query ``i`` attends to keys with ``(i - j) % stride == 0`` (Child et al. 2019).

    The sparse transformer's strided pattern is ``local(stride) | strided(stride)``.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.masks.strided(2).dense(4)[3].astype(int)
    array([0, 1, 0, 1])
    """
    return _Strided(positive_int("stride", stride))


def global_tokens(index) -> Mask:
    """Tokens at ``index`` attend to, and are attended by, every position (Longformer).

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.masks.global_tokens([0]).dense(3).astype(int)
    array([[1, 1, 1],
           [1, 0, 0],
           [1, 0, 0]])
    """
    idx = np.asarray(index)
    if idx.ndim == 0:
        idx = idx.reshape(1)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise value_error(
            "global_tokens", "a 1-d sequence of int positions", f"{idx.dtype} array of shape "
            f"{idx.shape}", "pass e.g. global_tokens([0]) for a [CLS] token",
        )
    if idx.size and idx.min() < 0:
        raise value_error(
            "global_tokens", "non-negative positions", idx.tolist(),
            "pass positions counted from 0 (negative indices are not wrapped)",
        )
    return _GlobalTokens(np.unique(idx).astype(np.int64))


def block_sparse(layout, block: int) -> Mask:
    """Attend by tiles: query ``i`` sees key ``j`` if ``layout[i // block, j // block]``.

    Parameters
    ----------
    layout : array_like of bool, shape (query blocks, key blocks)
        Which ``block x block`` tiles are allowed.
    block : int
        Tile edge in tokens.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.masks.block_sparse([[1, 0], [1, 1]], block=2).dense(4).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 1],
           [1, 1, 1, 1]])
    """
    arr = np.asarray(layout)
    if arr.ndim != 2 or arr.size == 0:
        raise value_error(
            "layout", "a non-empty 2-d array (query blocks, key blocks)",
            f"shape {arr.shape}", "pass a boolean matrix of tiles",
        )
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
        raise value_error("layout", "booleans or 0/1 ints", str(arr.dtype), "use layout.astype(bool)")
    return _BlockSparse(arr.astype(bool), positive_int("block", block))


def random(density: float, block: int = 64, seed: int = 0) -> Mask:
    """Random ``block x block`` tiles, each kept with probability ``density`` (BigBird style).

    The layout is drawn from ``seed`` and the problem size, so the same call
    gives the same mask every time; tiles left out are skipped by the kernels,
    so the cost scales with ``density``. Combine with ``local`` and
    ``global_tokens`` for BigBird's full pattern.

    Examples
    --------
    >>> import attnkit as ak
    >>> mask = ak.masks.random(0.5, block=4, seed=1)
    >>> bool((mask.dense(16) == mask.dense(16)).all()), mask.dense(16).shape
    (True, (16, 16))
    """
    if isinstance(density, (bool, np.bool_)) or not isinstance(density, (int, float, np.floating)) \
            or not 0.0 <= density <= 1.0:
        raise value_error("density", "a float in [0, 1]", repr(density), "pass e.g. 0.1")
    seed = nonnegative_int("seed", seed)
    return _Random(float(density), positive_int("block", block), seed)


def combine_all(masks) -> Mask | None:
    """``&`` of an iterable of masks, ignoring ``None``; ``None`` if nothing is left."""
    present = [m for m in masks if m is not None]
    return reduce(lambda a, b: a & b, present) if present else None


_PARSERS = {
    "causal": lambda arg: causal(int(arg) if arg else 0),
    "random": lambda arg: random(float(arg)),
    "full": lambda arg: full(),
    "local": lambda arg: local(int(arg)),
    "strided": lambda arg: strided(int(arg)),
    "global": lambda arg: global_tokens([int(i) for i in arg.split(",") if i]),
}


def parse(spec: str) -> Mask:
    """Build a mask from text such as ``"local:256&causal"`` (for the CLI).

    Terms are ``causal[:offset]``, ``full``, ``local:W``, ``strided:S``,
    ``global:i,j,...`` and ``random:DENSITY`` (64-token tiles, seed 0),
    combined as in Python: ``~`` (not) binds tighter than ``&`` (and), which
    binds tighter than ``|`` (or); parentheses group. So ``"a|b&c"`` means
    ``a | (b & c)``, like ``a | b & c`` in Python.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.masks.parse("local:2&causal").dense(3).astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [0, 1, 1]])
    >>> spec = "global:0|local:2&causal"            # global:0 | (local:2 & causal)
    >>> same = ak.masks.global_tokens([0]) | ak.masks.local(2) & ak.masks.causal()
    >>> bool((ak.masks.parse(spec).dense(4) == same.dense(4)).all())
    True
    """
    if not isinstance(spec, str) or not spec.strip():
        raise value_error("mask spec", "text like 'local:256&causal'", repr(spec), "see masks.parse")
    tokens = [t for t in _split(spec.replace(" ", "")) if t]
    if all(t in _OPERATORS for t in tokens):
        raise value_error("mask spec", "at least one term", repr(spec), "write e.g. 'causal'")
    parser = _Parser(tokens, spec)
    result = parser.union()
    if parser.pos < len(tokens):
        parser.fail(f"an operator & or | before {tokens[parser.pos]!r}",
                    "join terms with & or |, and close every '(' once")
    return result


_OPERATORS = "&|~()"


def _split(spec: str):
    """Terms and the one-character operators of ``spec``, in order."""
    token = ""
    for ch in spec:
        if ch in _OPERATORS:
            yield token
            yield ch
            token = ""
        else:
            token += ch
    yield token


class _Parser:
    """Recursive descent over the tokens: union := inter ('|' inter)*, inter := unary ('&' unary)*."""

    def __init__(self, tokens, spec):
        self.tokens, self.spec, self.pos = tokens, spec, 0

    def fail(self, expected: str, fix: str):
        raise value_error("mask spec", expected, repr(self.spec), fix)

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def union(self) -> Mask:
        result = self.intersection()
        while self.peek() == "|":
            self.pos += 1
            result = result | self.intersection()
        return result

    def intersection(self) -> Mask:
        result = self.unary()
        while self.peek() == "&":
            self.pos += 1
            result = result & self.unary()
        return result

    def unary(self) -> Mask:
        token = self.peek()
        if token == "~":
            self.pos += 1
            return ~self.unary()
        if token == "(":
            self.pos += 1
            inner = self.union()
            if self.peek() != ")":
                self.fail("a ')' closing every '('", "balance the parentheses")
            self.pos += 1
            return inner
        if token is None or token in _OPERATORS:
            where = "at the end" if token is None else f"before {token!r}"
            self.fail(f"a term {where}", "write a term such as 'causal' on each side of & and |")
        self.pos += 1
        return _term(token)


def _term(token: str) -> Mask:
    name, _, arg = token.partition(":")
    if name not in _PARSERS:
        raise value_error(
            "mask spec", f"terms from {sorted(_PARSERS)}", repr(token),
            "write e.g. 'local:256', 'strided:64', 'global:0', 'causal'",
        )
    try:
        return _PARSERS[name](arg)
    except ValueError as exc:
        if "Fix:" in str(exc):
            raise
        raise value_error("mask spec", f"an integer argument for {name!r}", repr(arg),
                          f"write e.g. '{name}:16'") from None
