"""`python -m gpucell.broker`: what `gpucell broker` runs."""

import sys

from gpucell.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["broker", *sys.argv[1:]]))
