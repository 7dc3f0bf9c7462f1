"""`python -m mrdib_cli` is the same as the `mrdib` console script (and what torchrun launches)."""

from mrdib_cli.cli.app import main

if __name__ == "__main__":
    main()
