"""``python -m tui [--connect SOCKET]``: the same as ``afb tui``."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tui",
                                     description="afb's terminal dashboard")
    parser.add_argument("--connect", metavar="SOCKET",
                        help="the daemon's control socket (default: found by itself)")
    args = parser.parse_args(argv)
    from tui.app import run

    return run(args.connect)


if __name__ == "__main__":
    sys.exit(main())
