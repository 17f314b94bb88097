"""``python -m serving``: the same command as ``python -m buildsys serve``."""

import argparse
import sys

from serving import cli


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=cli.HELP)
    cli.configure_parser(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
