"""`python -m sharenorm` runs the command-line interface."""

from sharenorm.cli import main

raise SystemExit(main())
