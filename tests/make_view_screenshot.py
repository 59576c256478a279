"""Save the README's screenshot of the HTML view: a shipped sentence in headless Chromium.

    .venv/bin/python tests/make_view_screenshot.py            # -> docs/images/view.png

Uses the browser harness of the tests (tests/browser.py): the page ``ak.view`` makes
for sentence 8 of the shipped MiniLM dataset, with one token hovered, cropped to the
page's content and reduced to a 256-colour palette (well under 300 KB).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402

DEFAULT_OUTPUT = browser.REPO / "docs" / "images" / "view.png"
#: The token hovered in the screenshot ("suggestions").
HOVERED = 6
WINDOW = (1400, 1300)


def make(output=DEFAULT_OUTPUT, sample=browser.SENTENCE, hovered=HOVERED) -> Path:
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    output = Path(output)
    page = browser.shipped_view(sample)
    with tempfile.TemporaryDirectory() as tmp, browser.chrome(window=WINDOW) as driver:
        url = browser.load(driver, page.save(Path(tmp) / "view.html"))
        errors, requests = browser.console_errors(driver), browser.network_requests(driver)
        if errors or requests != [url]:
            raise SystemExit(f"the page logged errors {errors} or sent requests {requests}")
        token = driver.find_element(By.CSS_SELECTOR, f'#ak-queries .ak-tok[data-i="{hovered}"]')
        ActionChains(driver).move_to_element(token).perform()
        png = browser.screenshot(driver)
        height = driver.execute_script(
            "return document.getElementById('ak-root').getBoundingClientRect().bottom") + 4
    if browser.is_blank(png):
        raise SystemExit("the screenshot is blank")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, int(height))))
    small = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    output.parent.mkdir(parents=True, exist_ok=True)
    small.save(output, optimize=True)
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--sample", type=int, default=browser.SENTENCE)
    args = parser.parse_args(argv)
    path = make(args.output, args.sample)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
