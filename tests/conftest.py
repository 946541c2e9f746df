"""Suite-wide settings: property tests are reproducible in CI (a fixed example sequence),
and explore new examples on a developer's machine; Ctrl-C raises KeyboardInterrupt however
the suite was started."""

import os
import signal

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# A command started in the background by a non-interactive shell (`make test &`, `nohup ... &`)
# begins with SIGINT ignored, so Python installs no KeyboardInterrupt handler, and the labs the
# tests start inherit the ignored signal. The tests that deliver Ctrl-C on purpose (to this
# process, or to a lab they start) need the usual handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _vector_kernels_env_restored():
    """`sharenorm lab` run in-process (tests/test_cli.py) pins the vector kernels in os.environ
    for the workers it spawns. Kept, later tests' workers would run AVX2 kernels beside this
    process's own, and "parallel == serial" would fail on an AVX-512 machine."""
    from sharenorm.lab.executors import VECTOR_ISA_ENV

    saved = {k: os.environ.get(k) for k in VECTOR_ISA_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
