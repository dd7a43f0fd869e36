"""Search: an on-disk index of image embeddings, text-to-image and image-to-image search, captions by retrieval.

    from edgeclip.search import build_index, local_embedder, model_identity, SearchIndex
    model = edgeclip.load()
    build_index(["photos/"], "photos.index", model_identity(model), local_embedder(model))
    hits = SearchIndex("photos.index").search(model.encode_text("a red star"), top_k=5)

Uses the runtime's public API only. Needs pyarrow (the [search] extra; FAISS too for the approximate index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edgeclip.search.index import Embedder, IndexReport, build_index, check_same_model, model_identity, scan
from edgeclip.search.search import Hit, SearchIndex, exact_top_k
from edgeclip.search.store import IndexManifest, SearchIndexError

if TYPE_CHECKING:
    from edgeclip.runtime import ImageEmbeddings, Model

__all__ = [
    "Embedder",
    "Hit",
    "IndexManifest",
    "IndexReport",
    "SearchIndex",
    "SearchIndexError",
    "build_index",
    "check_same_model",
    "exact_top_k",
    "local_embedder",
    "model_identity",
    "scan",
]


def local_embedder(model: Model, batch: int | None = None) -> Embedder:
    """Embed in this process with `model`, `batch` images per call."""

    def embed(paths: Sequence[str], on_progress: Callable[[int], None] | None) -> ImageEmbeddings:
        return model.encode_image_files(list(paths), batch_size=batch, on_progress=on_progress)

    return embed
