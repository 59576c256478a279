"""``python -m attnkit``: the same as the ``attnkit`` command."""

from attnkit_cli.main import cli

cli(prog_name="attnkit")
