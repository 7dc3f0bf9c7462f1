"""`python -m mrdib_cli` is the same as the `mrdib` console script (and what torchrun launches)."""

import sys

from mrdib_cli.job import INTERRUPTED, leave_error, one_interrupt_per_press


def run() -> None:
    """The command line. Its imports take a second or two; a Ctrl-C during them is said in one line, like any
    other interruption, instead of a traceback through the import machinery."""
    with one_interrupt_per_press():  # main() holds its own while it runs
        try:
            from mrdib_cli.cli.app import main
        except KeyboardInterrupt:
            if not leave_error(INTERRUPTED):
                sys.stderr.write("error: interrupted\n")
            raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
