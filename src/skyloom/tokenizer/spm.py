"""SentencePiece `.model` files → Hugging Face `tokenizer.json`, with every id kept.

LLaMA, Mistral and Skywork ship SentencePiece models; the report extends LLaMA's. The `.model` file is a
protobuf `ModelProto`; the handful of fields needed here are read with a small wire-format reader, so neither
`sentencepiece` nor `protobuf` is needed at run time (tests compare against `sentencepiece` itself).

The conversion follows SentencePiece's own semantics: a dummy "▁" prefix and spaces as "▁" (normalizer),
byte-fallback pieces `<0xNN>`, and BPE merges derived from the pieces' scores (a pair merges into a piece
with the piece's score as priority, exactly the order SentencePiece's BPE encoder uses). Because pieces of
models trained with `split_by_whitespace` never hold "▁" except at their start, the text can be cut before
each run of "▁" without changing a single id — which lets `tokenizers` cache words and encode far faster.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from skyloom.tokenizer.extend import added_token_entry

SPACE = "\u2581"  # ▁

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


@dataclass
class Piece:
    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class SentencePieceModel:
    """The parts of a SentencePiece `ModelProto` that decide how text is cut."""

    pieces: list[Piece]
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    split_by_whitespace: bool = True
    treat_whitespace_as_suffix: bool = False
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str = "<pad>"
    normalizer_name: str = "nmt_nfkc"
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    extra: dict = field(default_factory=dict)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield number, wire, value


def read_model(path: str | Path) -> SentencePieceModel:
    """Parse a SentencePiece `.model` file."""
    data = Path(path).read_bytes()
    model = SentencePieceModel(pieces=[])
    try:
        for number, _, value in _fields(data):
            if number == 1:
                piece = Piece("")
                for n, _, v in _fields(value):
                    if n == 1:
                        piece.piece = v.decode("utf-8")
                    elif n == 2:
                        piece.score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        piece.type = v
                model.pieces.append(piece)
            elif number == 2:
                for n, _, v in _fields(value):
                    if n == 3:
                        model.model_type = v
                    elif n == 35:
                        model.byte_fallback = bool(v)
                    elif n == 22:
                        model.split_by_whitespace = bool(v)
                    elif n == 24:
                        model.treat_whitespace_as_suffix = bool(v)
                    elif n in (45, 46, 47, 48):
                        setattr(
                            model,
                            {45: "unk_piece", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}[n],
                            v.decode("utf-8"),
                        )
            elif number == 3:
                for n, _, v in _fields(value):
                    if n == 1:
                        model.normalizer_name = v.decode("utf-8")
                    elif n == 2:
                        model.precompiled_charsmap = bytes(v)
                    elif n == 3:
                        model.add_dummy_prefix = bool(v)
                    elif n == 4:
                        model.remove_extra_whitespaces = bool(v)
                    elif n == 5:
                        model.escape_whitespaces = bool(v)
    except (ValueError, UnicodeDecodeError, struct.error) as err:
        raise ValueError(f"{path}: not a SentencePiece model ({err})") from None
    if not model.pieces:
        raise ValueError(f"{path}: not a SentencePiece model (no pieces)")
    return model


def bpe_merges(pieces: list[Piece]) -> list[tuple[str, str]]:
    """Merges that reproduce SentencePiece BPE: every split of a piece into two pieces, ordered by the
    merged piece's score (higher first). SentencePiece breaks ties between equal scores (e.g. the
    whitespace-run pieces) by position, growing the leftmost piece; ranking longer results and longer left
    parts first reproduces that growth."""
    ids = {p.piece: i for i, p in enumerate(pieces) if p.type in (NORMAL, USER_DEFINED, UNUSED)}
    ranked: list[tuple[float, int, int, int, int, str, str]] = []
    for _i, p in enumerate(pieces):
        if p.type != NORMAL or len(p.piece) < 2:
            continue
        text = p.piece
        for k in range(1, len(text)):
            left, right = text[:k], text[k:]
            if left in ids and right in ids:
                ranked.append((-p.score, -len(text), -k, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def to_tokenizer_json(model: SentencePieceModel, source: str = "") -> dict:
    """A `tokenizer.json` document (as a dict) equivalent to the SentencePiece model, ids unchanged."""
    if model.treat_whitespace_as_suffix:
        raise ValueError(f"{source}: SentencePiece models with treat_whitespace_as_suffix are not supported")
    vocab = {p.piece: i for i, p in enumerate(model.pieces)}
    if len(vocab) != len(model.pieces):
        raise ValueError(f"{source}: duplicate pieces in SentencePiece model")
    added = [
        added_token_entry(p.piece, i, special=p.type != USER_DEFINED)
        for i, p in enumerate(model.pieces)
        if p.type in (UNKNOWN, CONTROL, USER_DEFINED)
    ]
    unk = next((p.piece for p in model.pieces if p.type == UNKNOWN), None)
    if model.model_type == BPE:
        model_json = {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": model.byte_fallback,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in bpe_merges(model.pieces)],
        }
    elif model.model_type == UNIGRAM:
        unk_id = next((i for i, p in enumerate(model.pieces) if p.type == UNKNOWN), None)
        model_json = {
            "type": "Unigram",
            "unk_id": unk_id,
            "byte_fallback": model.byte_fallback,
            "vocab": [[p.piece, p.score] for p in model.pieces],
        }
    else:
        raise ValueError(f"{source}: SentencePiece model type {model.model_type} (WORD/CHAR) is not supported")

    normalizers: list[dict] = []
    if model.precompiled_charsmap:
        normalizers.append(
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(model.precompiled_charsmap).decode()}
        )
    if model.remove_extra_whitespaces:
        normalizers.append({"type": "Strip", "strip_left": True, "strip_right": True})
        normalizers.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    if model.add_dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": SPACE})
    if model.escape_whitespaces:
        normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})

    # Cutting before each run of ▁ is exact only when no piece holds ▁ after a non-▁ character.
    inner_space = any(SPACE in p.piece.lstrip(SPACE) for p in model.pieces if p.type == NORMAL)
    pre_tokenizer = None
    if model.model_type == BPE and model.escape_whitespaces and not inner_space:
        pre_tokenizer = {
            "type": "Split",
            "pattern": {"Regex": f"{SPACE}*[^{SPACE}]+|{SPACE}+"},
            "behavior": "Isolated",
            "invert": False,
        }

    decoders: list[dict] = []
    if model.escape_whitespaces:
        decoders.append({"type": "Replace", "pattern": {"String": SPACE}, "content": " "})
    if model.byte_fallback:
        decoders.append({"type": "ByteFallback"})
    decoders.append({"type": "Fuse"})
    if model.add_dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers} if normalizers else None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model_json,
    }


def special_pieces(model: SentencePieceModel) -> dict[str, str]:
    """The model's own BOS/EOS/UNK/PAD pieces, where it has them (keys as in tokenizer_config.json)."""
    present = {p.piece for p in model.pieces if p.type in (UNKNOWN, CONTROL, USER_DEFINED)}
    out = {}
    for key, piece in (
        ("unk_token", model.unk_piece),
        ("bos_token", model.bos_piece),
        ("eos_token", model.eos_piece),
        ("pad_token", model.pad_piece),
    ):
        if piece in present:
            out[key] = piece
    return out
