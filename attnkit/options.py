"""Global options, read with :func:`get_options` and set with :func:`set_options`.

``set_options`` works both as a plain call and as a context manager, like
``xarray.set_options``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_options", "set_options"]

_DEFAULTS: dict[str, Any] = {
    # attention_weights refuses to build a result larger than this many bytes.
    "weights_max_bytes": 2 * 1024**3,
    # What progress=None means for long-running multi-item work (MiniLM.run/embed, ablate):
    # a progress bar on stderr (True) or silence (False).
    "progress": False,
}
_OPTIONS: dict[str, Any] = dict(_DEFAULTS)


def get_options() -> dict[str, Any]:
    """Return a copy of the current options.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.get_options()["weights_max_bytes"] >= 1
    True
    """
    return dict(_OPTIONS)


def _check(name: str, value: Any) -> None:
    if name not in _DEFAULTS:
        raise ValueError(
            f"unknown option {name!r}; expected one of {sorted(_DEFAULTS)}. "
            "Fix: check the spelling."
        )
    if name == "weights_max_bytes" and (not isinstance(value, int) or value < 1):
        raise ValueError(
            f"weights_max_bytes: expected a positive int (bytes), got {value!r}. "
            "Fix: pass e.g. 4 * 1024**3 for 4 GiB."
        )
    if name == "progress" and not isinstance(value, bool):
        raise ValueError(f"progress: expected True or False, got {value!r}.")


class set_options:
    """Set options globally, or temporarily inside a ``with`` block.

    Parameters
    ----------
    weights_max_bytes : int
        Largest result :func:`attnkit.attention_weights` may allocate (default 2 GiB).
    progress : bool
        Whether long-running work (``MiniLM.run``, ``MiniLM.embed``,
        :func:`attnkit.ablate`) shows a progress bar on stderr when its own
        ``progress`` argument is left at None (default False). The CLI shows
        bars unless ``--quiet``.

    Examples
    --------
    >>> import attnkit as ak
    >>> with ak.set_options(weights_max_bytes=1024):
    ...     ak.get_options()["weights_max_bytes"]
    1024
    """

    def __init__(self, **kwargs: Any) -> None:
        for name, value in kwargs.items():
            _check(name, value)
        self._previous = {name: _OPTIONS[name] for name in kwargs}
        _OPTIONS.update(kwargs)

    def __enter__(self) -> "set_options":
        return self

    def __exit__(self, *exc) -> None:
        _OPTIONS.update(self._previous)
