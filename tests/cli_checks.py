"""Assertions shared by the CLI test modules."""


def assert_user_error(result, *fragments):
    """Exit code 2, a single 'Error:' line naming the problem, no traceback.

    Returns that line, for further checks.
    """
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
