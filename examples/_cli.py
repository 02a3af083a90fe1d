"""What every example script shares: its command line and how it saves its figure."""

import argparse
import pathlib


# `examples/out`, wherever the script is run from.
OUT = pathlib.Path(__file__).resolve().parent / "out"


def example_parser(
    doc: str | None, smoke: str = "a few steps only"
) -> argparse.ArgumentParser:
    """A parser with `--smoke` (described by `smoke`) and `--out` (a folder, default
    `examples/out`); an example adds its own options to it."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=OUT,
        help="where the figure goes (default: examples/out)",
    )
    return parser


def save_figure(fig, path: pathlib.Path, dpi: int = 120) -> None:
    """Save `fig` as `path`, creating its folder, and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    print(f"saved {path}")
