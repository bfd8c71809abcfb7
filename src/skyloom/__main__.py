"""`python -m skyloom …` (what `torchrun -m skyloom train …` runs)."""

from skyloom.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
