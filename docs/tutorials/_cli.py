"""The command line that every tutorial script shares: `--smoke` and `--out`."""

import argparse
import pathlib


# The docs' figures: where a full run of a tutorial puts its figure.
FIGURES = pathlib.Path(__file__).resolve().parents[1] / "figures"


def parse_args(doc: str | None, smoke: str) -> argparse.Namespace:
    """Parse `--smoke` (described by `smoke`) and `--out` (default: `FIGURES`)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=FIGURES,
        help="where the figure goes (default: the docs' figures)",
    )
    return parser.parse_args()
