"""`python -m gpucell.broker`: what `gpucell broker` runs, without the rest of the CLI."""

from gpucell.broker.command import main

if __name__ == "__main__":
    raise SystemExit(main())
