"""attnkit's command-line interface (console script ``attnkit``).

Installed as ``attnkit_cli`` so the name cannot clash with other packages'
``cli``. Commands only parse arguments, call the public API and write output.
"""
