"""A progress reporter shared by the model and ablation loops.

``progress`` arguments accept ``None`` (the ``progress`` option of
:func:`attnkit.set_options`, False by default), ``False`` (silent), ``True``
(a click progress bar on stderr) or a callable ``f(done, total)`` called
after every step.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(progress, total: int, label: str):
    """Yield ``advance(n)``, which reports ``n`` more finished items.

    Examples
    --------
    >>> seen = []
    >>> with progress_bar(lambda done, total: seen.append((done, total)), 3, "x") as advance:
    ...     advance(2)
    ...     advance(1)
    >>> seen
    [(2, 3), (3, 3)]
    """
    if progress is None:
        from .options import get_options

        progress = get_options()["progress"]
    if progress is False:
        yield lambda n: None
        return
    if callable(progress) and progress is not True:
        done = 0

        def advance(n):
            nonlocal done
            done += n
            progress(done, total)

        yield advance
        return
    if progress is not True:
        raise TypeError(f"progress: expected True, False or a callable f(done, total), got "
                        f"{type(progress).__name__}. Fix: pass progress=True for a progress bar")
    import click

    with click.progressbar(length=total, label=label, file=sys.stderr,
                           show_pos=True, show_eta=True) as bar:
        yield bar.update
