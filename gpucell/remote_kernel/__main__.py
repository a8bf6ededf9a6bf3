"""`python -m gpucell.remote_kernel`: start one worker (what `gpucell worker` runs)."""

from gpucell.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["worker", *__import__("sys").argv[1:]]))
