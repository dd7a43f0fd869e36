"""Write a grid of synthetic-world samples with their captions under them, for a person to look at.

    python examples/world_gallery.py --out grid.png [--seed 0] [--n 24] [--split train]

Under each picture: its canonical caption (white) and one sampled phrasing (yellow). Tiles keep the pictures'
aspect ratios; the thin frame marks the central square that CLIP's center crop keeps.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import cv2
import numpy as np

from edgeclip.world import SPLITS, World

FONT = cv2.FONT_HERSHEY_SIMPLEX


def tile(image: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]], size: int, text_rows: int) -> np.ndarray:
    """One picture letterboxed into a size x size square, with text rows below."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    row_h = 15
    out = np.full((size + text_rows * row_h + 8, size, 3), 40, np.uint8)
    y0, x0 = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    side = min(small.shape[:2])
    cy, cx = y0 + (small.shape[0] - side) // 2, x0 + (small.shape[1] - side) // 2
    cv2.rectangle(out, (cx, cy), (cx + side - 1, cy + side - 1), (90, 90, 90), 1)
    rows = [(line, color) for text, color in lines for line in textwrap.wrap(text, width=size // 7)]
    if len(rows) > text_rows:
        rows = [*rows[: text_rows - 1], (rows[text_rows - 1][0] + " ...", rows[text_rows - 1][1])]
    for i, (line, color) in enumerate(rows):
        cv2.putText(out, line, (4, size + row_h * (i + 1)), FONT, 0.38, color, 1, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=24, help="number of samples")
    parser.add_argument("--cols", type=int, default=6)
    parser.add_argument("--size", type=int, default=240, help="tile side in pixels")
    parser.add_argument("--split", choices=SPLITS, default="train")
    args = parser.parse_args()

    world = World(args.seed)
    rng = np.random.default_rng(args.seed)
    tiles = []
    for _ in range(args.n):
        scene = world.sample_scene(rng, args.split)
        image = world.render(scene, rng)
        lines = [(world.canonical_caption(scene), (255, 255, 255)), (world.captions(scene, rng)[0], (255, 220, 90))]
        tiles.append(tile(image, lines, args.size, text_rows=8))
    blank = np.full_like(tiles[0], 40)
    tiles += [blank] * (-len(tiles) % args.cols)
    rows = [np.hstack(tiles[i : i + args.cols]) for i in range(0, len(tiles), args.cols)]
    grid = np.vstack(rows)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"could not write {args.out}: check that its folder exists and ends in .png")
    print(f"wrote {args.out}: {args.n} samples, {grid.shape[1]}x{grid.shape[0]} pixels")


if __name__ == "__main__":
    main()
