"""A page of search results with thumbnails, for a person to look at."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from edgeclip.fileio import atomic_write
from edgeclip.search.search import Hit

THUMB_SIDE = 192


def thumbnail_data_uri(path: str, side: int = THUMB_SIDE) -> str | None:
    """A small JPEG of the image as a data: URI (the page stands alone), or None where it cannot be read now."""
    import cv2
    import numpy as np

    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return None
    scale = side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg.tobytes()).decode()}" if ok else None


def write_results_page(out: Path, query: str, hits: Sequence[Hit]) -> None:
    cards = []
    for rank, hit in enumerate(hits, start=1):
        uri = thumbnail_data_uri(hit.path)
        img = f'<img src="{uri}" alt="">' if uri else '<div class="gone">(cannot be read now)</div>'
        cards.append(
            f"<figure>{img}<figcaption>#{rank} <b>{hit.score:.4f}</b><br>{html.escape(hit.path)}</figcaption></figure>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeclip search: {html.escape(query)}</title>
<style>body{{font-family:sans-serif;margin:1em}} figure{{display:inline-block;width:{THUMB_SIDE + 16}px;
margin:6px;vertical-align:top}} figcaption{{font-size:12px;word-break:break-all}} .gone{{height:{THUMB_SIDE}px}}</style>
</head><body><h1>{html.escape(query)}</h1><p>{len(hits)} results, best first (cosine similarity)</p>
{"".join(cards)}
</body></html>
"""
    with atomic_write(out) as f:
        f.write(page.encode("utf-8"))
