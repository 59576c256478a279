"""Fresh random seeds for tests, replayable through $ATTNKIT_TEST_SEED.

A plain module (not conftest.py) so test modules can import it: several
conftest.py files exist (tests/, tests/cuda_sim/) and ``import conftest``
would pick whichever was loaded first.
"""

from __future__ import annotations

import os
import secrets

SEED_ENV = "ATTNKIT_TEST_SEED"


def fresh_seed() -> int:
    """A new random seed, or the one in $ATTNKIT_TEST_SEED to replay a failure."""
    fixed = os.environ.get(SEED_ENV)
    return int(fixed) if fixed else secrets.randbits(63)
