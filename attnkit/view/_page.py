"""Assemble the self-contained HTML page: inline CSS, inline JS, the data as inline JSON.

Nothing on the page is fetched: no URL, no CDN, no font or image file. A
Content-Security-Policy of ``default-src 'none'`` makes the browser refuse any
request the page might still try. Tokens reach the page only inside the JSON
block, with ``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``,
``\\u0026`` (so ``</script>`` cannot close the block), and the script puts
them into the DOM as text (``textContent``), never as markup.
"""

from __future__ import annotations

import html
import json
from importlib import resources

__all__ = ["page", "CSP"]

#: The page may run its own inline script and style, and fetch nothing.
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"


def _asset(name: str) -> str:
    return resources.files("attnkit.view").joinpath(name).read_text(encoding="utf-8")


def json_for_script(data) -> str:
    """JSON that is safe inside a ``<script>`` element whatever strings it holds.

    Examples
    --------
    >>> json_for_script({"token": "</script><b>"})
    '{"token":"\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page(payload: dict) -> str:
    """The complete HTML document for ``payload`` (see :mod:`attnkit.view._payload`)."""
    script, style = _asset("explorer.js"), _asset("explorer.css")
    for name, text in (("explorer.js", script), ("explorer.css", style)):
        if "</" in text.replace("<\\/", ""):  # would end the inline element early
            raise RuntimeError(f"{name} must not contain '</'")
    title = f"attnkit view: {payload['model'] or 'attention'}, sample {payload['sample']}"
    return (
        "<!DOCTYPE html>\n"
        "<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\n{style}</style>\n</head>\n<body>\n"
        "<div class=\"ak-root\" id=\"ak-root\"><noscript>This attention explorer needs "
        "JavaScript.</noscript></div>\n"
        f"<script type=\"application/json\" id=\"ak-data\">{json_for_script(payload)}</script>\n"
        f"<script>\n{script}</script>\n</body>\n</html>\n"
    )
