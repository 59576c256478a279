"""The progress option: progress=None follows ak.set_options(progress=...)."""

import attnkit as ak
from attnkit._progress import progress_bar


def run(progress):
    with progress_bar(progress, 3, "work-label") as advance:
        for _ in range(3):
            advance(1)


def test_none_is_silent_by_default(capsys):
    assert ak.get_options()["progress"] is False
    run(None)
    assert capsys.readouterr().err == ""


def test_the_option_turns_bars_on_for_progress_none(capsys):
    with ak.set_options(progress=True):
        run(None)
    assert "work-label" in capsys.readouterr().err
    run(None)  # the option is restored after the block
    assert capsys.readouterr().err == ""


def test_an_explicit_argument_wins_over_the_option(capsys):
    seen = []
    with ak.set_options(progress=True):
        run(False)
        run(lambda done, total: seen.append((done, total)))
    assert capsys.readouterr().err == ""
    assert seen == [(1, 3), (2, 3), (3, 3)]
