"""Code filters for GitHub-like files, after RedPajama's GitHub rules (line lengths, alphanumeric share,
auto-generated markers, extension allow-list) with the report's twist: data/markup formats (json, xml, yaml,
html …) are not removed wholesale but kept in a configurable proportion (chosen by a stable hash of the
content, so reruns keep the same files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from skyloom.data.pipeline.base import SkyFilter
from skyloom.data.pipeline.text import stable_hash64

_CODE_EXT = [
    "py",
    "pyi",
    "ipynb",
    "c",
    "h",
    "cc",
    "cpp",
    "cxx",
    "hpp",
    "hh",
    "cu",
    "cuh",
    "java",
    "kt",
    "kts",
    "scala",
    "go",
    "rs",
    "js",
    "jsx",
    "mjs",
    "ts",
    "tsx",
    "rb",
    "php",
    "pl",
    "pm",
    "swift",
    "m",
    "mm",
    "cs",
    "fs",
    "vb",
    "lua",
    "r",
    "jl",
    "hs",
    "ml",
    "mli",
    "ex",
    "exs",
    "erl",
    "clj",
    "cljs",
    "dart",
    "sh",
    "bash",
    "zsh",
    "ps1",
    "bat",
    "sql",
    "f",
    "f90",
    "f95",
    "for",
    "pas",
    "asm",
    "s",
    "v",
    "sv",
    "vhd",
    "vhdl",
    "groovy",
    "gradle",
    "cmake",
    "mk",
    "makefile",
    "dockerfile",
    "tex",
    "md",
    "rst",
    "proto",
    "thrift",
    "graphql",
    "css",
    "scss",
    "less",
    "vue",
    "svelte",
    "elm",
    "nim",
    "zig",
    "sol",
    "tf",
    "hcl",
    "nix",
    "rkt",
    "scm",
    "lisp",
    "el",
    "vim",
    "awk",
]
_DATA_EXT = ["json", "jsonl", "xml", "yaml", "yml", "html", "htm", "csv", "tsv", "toml", "ini", "cfg", "svg"]
_AUTOGEN = re.compile(
    r"(?:auto[- ]?generated|automatically generated|machine[- ]generated)\s+(?:by|from|file|code|using|with|\W)|"
    r"generated (?:by|from|with|using) \S+|do not (?:edit|modify)|@generated|"
    r"this (?:file|code) (?:is|was|has been) (?:auto|automatically|machine|generated)",
    re.I,
)


@dataclass
class CodeConfig:
    """``code_filter`` step: applies to ``kind: code`` documents only."""

    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    min_alpha_token_ratio: float = 0.0  # RedPajama's alpha-tokens/tokens ≥ 1.5 needs a tokenizer; off by default
    autogen_header_lines: int = 5  # look for "auto-generated" markers in this many first lines (0: off)
    allowed_extensions: list[str] = field(default_factory=lambda: list(_CODE_EXT))
    data_extensions: list[str] = field(default_factory=lambda: list(_DATA_EXT))
    data_keep_fraction: float = 0.3  # share of data/markup files kept (report: "a judicious proportion")
    min_chars: int = 20
    max_chars: int = 1_000_000

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if not 0 <= self.data_keep_fraction <= 1:
            raise ConfigError("data_keep_fraction", "must be within [0, 1]")


def extension_of(doc) -> str:
    md = doc.metadata
    ext = md.get("extension")
    if not ext:
        path = str(md.get("path") or md.get("file") or "")
        name = path.rsplit("/", 1)[-1].lower()
        if name.endswith(".gz"):
            name = name[:-3]
        ext = name.rsplit(".", 1)[-1] if "." in name else name
    return str(ext).lower()


class CodeFilter(SkyFilter):
    name = "💻 Code"
    default_reason = "code"

    def __init__(self, cfg: CodeConfig):
        super().__init__()
        self.cfg = cfg

    def filter(self, doc) -> bool | tuple[bool, str]:
        if doc.metadata.get("kind") != "code":
            return True
        c = self.cfg
        ext = extension_of(doc)
        doc.metadata["extension"] = ext
        text = doc.text
        if len(text) < c.min_chars:
            return False, "code_too_short"
        if len(text) > c.max_chars:
            return False, "code_too_long"
        if ext in c.data_extensions:
            share = (stable_hash64(text) % 10_000) / 10_000
            if share >= c.data_keep_fraction:
                return False, "code_data_format_sampled_out"
        elif ext not in c.allowed_extensions:
            return False, "code_extension"
        lines = text.split("\n")
        lengths = [len(ln) for ln in lines]
        if max(lengths) > c.max_line_length:
            return False, "code_max_line_length"
        if sum(lengths) / len(lines) > c.max_mean_line_length:
            return False, "code_mean_line_length"
        alnum = sum(ch.isalnum() for ch in text)
        if alnum / len(text) < c.min_alnum_fraction:
            return False, "code_alnum_fraction"
        if c.min_alpha_token_ratio:
            tokens = re.findall(r"\S+", text)
            alpha = sum(t.isalpha() for t in tokens)
            if tokens and alpha / len(tokens) < c.min_alpha_token_ratio:
                return False, "code_alpha_tokens"
        if c.autogen_header_lines and _AUTOGEN.search("\n".join(lines[: c.autogen_header_lines])):
            return False, "code_autogenerated"
        return True
