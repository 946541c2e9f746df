"""The ``sharenorm`` command. Until the lab lands, ``sharenorm demo`` shows the norms."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sharenorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="a short demonstration of the norm layers")
    args = parser.parse_args(argv)
    if args.command == "demo":
        import torch

        import sharenorm as sn

        x = torch.randn(4, 8, 6, 6) * 3 + 2
        for kind in ("batch", "instance", "group", "layer"):
            y = sn.make_norm(kind, 8).train()(x)
            print(f"{kind:9s} mean={y.mean():+.4f} std={y.std():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
