"""Names shared across modules: score kinds, correlation methods, special tokens.

One home for each, so that analysis, correlation, statistics, plots and the
CLI agree (before, stats.py counted ``<|begin_of_text|>`` as [CLS]-like while
correlate.py's ``exclude="special"`` kept it).

Examples
--------
>>> from attnkit.constants import SCORE_KINDS, SPECIAL_TOKENS
>>> SCORE_KINDS
('raw', 'rollout', 'flow', 'grad')
>>> "<|begin_of_text|>" in SPECIAL_TOKENS
True
"""

from __future__ import annotations

__all__ = [
    "SCORE_KINDS",
    "CORRELATION_METHODS",
    "CORRELATION_NAMES",
    "CORRELATION_LABELS",
    "CLS_TOKENS",
    "SEP_TOKENS",
    "PAD_TOKENS",
    "SPECIAL_TOKENS",
]

#: Attention scores :func:`attnkit.attention_scores` computes per layer.
SCORE_KINDS = ("raw", "rollout", "flow", "grad")

#: Statistics :func:`attnkit.correlate` computes, and their names in tables and plots.
CORRELATION_METHODS = ("kendall", "spearman", "pearson")
CORRELATION_NAMES = {"kendall": "Kendall tau-b", "spearman": "Spearman rho", "pearson": "Pearson r"}
#: The same names with Greek letters, for figure labels.
CORRELATION_LABELS = {"kendall": "Kendall τ-b", "spearman": "Spearman ρ", "pearson": "Pearson r"}

#: [CLS]-like tokens (sequence start) of BERT, RoBERTa/GPT-2, SentencePiece and Llama vocabularies.
CLS_TOKENS = ("[CLS]", "<s>", "<cls>", "<|begin_of_text|>", "<bos>")
#: [SEP]-like tokens (separator / end of sequence).
SEP_TOKENS = ("[SEP]", "</s>", "<sep>", "<|end_of_text|>", "<|endoftext|>", "<eos>")
#: Padding tokens.
PAD_TOKENS = ("[PAD]", "<pad>")
#: Every special token: what ``exclude="special"`` drops in :func:`attnkit.correlate`.
SPECIAL_TOKENS = frozenset(CLS_TOKENS + SEP_TOKENS + PAD_TOKENS)
