"""`python -m bitttt ...`: the same command line as the `bitttt` script."""

from bitttt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
