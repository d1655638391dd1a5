"""python -m rlsd_min: the command line (rlsd_min.lab.cli)."""

from .lab.cli import main

if __name__ == "__main__":
    main()
