"""Suite-wide settings: property tests are reproducible in CI (a fixed example sequence),
and explore new examples on a developer's machine; Ctrl-C raises KeyboardInterrupt however
the suite was started."""

import os
import signal

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
