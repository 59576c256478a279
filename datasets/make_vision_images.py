"""Copy the photographs of datasets/vision/images/ from scikit-image and matplotlib.

The images are the colour photographs bundled with scikit-image's wheel
(``skimage/data``) and matplotlib's ``grace_hopper.jpg`` sample. They are read
from the installed packages' files (scikit-image is located, never imported)
and re-encoded as JPEG (quality 92, full size) so that the shipped copies stay
small; ``images.tsv`` records each one's source file, SHA-256, size and licence.

Usage::

    pip install scikit-image==0.26.0   # only for this script; attnkit does not need it
    python datasets/make_vision_images.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "vision" / "images"

#: name -> (package, file inside the package's data folder, licence / provenance)
SOURCES = {
    "astronaut": ("skimage", "astronaut.png",
                  "NASA (Eileen Collins); public domain, via scikit-image"),
    "chelsea": ("skimage", "chelsea.png",
                "Stefan van der Walt; CC0, via scikit-image"),
    "coffee": ("skimage", "coffee.png",
               "Rachel Michetti (courtesy of Pikolo Espresso Bar); CC0, via scikit-image"),
    "motorcycle_left": ("skimage", "motorcycle_left.png",
                        "Middlebury 2014 stereo benchmark (Scharstein et al., GCPR 2014), "
                        "down-sampled 4x by scikit-image; free for research use with citation, "
                        "via scikit-image"),
    "motorcycle_right": ("skimage", "motorcycle_right.png",
                         "Middlebury 2014 stereo benchmark (Scharstein et al., GCPR 2014), "
                         "down-sampled 4x by scikit-image; free for research use with "
                         "citation, via scikit-image"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg",
                          "NASA Hubble eXtreme Deep Field; public domain, via scikit-image"),
    "rocket": ("skimage", "rocket.jpg",
               "SpaceX (DSCOVR launch on Falcon 9); public domain (CC0), via scikit-image"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg",
                     "US Navy photograph of Grace Hopper; public domain, via matplotlib"),
}


def _data_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{package} is not installed. Fix: pip install "
                 f"{'scikit-image==0.26.0' if package == 'skimage' else package}")
    root = Path(list(spec.submodule_search_locations)[0])
    return root / "data" if package == "skimage" else root / "mpl-data" / "sample_data"


def main() -> None:
    from PIL import Image  # matplotlib's own dependency

    HERE.mkdir(parents=True, exist_ok=True)
    rows = ["name\tfile\tsource\tsource_sha256\twidth\theight\tlicence"]
    for name, (package, filename, licence) in SOURCES.items():
        source = _data_folder(package) / filename
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        with Image.open(source) as image:
            rgb = image.convert("RGB")
        target = HERE / f"{name}.jpg"
        rgb.save(target, quality=92, optimize=True)
        rows.append(f"{name}\t{target.name}\t{package}/{filename}\t{digest}\t{rgb.width}\t"
                    f"{rgb.height}\t{licence}")
        print(f"{target.relative_to(HERE.parents[1])}: {rgb.width}x{rgb.height}, "
              f"{target.stat().st_size / 1e3:.0f} kB")
    (HERE.parent / "images.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
