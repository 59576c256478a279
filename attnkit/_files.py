"""Atomic file writes: write next to the target, then rename into place.

A reader never sees a half-written file, and a failed write leaves the
previous file untouched and no temporary file behind. Temporary files are
created private (mode 0600); before the rename they get the permissions a
normally created file would have (0666 minus the umask).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_file", "normal_mode"]


def normal_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file or directory here."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextlib.contextmanager
def atomic_file(path, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     target = os.path.join(tmp, "out.txt")
    ...     with atomic_file(target) as part:
    ...         _ = open(part, "w").write("done")
    ...     sorted(os.listdir(tmp)), open(target).read()
    (['out.txt'], 'done')
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, normal_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
