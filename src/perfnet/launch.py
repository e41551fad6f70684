"""The ``perfnet`` console script: imports the CLI inside a guard so that Ctrl-C during start-up
(while numpy/torch load) ends with one line, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from perfnet.cli import main as cli_main

        code = cli_main()
    except KeyboardInterrupt:
        print("perfnet: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
