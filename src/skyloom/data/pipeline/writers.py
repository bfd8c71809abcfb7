"""Writers (datatrove JsonlWriter / ParquetWriter subclasses): stage hand-over files, the Main/STEM outputs, rejects."""

from __future__ import annotations

import dataclasses
import os

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.pipeline.writers.parquet import ParquetWriter

# Metadata that stays internal to the pipeline (positions, hand-over bookkeeping).
_INTERNAL = {"file_path", "minhash_cluster_id", "duplicate_count", "filter_reason", "content_type", "_sem_idx"}

# Output record: these metadata keys first (when present), then the rest.
OUTPUT_KEYS = (
    "source",
    "language",
    "language_score",
    "quality_score",
    "quality_bucket",
    "subset",
    "stem_score",
    "url",
    "title",
    "date",
    "kind",
)


class HandoverWriter(JsonlWriter):
    """``<folder>/<rank>.jsonl.gz`` for the next stage; always creates the file (even with no documents) so
    the next stage's file sharding gives task *r* exactly the file that task *r* wrote."""

    name = "🤝 Hand-over"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.jsonl.gz", compression="gzip")

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        wrote = False
        with self:
            for document in data:
                with self.track_time():
                    self.write(document, rank)
                wrote = True
                yield document
        if not wrote:
            with self.output_folder.open(f"{rank:05d}.jsonl.gz", "wb", compression="gzip"):
                pass


def _output_adapter(self, document: Document) -> dict:
    md = {k: v for k, v in document.metadata.items() if k not in _INTERNAL and v is not None}
    ordered = {k: md.pop(k) for k in OUTPUT_KEYS if k in md}
    ordered.update(md)
    return {"text": document.text, "id": document.id, "metadata": ordered}


class SubsetWriter(JsonlWriter):
    """The pipeline's result: ``<out>/<subset>/<rank>.jsonl.gz`` with subset ``main`` or ``stem``.

    Records are ``{"text", "id", "metadata": {source, language, language_score, quality_score,
    quality_bucket, subset, url, title, date, …}}`` — what ``skyloom data pack`` reads.
    """

    name = "🧵 SkyPile output"

    def __init__(self, output_folder: str, compression: str | None = "gzip"):
        suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"
        super().__init__(
            output_folder,
            output_filename="${subset}/${rank}" + suffix,
            compression=compression,
            adapter=_output_adapter,
        )

    def write(self, document: Document, rank: int = 0, **kwargs):
        document.metadata.setdefault("subset", "main")
        super().write(document, rank, **kwargs)


def _parquet_adapter(self, document: Document) -> dict:
    """One fixed schema for every row — datatrove's ParquetWriter otherwise takes it from the first document, and
    metadata keys differ between documents — with ``metadata`` the jsonl output's object as a JSON string, which
    datatrove's ParquetReader turns back into a dict."""
    import orjson

    rec = _output_adapter(self, document)
    return {**rec, "metadata": orjson.dumps(rec["metadata"]).decode("utf-8")}


class ParquetSubsetWriter(ParquetWriter):
    """``output_format: parquet``: the same records as `SubsetWriter`, in ``<out>/<subset>/<rank>.parquet``.

    Columns ``text``, ``id`` (strings) and ``metadata`` (a JSON string: {source, language, quality_bucket, …}).
    """

    name = "🧵 SkyPile output (Parquet)"

    def __init__(self, output_folder: str, compression: str | None = "gzip"):
        import pyarrow as pa

        schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("metadata", pa.string())])
        super().__init__(
            output_folder,
            output_filename="${subset}/${rank}.parquet",
            compression=compression,
            adapter=_parquet_adapter,
            schema=schema,
            max_file_size=-1,  # one file per subset and task, like the jsonl output
        )

    def write(self, document: Document, rank: int = 0, **kwargs):
        document.metadata.setdefault("subset", "main")
        super().write(document, rank, **kwargs)


def _reject_adapter(self, document: Document) -> dict:
    return {"text": document.text, "id": document.id, "metadata": dict(document.metadata)}


class RejectsWriter(JsonlWriter):
    """Dropped documents of one step, with ``drop_reason`` and ``drop_step`` in their metadata."""

    name = "🗑 Rejects"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.jsonl.gz", compression="gzip", adapter=_reject_adapter)

    def write(self, document: Document, rank: int = 0, **kwargs):
        super().write(dataclasses.replace(document, metadata=dict(document.metadata)), rank, **kwargs)


def output_files(out_dir: str, subset: str) -> list[str]:
    folder = os.path.join(out_dir, subset)
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.endswith((".jsonl", ".jsonl.gz", ".parquet"))
    )
