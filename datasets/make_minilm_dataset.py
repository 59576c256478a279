"""Make datasets/minilm/: MiniLM attention on a few hundred real English sentences.

Two steps, both deterministic:

1. ``--select EWT_CONLLU`` (run once; needs a local copy of the Universal
   Dependencies English EWT test file, e.g. ``git clone
   https://github.com/UniversalDependencies/UD_English-EWT`` and pass
   ``UD_English-EWT/en_ewt-ud-test.conllu``) writes ``minilm/sentences.txt``
   (one sentence per line, the input of ``attnkit compute``) and
   ``minilm/sources.tsv`` (line, group, source id, licence). The sentences are
   a seeded, length-stratified sample of EWT test sentences, plus the
   subject-verb agreement sentences with attractors and the classic short
   examples defined below (written or collected for attnkit, CC0).
2. Without ``--select`` it reads ``sentences.txt`` and writes
   ``minilm/minilm.nc``: attention, tokens, lengths, the sentence texts and
   embeddings, the leave-one-out impacts (``delete`` and ``mask``, special
   tokens computed too; ``--no-impacts`` skips them), the attention gradients
   of ``T = <r(x'), r(x)/|r(x)|>`` (``model.run(gradients=True)``) and the
   attributions input x gradient, integrated gradients (64 steps, zero
   baseline) and grad_rollout (``ak.attribute``). The attention is rounded
   to multiples of 2**-16 with rows summing to exactly 1 (see
   ``quantize_rows``) and the gradients to 8 mantissa bits (see
   ``round_mantissa``) so the file stays small; q and k (``--qk``) are left
   out of the shipped file for size.

Usage, from the repository root::

    python datasets/make_minilm_dataset.py --select UD_English-EWT/en_ewt-ud-test.conllu
    python datasets/make_minilm_dataset.py
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "minilm"
SEED = 20261122
EWT_COMMIT = "15d613d8447b3478787d4c278730a1e48a945efb"  # UD_English-EWT, v2.15 (2024-11-15)
EWT_LICENCE = "CC BY-SA 4.0"
OWN_LICENCE = "CC0-1.0"
# MiniLM tokens per sentence ([CLS] and [SEP] included) -> EWT sentences to draw
EWT_BINS = [((5, 12), 50), ((13, 24), 60), ((25, 40), 40), ((41, 64), 20)]

# Subject-verb agreement across an attractor: (subject sg/pl, attractor phrase
# with the attractor noun sg/pl, verb sg/pl, rest). Each frame gives four
# sentences: subject x attractor number (SS, SP, PS, PP), verb agreeing with the
# subject. Written for attnkit (CC0).
PP_FRAMES = [
    (("key", "keys"), "to the", ("cabinet", "cabinets"), ("is", "are"), "on the table."),
    (("author", "authors"), "of the", ("book", "books"), ("was", "were"), "praised by the critics."),
    (("label", "labels"), "on the", ("bottle", "bottles"), ("is", "are"), "hard to read."),
    (("picture", "pictures"), "of the", ("child", "children"), ("hangs", "hang"), "in the hallway."),
    (("road", "roads"), "to the", ("village", "villages"), ("was", "were"), "closed after the storm."),
    (("manager", "managers"), "of the", ("store", "stores"), ("wants", "want"), "a new schedule."),
    (("price", "prices"), "of the", ("ticket", "tickets"), ("seems", "seem"), "too high."),
    (("door", "doors"), "behind the", ("curtain", "curtains"), ("leads", "lead"), "to the garden."),
    (("report", "reports"), "about the", ("accident", "accidents"), ("has", "have"), "been published."),
    (("student", "students"), "near the", ("window", "windows"), ("is", "are"), "reading quietly."),
    (("bridge", "bridges"), "over the", ("river", "rivers"), ("needs", "need"), "urgent repairs."),
    (("box", "boxes"), "under the", ("bed", "beds"), ("contains", "contain"), "old letters."),
    (("dog", "dogs"), "next to the", ("car", "cars"), ("barks", "bark"), "at strangers."),
    (("cost", "costs"), "of the", ("repair", "repairs"), ("was", "were"), "higher than expected."),
    (("sign", "signs"), "along the", ("highway", "highways"), ("warns", "warn"), "drivers about deer."),
    (("teacher", "teachers"), "of the", ("class", "classes"), ("likes", "like"), "the new textbook."),
]
# Object relative clauses: "The book that the students praised is on the shelf."
RC_FRAMES = [
    (("book", "books"), ("student", "students"), "praised", ("is", "are"), "on the shelf."),
    (("song", "songs"), ("singer", "singers"), "wrote", ("was", "were"), "very popular."),
    (("car", "cars"), ("mechanic", "mechanics"), "repaired", ("runs", "run"), "smoothly now."),
    (("letter", "letters"), ("lawyer", "lawyers"), "sent", ("contains", "contain"), "an error."),
]

# Classic short examples from the linguistics and NLP literature (short
# sentences and well-known quotations; the origin is noted for reference).
CLASSIC = [
    ("The cat sat on the mat.", "classic example"),
    ("The quick brown fox jumps over the lazy dog.", "pangram"),
    ("Colorless green ideas sleep furiously.", "Chomsky 1957"),
    ("Time flies like an arrow; fruit flies like a banana.", "classic ambiguity"),
    ("The horse raced past the barn fell.", "garden path, Bever 1970"),
    ("The old man the boat.", "garden path"),
    ("The complex houses married and single soldiers and their families.", "garden path"),
    ("I saw the man with the telescope.", "PP-attachment ambiguity"),
    ("Visiting relatives can be boring.", "structural ambiguity, Chomsky 1965"),
    ("Buffalo buffalo Buffalo buffalo buffalo buffalo Buffalo buffalo.", "Rapaport 1972"),
    ("Every farmer who owns a donkey beats it.", "donkey sentence, Geach 1962"),
    ("The trophy doesn't fit into the brown suitcase because it is too large.",
     "Winograd schema, Levesque et al. 2012"),
    ("The city councilmen refused the demonstrators a permit because they feared violence.",
     "Winograd 1972"),
    ("The doctor asked the nurse to help her with the patient.", "coreference"),
    ("John said that Mary thinks that he is wrong.", "coreference"),
    ("Paris is the capital of France.", "factual"),
    ("The movie was not bad at all.", "negation, sentiment"),
    ("I absolutely loved this movie!", "sentiment"),
    ("This film was a complete waste of time.", "sentiment"),
    ("The chicken is ready to eat.", "structural ambiguity"),
]


def agreement_sentences() -> list[tuple[str, str]]:
    rows = []
    for subj, prep, attr, verb, rest in PP_FRAMES:
        for s in (0, 1):
            for a in (0, 1):
                cond = "SP"[s] + "SP"[a]
                rows.append((f"The {subj[s]} {prep} {attr[a]} {verb[s]} {rest}", f"agreement-pp:{cond}"))
    for subj, attr, rc_verb, verb, rest in RC_FRAMES:
        for s in (0, 1):
            for a in (0, 1):
                cond = "SP"[s] + "SP"[a]
                rows.append((f"The {subj[s]} that the {attr[a]} {rc_verb} {verb[s]} {rest}",
                             f"agreement-rc:{cond}"))
    return rows


def read_conllu_texts(path: Path) -> list[tuple[str, str]]:
    """(sent_id, text) of every sentence in a CoNLL-U file."""
    out, sent_id = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# sent_id = "):
            sent_id = line[len("# sent_id = "):].strip()
        elif line.startswith("# text = "):
            out.append((sent_id, line[len("# text = "):].strip()))
    return out


_CLEAN = re.compile(r"^[A-Z\"'(][A-Za-z0-9 ,.;:'\"()?!%$&-]*[.?!]\"?$")


def is_clean(text: str) -> bool:
    """Plain, complete English sentences: ASCII, starts upper-case, ends with . ? or !,
    no URLs, e-mail addresses or runs of symbols."""
    if not _CLEAN.match(text) or "http" in text or "www" in text or "--" in text:
        return False
    letters = sum(c.isalpha() for c in text)
    return letters >= 0.7 * len(text.replace(" ", "")) and len(text.split()) >= 3


def select(conllu: Path) -> None:
    from attnkit.models import MiniLM

    model = MiniLM.load()
    rng = np.random.default_rng(SEED)
    candidates = [(sid, t) for sid, t in read_conllu_texts(conllu) if is_clean(t)]
    lengths = np.array([ids.size for ids in model.tokenize([t for _, t in candidates])])
    rows = []
    for (lo, hi), count in EWT_BINS:
        pool = np.nonzero((lengths >= lo) & (lengths <= hi))[0]
        if pool.size < count:
            raise SystemExit(f"only {pool.size} clean EWT sentences of {lo}..{hi} tokens")
        for i in np.sort(rng.choice(pool, size=count, replace=False)):
            sid, text = candidates[i]
            rows.append((text, "ewt", f"UD_English-EWT@{EWT_COMMIT[:8]}:{conllu.name}#{sid}",
                         EWT_LICENCE))
    rows += [(t, "agreement", cond, OWN_LICENCE) for t, cond in agreement_sentences()]
    rows += [(t, "classic", origin, OWN_LICENCE) for t, origin in CLASSIC]
    HERE.mkdir(parents=True, exist_ok=True)
    (HERE / "sentences.txt").write_text("".join(r[0] + "\n" for r in rows), encoding="utf-8")
    with open(HERE / "sources.tsv", "w", encoding="utf-8") as fh:
        fh.write("line\tgroup\tsource\tlicence\n")
        for i, (_, group, source, licence) in enumerate(rows, start=1):
            fh.write(f"{i}\t{group}\t{source}\t{licence}\n")
    toks = np.array([ids.size for ids in model.tokenize([r[0] for r in rows])])
    print(f"wrote {len(rows)} sentences ({toks.min()}..{toks.max()} tokens, mean {toks.mean():.1f}) "
          f"from {len(candidates)} clean EWT candidates")


QUANTUM_BITS = 16


def quantize_rows(att: np.ndarray, bits: int = QUANTUM_BITS) -> np.ndarray:
    """Round probabilities to multiples of 2**-bits, rows still summing to exactly 1.

    Largest-remainder rounding: every entry is floored to the grid, then the
    entries with the largest remainders get one more quantum until the row sums
    to 1. Each entry moves by less than 2**-bits (1.5e-5 for 16 bits) and is
    exact in float32; the short mantissas compress several times better than
    raw float32. NaN (padding) stays NaN.
    """
    a = np.asarray(att, dtype=np.float64)
    nan = np.isnan(a)
    scaled = np.where(nan, 0.0, a) * (1 << bits)
    low = np.floor(scaled)
    deficit = np.rint(scaled.sum(-1) - low.sum(-1)).astype(np.int64)  # quanta still missing per row
    order = np.argsort(-(scaled - low), axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(a.shape[-1]), axis=-1)
    low += rank < deficit[..., None]
    return np.where(nan, np.nan, low / (1 << bits)).astype(np.float32)


GRADIENT_BITS = 8
#: The attributions shipped (``ak.attribute``), and integrated gradients' path points.
ATTRIBUTIONS = ("input_x_gradient", "integrated_gradients", "grad_rollout")
IG_STEPS = 64


def round_mantissa(a: np.ndarray, bits: int = GRADIENT_BITS) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (to nearest; NaN stays NaN).

    Each value moves by at most a relative 2**-(bits + 1) (0.2% for 8 bits,
    bfloat16's precision with float32's range); the zeroed low bits compress
    well.
    """
    x = np.ascontiguousarray(a, dtype=np.float32).copy()
    raw = x.view(np.uint32)
    drop = 23 - bits
    finite = np.isfinite(x)
    rounded = (raw + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF >> drop) << drop)
    raw[finite] = rounded[finite]
    return x


def with_groups(ds):
    """Add the ``group`` (sample) coordinate: each sentence's group in sources.tsv
    (ewt, agreement, classic), so analyses can summarise the groups apart."""
    rows = (HERE / "sources.tsv").read_text(encoding="utf-8").splitlines()[1:]
    groups = [row.split("\t")[1] for row in rows if row]
    if len(groups) != ds.sizes["sample"]:
        raise SystemExit(f"sources.tsv: expected {ds.sizes['sample']} rows, got {len(groups)}")
    return ds.assign_coords(group=("sample", groups))


def build(no_impacts: bool, batch_size: int, qk: bool, out: Path) -> None:
    import attnkit as ak
    from attnkit.models import MiniLM

    texts = [t for t in (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines() if t]
    model = MiniLM.load()
    start = time.perf_counter()
    ds = model.run(texts, batch_size=batch_size, qk=qk, gradients=True, progress=True,
                   source="datasets/minilm/sentences.txt")
    seconds = {"run": time.perf_counter() - start}
    start = time.perf_counter()
    ds["attribution"] = ak.attribute(model, ds, method=ATTRIBUTIONS, steps=IG_STEPS,
                                     baseline="zero", batch_size=batch_size, progress=True)
    seconds["attribute"] = time.perf_counter() - start
    if not no_impacts:
        start = time.perf_counter()
        impact = ak.ablate(model, ds, method=("delete", "mask"), special="compute",
                           batch_size=batch_size, progress=True)
        seconds["ablate"] = time.perf_counter() - start
        ds["impact"] = impact
    # q and k (6 x 12 x 32 values per token) do not fit the size budget next to
    # the attention; --qk keeps them (for a local copy).
    if not qk:
        ds = ds.drop_vars(["q", "k"], errors="ignore")
    # dT/d(word embeddings) (7 MB) is summed up by the attributions; the attention
    # gradients, which `attnkit analyze` needs for the grad score, are kept.
    ds = ds.drop_vars("input_gradient")
    ds["attention"] = (ds.attention.dims, quantize_rows(ds.attention.values))
    ds["gradient"] = (ds.gradient.dims, round_mantissa(ds.gradient.values))
    ds = with_groups(ds)
    ds.attrs.update({
        "source": "datasets/minilm/sentences.txt (see sources.tsv for each line's origin)",
        "licence": "sentences from UD English EWT: CC BY-SA 4.0; the others: CC0-1.0",
        "rounding": f"attention rounded to multiples of 2**-{QUANTUM_BITS} with rows summing to "
                    f"exactly 1 (largest remainder); gradient float32 rounded to "
                    f"{GRADIENT_BITS} mantissa bits; embedding float32, impact and "
                    f"attribution float64",
        "created_by": "datasets/make_minilm_dataset.py",
    })
    ak.save_dataset(ds, out)
    print(f"wrote {out}: {ds.sizes['sample']} sentences, {out.stat().st_size / 1e6:.1f} MB; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--select", type=Path, metavar="EWT_CONLLU",
                        help="rebuild sentences.txt and sources.tsv from en_ewt-ud-test.conllu")
    parser.add_argument("--no-impacts", action="store_true", help="skip the leave-one-out ablation")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--qk", action="store_true",
                        help="also store q and k (about 45 MB more; not in the shipped file)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "minilm.nc")
    parser.add_argument("--add-groups", action="store_true",
                        help="only add the `group` coordinate to an existing OUTPUT (nothing "
                             "recomputed; how the shipped file got it)")
    args = parser.parse_args(argv)
    if args.select is not None:
        select(args.select)
    elif args.add_groups:
        import attnkit as ak

        ak.save_dataset(with_groups(ak.open_dataset(args.output).load()), args.output)
    else:
        build(args.no_impacts, args.batch_size, args.qk, args.output)


if __name__ == "__main__":
    sys.exit(main())
