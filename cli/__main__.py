from attnkit_cli.main import cli

cli(prog_name="attnkit")
