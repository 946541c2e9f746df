"""Suite-wide settings: property tests are reproducible in CI (a fixed example sequence),
and explore new examples on a developer's machine."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
