"""attnkit's ready-made equivariance checks: :func:`builtin_checks`.

Each check is a :class:`CheckSpec`: a name, what it should find, and a small
builder returning ``(fn, args, options)`` for :func:`attnkit.check_equivariance`.
Checks that *should fail* demonstrate a violation (a causal mask, a positional
encoding) and quantify it: they meet their expectation by failing.
:func:`specs` lists them all; :func:`builtin_checks` runs them and returns one
:class:`BuiltinCheck` per check.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import masks, positional
from ..attention import attention, attention_stats, attention_weights
from ..errors import BackendUnavailableError, backend_name, nonnegative_int, positive_int, \
    value_error
from ..variants import linear_attention, multi_head_attention
from .checker import check_equivariance
from .report import EquivarianceReport

__all__ = ["builtin_checks", "BuiltinCheck", "CheckSpec", "CheckContext", "specs"]

MODEL_SENTENCE = "Attention is not explanation, but it is not nothing either."
MODEL_SENTENCE_QUICK = "Attention is not explanation."


@dataclass(frozen=True)
class CheckSpec:
    """One ready-made check before it runs: its name, expectation and input builder."""

    name: str
    description: str
    expect: str
    should_pass: bool
    build: Callable  # (CheckContext) -> (fn, args, options)
    full_only: bool = False  # left out with quick=True


@dataclass
class CheckContext:
    """Sizes, seed and backend shared by the builders of one :func:`builtin_checks` run."""

    backend: str
    quick: bool
    seed: int
    n: int
    d: int
    heads: int

    def rng(self, salt: int) -> np.random.Generator:
        # one generator per check: adding a check never changes another's inputs
        return np.random.default_rng([self.seed, salt])

    def seq(self, salt: int, n=None, d=None, heads=None, dtype=np.float64):
        shape = (self.heads if heads is None else heads, n or self.n, d or self.d)
        return self.rng(salt).standard_normal(shape).astype(dtype)


@dataclass(frozen=True)
class BuiltinCheck:
    """One ready-made check: what it expects and what it found.

    ``should_pass`` is False for checks that demonstrate a violation (causal
    masks, positional encodings): those meet their expectation by failing.
    """

    name: str
    description: str
    expect: str
    should_pass: bool
    report: EquivarianceReport | None = None
    unavailable: str | None = None  # why it could not run

    @property
    def expectation(self) -> str:
        """``"equivariant"``, ``"invariant"``, ``"not equivariant"`` or ``"not invariant"``."""
        return self.expect if self.should_pass else f"not {self.expect}"

    @property
    def status(self) -> str:
        """``"ok"`` (met its expectation), ``"unexpected"`` or ``"unavailable"``."""
        if self.report is None:
            return "unavailable"
        return "ok" if self.report.passed == self.should_pass else "unexpected"

    @property
    def meets_expectation(self) -> bool:
        """True unless the check ran and contradicted its expectation."""
        return self.status != "unexpected"

    def to_row(self) -> dict:
        """A flat row for tables: check, expectation, passed, errors, tolerance, status.

        The numbers are None for a check that could not run."""
        r = self.report
        return {
            "check": self.name,
            "expectation": self.expectation,
            "passed": "-" if r is None else ("yes" if r.passed else "no"),
            "max_abs_err": None if r is None else float(r.max_abs_error),
            "max_rel_err": None if r is None else float(r.max_rel_error),
            "tolerance": None if r is None else float(r.tolerance),
            "status": self.status,
        }

    def to_dict(self) -> dict:
        return {
            "check": self.name, "description": self.description,
            "expectation": self.expectation, "status": self.status,
            "unavailable": self.unavailable,
            "report": None if self.report is None else self.report.to_dict(),
        }


# ------------------------------------------------------------ attention
def _queries(c):
    q, k, v = c.seq(1), c.seq(2, n=c.n + 3), c.seq(3, n=c.n + 3)
    fn = lambda q, k, v: attention(q, k, v, return_lse=True, backend=c.backend)  # noqa: E731
    return fn, (q, k, v), dict(permute={0: -2}, out_axis=(-2, -1))


def _keys_values(c, **kw):
    q, k, v = c.seq(4, n=c.n - 2), c.seq(5), c.seq(6)

    def fn(q, k, v):
        return attention(q, k, v, return_lse=True, backend=c.backend, **kw)

    return fn, (q, k, v), dict(permute={1: -2, 2: -2}, expect="invariant")


def _self(c, dtype=np.float64, **kw):
    fn = lambda x: attention(x, x, x, backend=c.backend, **kw)  # noqa: E731
    return fn, (c.seq(7, dtype=dtype),), dict(permute={0: -2})


def _grouped(c):
    q, k, v = c.seq(8, heads=4), c.seq(9, heads=2), c.seq(10, heads=2)
    fn = lambda q, k, v: attention(q, k, v, backend=c.backend)  # noqa: E731
    return fn, (q, k, v), dict(permute={0: -2, 1: -2, 2: -2})


def _padded(c):
    """Padding via kv_lengths: the valid positions are permuted, the padding stays last."""
    x, pad = c.seq(11), c.seq(12, n=3)

    def fn(x):
        n = x.shape[-2]
        full = np.concatenate([x, pad], axis=-2)  # 3 padded positions after the valid ones
        out = attention(full, full, full, kv_lengths=n, backend=c.backend)
        return out[..., :n, :]

    return fn, (x,), dict(permute={0: -2})


def _weights_self(c):
    fn = lambda x: attention_weights(x, x, backend=c.backend)  # noqa: E731
    return fn, (c.seq(13),), dict(permute={0: -2}, out_axis=(-2, -1))


def _weights_keys(c):
    fn = lambda q, k: attention_weights(q, k, backend=c.backend)  # noqa: E731
    return fn, (c.seq(14, n=c.n + 1), c.seq(15)), dict(permute={1: -2}, out_axis=-1)


def _stats_queries(c):
    fn = lambda q, k: attention_stats(q, k, backend=c.backend)  # noqa: E731
    axes = {"entropy": -1, "max": -1, "argmax": -1, "received": None}
    return fn, (c.seq(16), c.seq(17, n=c.n + 2)), dict(permute={0: -2}, out_axis=axes)


def _stats_keys(c):
    fn = lambda q, k: attention_stats(q, k, backend=c.backend)  # noqa: E731
    axes = {"entropy": None, "max": None, "received": -1}
    return fn, (c.seq(18, n=c.n + 2), c.seq(19)), dict(permute={1: -2}, out_axis=axes)


def _stats_distance(c):
    fn = lambda x: attention_stats(x, x, stats=("distance",), backend=c.backend)  # noqa: E731
    return fn, (c.seq(20),), dict(permute={0: -2}, out_axis={"distance": -1})


# ------------------------------------------------------------ variants
def _mha_weights(c, e=12):
    rng = c.rng(21)
    w = [rng.standard_normal((e, e)) / np.sqrt(e) for _ in range(4)]
    b = [rng.standard_normal(e) for _ in range(4)]
    return w, b


def _mha_self(c, **kw):
    (w_q, w_k, w_v, w_o), (b_q, b_k, b_v, b_o) = _mha_weights(c)

    def fn(x):
        return multi_head_attention(x, w_q, w_k, w_v, w_o, 3, b_q=b_q, b_k=b_k, b_v=b_v,
                                    b_o=b_o, backend=c.backend, **kw)

    x = c.rng(22).standard_normal((2, c.n, 12))
    return fn, (x,), dict(permute={0: -2})


def _mha_cross(c):
    (w_q, w_k, w_v, w_o), (b_q, b_k, b_v, b_o) = _mha_weights(c)

    def fn(x, context):
        return multi_head_attention(x, w_q, w_k, w_v, w_o, 3, context=context, b_q=b_q,
                                    b_k=b_k, b_v=b_v, b_o=b_o, backend=c.backend)

    rng = c.rng(23)
    x, ctx = rng.standard_normal((2, c.n - 1, 12)), rng.standard_normal((2, c.n, 12))
    return fn, (x, ctx), dict(permute={1: -2}, expect="invariant")


def _linear_queries(c, causal=False):
    fn = lambda q, k, v: linear_attention(q, k, v, causal=causal,  # noqa: E731
                                          backend=c.backend)
    q, k, v = c.seq(24), c.seq(25), c.seq(26)
    permute = {0: -2, 1: -2, 2: -2} if causal else {0: -2}
    return fn, (q, k, v), dict(permute=permute)


def _linear_keys(c):
    fn = lambda q, k, v: linear_attention(q, k, v, backend=c.backend)  # noqa: E731
    q, k, v = c.seq(27, n=c.n + 1), c.seq(28), c.seq(29)
    return fn, (q, k, v), dict(permute={1: -2, 2: -2}, expect="invariant")


# ---------------------------------------------------------- positional
def _additive_pe(c, kind):
    if kind == "sinusoidal":
        pe = positional.sinusoidal(c.n, c.d)
    else:
        table = c.rng(30).standard_normal((4 * c.n, c.d))
        pe = positional.learned(table, np.arange(c.n))

    def fn(x):
        h = x + pe  # positions are added to the (permuted) embeddings, as in BERT
        return attention(h, h, h, backend=c.backend)

    return fn, (c.seq(31),), dict(permute={0: -2})


def _rope(c):
    def fn(x):
        r = positional.rope(x)
        return attention(r, r, x, backend=c.backend)

    return fn, (c.seq(32),), dict(permute={0: -2})


def _score_mod(c, mod):
    fn = lambda x: attention(x, x, x, score_mod=mod, backend=c.backend)  # noqa: E731
    return fn, (c.seq(33),), dict(permute={0: -2})


def _alibi(c):
    return _score_mod(c, positional.alibi(positional.alibi_slopes(c.heads)))


def _relative_bias(c):
    table = c.rng(34).standard_normal((c.heads, 9))
    return _score_mod(c, positional.relative_bias(table))


def _soft_cap(c):
    return _score_mod(c, positional.soft_cap(2.0))


# --------------------------------------------------------------- model
_MODEL = {}


def _minilm():
    """The built-in MiniLM, loaded once per process (raises if weights are missing)."""
    if "model" not in _MODEL:
        from ..models import MiniLM

        _MODEL["model"] = MiniLM.load()
    return _MODEL["model"]


def _model(c, position_embeddings):
    model = _minilm()
    ids = model.tokenize(MODEL_SENTENCE_QUICK if c.quick else MODEL_SENTENCE)[0]

    def fn(ids):
        res = model.forward([ids], position_embeddings=position_embeddings)
        return {"hidden": res.hidden[0], "embedding": res.embedding[0]}

    # token ids in, so the permutation reaches the model before any embedding:
    # hidden states (position, 384) follow it, the mean-pooled embedding ignores it
    return fn, (ids,), dict(permute={0: 0}, out_axis={"hidden": 0, "embedding": None})


# --------------------------------------------------------------- registry
def specs() -> list[CheckSpec]:
    """Every ready-made check, in the order :func:`builtin_checks` runs them.

    Examples
    --------
    >>> from attnkit.equivariance.checks import specs
    >>> [s.name for s in specs()][:2]
    ['attention/queries', 'attention/keys+values']
    """
    eq, inv = "equivariant", "invariant"
    S = CheckSpec
    return [
        S("attention/queries", "attention(q, k, v): permuting q permutes out and lse",
          eq, True, _queries),
        S("attention/keys+values", "attention(q, k, v): permuting k, v together changes nothing",
          inv, True, _keys_values),
        S("attention/self", "self-attention attention(x, x, x), float64", eq, True, _self),
        S("attention/self-float32", "self-attention in float32 (float32 tolerance)", eq, True,
          lambda c: _self(c, np.float32)),
        S("attention/grouped-query", "4 query heads sharing 2 key/value heads", eq, True,
          _grouped, full_only=True),
        S("attention/full-mask", "masks.full() allows every pair: no position used", eq, True,
          lambda c: _self(c, mask=masks.full())),
        S("attention/padding", "kv_lengths padding after the permuted valid positions", eq,
          True, _padded),
        S("attention/causal", "causal mask: query i sees keys <= i, a position rule", eq,
          False, lambda c: _self(c, causal=True)),
        S("attention/causal-keys", "causal mask: permuting k, v changes what each query sees",
          inv, False, lambda c: _keys_values(c, causal=True)),
        S("attention/local", "local(3) band mask", eq, False,
          lambda c: _self(c, mask=masks.local(3))),
        S("attention/global-tokens", "global_tokens([0]): position 0 is special", eq, False,
          lambda c: _self(c, mask=masks.global_tokens([0]))),
        S("attention_weights/self", "self-attention weights permute along query and key",
          eq, True, _weights_self),
        S("attention_weights/keys", "permuting k permutes the weights' key axis", eq, True,
          _weights_keys),
        S("attention_stats/queries", "entropy/max/argmax follow the queries, received is fixed",
          eq, True, _stats_queries),
        S("attention_stats/keys", "received follows the keys, entropy and max are fixed",
          eq, True, _stats_keys),
        S("attention_stats/distance", "mean attention distance is defined by positions", eq,
          False, _stats_distance),
        S("multi_head_attention/self", "3 heads with projections and biases", eq, True,
          _mha_self),
        S("multi_head_attention/cross", "permuting the context changes nothing", inv, True,
          _mha_cross),
        S("multi_head_attention/causal", "causal multi-head attention", eq, False,
          lambda c: _mha_self(c, causal=True), full_only=True),
        S("linear_attention/queries", "non-causal linear attention (elu+1)", eq, True,
          _linear_queries),
        S("linear_attention/keys+values", "non-causal linear attention, k and v permuted",
          inv, True, _linear_keys),
        S("linear_attention/causal", "causal linear attention (running sums)", eq, False,
          lambda c: _linear_queries(c, causal=True)),
        S("positional/sinusoidal", "sinusoidal encodings added to x", eq, False,
          lambda c: _additive_pe(c, "sinusoidal")),
        S("positional/learned", "a learned position table added to x", eq, False,
          lambda c: _additive_pe(c, "learned")),
        S("positional/rope", "RoPE on queries and keys", eq, False, _rope),
        S("positional/alibi", "ALiBi score_mod (slope * |i - j|)", eq, False, _alibi),
        S("positional/relative_bias", "relative-position bias score_mod", eq, False,
          _relative_bias),
        S("positional/soft_cap", "soft_cap score_mod uses no positions (control)", eq, True,
          _soft_cap, full_only=True),
        S("model/minilm-no-positions", "MiniLM without position embeddings: hidden states "
          "follow the tokens, the sentence embedding is fixed", eq, True,
          lambda c: _model(c, False)),
        S("model/minilm", "MiniLM as trained, with learned position embeddings", eq, False,
          lambda c: _model(c, True)),
    ]


def _selected(name: str, select) -> bool:
    if select is None:
        return True
    patterns = [select] if isinstance(select, str) else list(select)
    return any(fnmatch.fnmatchcase(name, p + "*") for p in patterns)


def builtin_checks(backend="cpu", quick=False, *, trials=5, seed=0, select=None):
    """Run attnkit's ready-made equivariance checks (the list is :func:`specs`).

    Parameters
    ----------
    backend : {"cpu", "cuda", "auto"}
        Backend of the attention kernels under test.
    quick : bool
        Smaller inputs, at most 2 trials, and the optional controls left out.
    trials, seed : int
        As in :func:`check_equivariance` (``seed`` also draws the inputs).
    select : str or sequence of str, optional
        Run only checks whose name starts with one of these (shell wildcards
        allowed): ``"positional/"``, ``"model/"``, ``"*causal*"``.

    Returns
    -------
    list of BuiltinCheck
        One per check, with its expectation, report and status ("ok",
        "unexpected" or "unavailable").

    Examples
    --------
    >>> from attnkit.equivariance import builtin_checks
    >>> [c.status for c in builtin_checks(quick=True, select="attention/queries")]
    ['ok']
    """
    backend = backend_name(backend)
    trials = positive_int("trials", trials)
    nonnegative_int("seed", seed)
    if select is not None and not isinstance(select, str) and not all(
            isinstance(s, str) for s in select):
        raise value_error("select", "a str or a list of str", repr(select),
                          "pass e.g. select='attention/'")
    quick = bool(quick)
    ctx = CheckContext(backend=backend, quick=quick, seed=int(seed), n=8 if quick else 16,
                       d=8, heads=2)
    if quick:
        trials = min(trials, 2)
    results = []
    for spec in specs():
        if (quick and spec.full_only) or not _selected(spec.name, select):
            continue
        try:
            fn, args, options = spec.build(ctx)
            report = check_equivariance(fn, *args, trials=trials, seed=int(seed),
                                        name=spec.name, **options)
        except BackendUnavailableError as exc:
            results.append(BuiltinCheck(spec.name, spec.description, spec.expect,
                                        spec.should_pass, unavailable=str(exc)))
            continue
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            if not spec.name.startswith("model/"):
                raise
            results.append(BuiltinCheck(spec.name, spec.description, spec.expect,
                                        spec.should_pass, unavailable=str(exc)))
            continue
        results.append(BuiltinCheck(spec.name, spec.description, spec.expect,
                                    spec.should_pass, report=report))
    if not results:
        raise value_error("select", "a pattern matching some check names",
                          repr(select), "see the names in builtin_checks()")
    return results
