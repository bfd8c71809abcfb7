"""Chat templates by name: how a conversation becomes token ids, with the trainable part marked.

A template renders a conversation as *segments*: ("prompt" | "answer", pieces) where a piece is text or a
special-token name. Each segment is tokenised on its own and the ids are concatenated, so the boundary
between prompt and answer is exact (the SkyMath authors' loader does the same: prompt and answer encoded
separately, prompt labels -100). Special tokens are inserted by id, never by spelling them in text — a
literal "[SEP]" inside a question stays characters.

Templates:
* `skywork` — the released Skywork chat/math format: `EOS BOS [USER]{question}[SEP][BOT]` and the answer
  `{answer}[SEP]`; further turns repeat `[USER]…[SEP][BOT]…[SEP]`. BOS is left out when the tokenizer has none.
* `plain` — no new tokens: `User: {question}\nAssistant: ` and the answer `{answer}` + EOS.

Each template also has a Jinja form (`jinja`) written into the exported tokenizer_config.json, so
`transformers`' `tokenizer.apply_chat_template` produces the same ids (tested). A control token typed in a message
is text in skyloom, cut out of the text as transformers' `sanitize_control_tokens=True` does (same ids); the Jinja
refuses such a message otherwise, since plain transformers would encode it as the token (docs/model.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A piece is plain text, or ("special", name) for a token inserted by id ("eos", "bos" or a literal token).
Piece = str | tuple[str, str]


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    added_tokens: tuple[str, ...]  # special tokens the template needs in the vocabulary
    jinja: str
    stop_tokens: tuple[str, ...]  # generation stops at any of these (besides EOS)

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> list[tuple[bool, list[Piece]]]:
        """[(trainable, pieces)]: assistant turns are trainable, everything else is prompt."""
        raise NotImplementedError


def _fold_system(messages: Sequence[Message]) -> list[Message]:
    """A system message is prepended to the first user turn (neither template has a system slot)."""
    out: list[Message] = []
    system = ""
    for m in messages:
        if m.role == "system":
            system += m.content.strip() + "\n\n"
        elif m.role == "user" and system:
            out.append(Message("user", system + m.content))
            system = ""
        else:
            out.append(m)
    return out


def _check_roles(messages: Sequence[Message]) -> None:
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant"):
            raise ValueError(f"message {i}: unknown role {m.role!r} (expected system, user or assistant)")
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            raise ValueError(f"message {i}: expected a {want} turn, got {m.role} (turns must alternate, user first)")


class SkyworkTemplate(ChatTemplate):
    def render(self, messages, add_generation_prompt=False):
        msgs = _fold_system(messages)
        _check_roles(msgs)
        segments: list[tuple[bool, list[Piece]]] = []
        prompt: list[Piece] = [("special", "eos"), ("special", "bos")]
        for m in msgs:
            if m.role == "user":
                prompt += [("special", "[USER]"), m.content, ("special", "[SEP]"), ("special", "[BOT]")]
            else:
                segments.append((False, prompt))
                segments.append((True, [m.content, ("special", "[SEP]")]))
                prompt = []
        if prompt and (add_generation_prompt or not segments):
            segments.append((False, prompt))
        return segments


class PlainTemplate(ChatTemplate):
    def render(self, messages, add_generation_prompt=False):
        msgs = _fold_system(messages)
        _check_roles(msgs)
        segments: list[tuple[bool, list[Piece]]] = []
        prompt: list[Piece] = []
        for m in msgs:
            if m.role == "user":
                prompt += [f"User: {m.content}\nAssistant: "]
            else:
                segments.append((False, prompt))
                segments.append((True, [m.content, ("special", "eos")]))
                prompt = []
        if prompt and (add_generation_prompt or not segments):
            segments.append((False, prompt))
        return segments


# transformers' `apply_chat_template(..., sanitize_control_tokens=True)` wraps each control token found in a message
# in these private-use characters before rendering, then encodes the wrapped token as text (transformers ≥ 5.x).
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


def _control_token_guard(tokens: Sequence[str]) -> str:
    """Jinja that refuses a message holding a control token typed as text (unless transformers marked it for
    encoding as text): without this, transformers would turn a user's literal `[SEP]` into the turn-end token,
    while skyloom keeps it text."""
    names = ", ".join([f"'{t}'" for t in tokens] + ["eos_token", "bos_token", "pad_token", "unk_token"])
    return (
        f"{{% set control = [{names}] | select | list %}}"
        "{% set guard = namespace(text='') %}"
        "{% for m in messages %}{% if m['content'] is string %}{% set guard.text = m['content'] %}"
        f"{{% for c in control %}}{{% set guard.text = guard.text | replace('{_MARK_START}' ~ c ~ '{_MARK_END}', '') %}}"
        "{% endfor %}{% for c in control %}{% if c in guard.text %}"
        "{{ raise_exception('a ' ~ m['role'] ~ ' message holds the control token ' ~ c ~ ' as text: pass "
        "sanitize_control_tokens=True to apply_chat_template to encode it as text, as skyloom does') }}"
        "{% endif %}{% endfor %}{% endif %}{% endfor %}"
    )


_SKYWORK_JINJA = _control_token_guard(("[USER]", "[BOT]", "[SEP]")) + (
    "{{ eos_token }}{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% set sys = namespace(text='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set sys.text = sys.text + (m['content'] | trim) + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[USER]{{ sys.text }}{{ m['content'] }}[SEP][BOT]{% set sys.text = '' %}"
    "{% else %}{{ m['content'] }}[SEP]{% endif %}"
    "{% endfor %}"
)
_PLAIN_JINJA = _control_token_guard(()) + (
    "{% set sys = namespace(text='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set sys.text = sys.text + (m['content'] | trim) + '\n\n' %}"
    "{% elif m['role'] == 'user' %}User: {{ sys.text }}{{ m['content'] }}\nAssistant: {% set sys.text = '' %}"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES: dict[str, ChatTemplate] = {
    "skywork": SkyworkTemplate("skywork", ("[USER]", "[BOT]", "[SEP]"), _SKYWORK_JINJA, ("[SEP]",)),
    "plain": PlainTemplate("plain", (), _PLAIN_JINJA, ()),
}


def chat_stop_tokens(chat_template: str | None, token_to_id: Callable[[str], int | None]) -> tuple[str, ...]:
    """The turn-end tokens of the template a tokenizer_config.json's `chat_template` holds (`[SEP]` for skywork),
    so an export can tell `generate` where an answer ends: the template whose Jinja it is, else (a template
    written by an older skyloom) the one whose tokens are all in the vocabulary and whose stop tokens it spells."""
    if not chat_template:
        return ()
    for t in TEMPLATES.values():
        if chat_template == t.jinja:
            return t.stop_tokens
    for t in TEMPLATES.values():
        known = t.added_tokens and all(token_to_id(tok) is not None for tok in t.added_tokens)
        if known and all(tok in chat_template for tok in t.stop_tokens):
            return t.stop_tokens
    return ()


def _special_added_tokens(tokenizer) -> set[str]:
    """The special tokens of a `TextTokenizer` (all of which transformers treats as control tokens)."""
    inner = getattr(tokenizer, "tokenizer", None)
    decoder = getattr(inner, "get_added_tokens_decoder", None)
    return {t.content for t in decoder().values() if t.special} if callable(decoder) else set()


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


class TemplateEncoder:
    """Turns conversations into (ids, trainable mask) with a `TextTokenizer` that holds the template's tokens."""

    def __init__(self, template: ChatTemplate, tokenizer):
        self.template = template
        self.tokenizer = tokenizer
        self.ids: dict[str, int | None] = {"eos": tokenizer.eos_id, "bos": tokenizer.bos_id}
        if self.ids["eos"] is None:
            raise ValueError(f"tokenizer {tokenizer.source} has no eos_token; chat templates need one")
        for tok in template.added_tokens:
            tid = tokenizer.tokenizer.token_to_id(tok)
            if tid is None:
                raise ValueError(
                    f"tokenizer {tokenizer.source} lacks the template token {tok!r} "
                    "(add it with skyloom.sft.vocab.add_special_tokens)"
                )
            self.ids[tok] = tid
        self.stop_ids = [self.ids[t] for t in template.stop_tokens]
        control = set(template.added_tokens) | _special_added_tokens(tokenizer)
        longest_first = sorted(control, key=len, reverse=True)
        self._control = re.compile("|".join(map(re.escape, longest_first))) if control else None

    def _pieces(self, pieces: Sequence[Piece]) -> list[int]:
        out: list[int] = []
        for p in pieces:
            if isinstance(p, tuple):
                tid = self.ids.get(p[1])
                if tid is not None:  # a missing BOS is simply left out
                    out.append(tid)
            elif p:
                out.extend(self._text(p))
        return out

    def _text(self, text: str) -> list[int]:
        """A message's text; a control token typed in it (`[SEP]`, `<|endoftext|>`) stays characters. Cut where
        transformers' `apply_chat_template(..., sanitize_control_tokens=True)` cuts (each such token encoded on its
        own, the text after it encoded behind a newline that is then dropped), so both give the same ids."""
        if self._control is None or not self._control.search(text):
            return self.tokenizer.encode(text)
        ids: list[int] = []
        start = 0
        for i, match in enumerate(self._control.finditer(text)):
            before = text[start : match.start()]
            if before:
                ids += self.tokenizer.encode(before) if i == 0 else self._after_newline(before)
            ids += self._after_newline(match.group(0))
            start = match.end()
        if start < len(text):
            ids += self._after_newline(text[start:])
        return ids

    def _after_newline(self, text: str) -> list[int]:
        """`text` encoded as if it followed a newline (no SentencePiece prefix space), as transformers does."""
        newline = self.tokenizer.encode("\n")
        ids = self.tokenizer.encode("\n" + text)
        return ids[len(newline) :] if ids[: len(newline)] == newline else self.tokenizer.encode(text)

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        ids: list[int] = []
        trainable: list[bool] = []
        for train, pieces in self.template.render(messages, add_generation_prompt):
            seg = self._pieces(pieces)
            ids += seg
            trainable += [train] * len(seg)
        return ids, trainable

    def prompt_ids(self, question: str) -> list[int]:
        """The generation prompt for one user question (ends where the model's answer starts)."""
        return self.encode([Message("user", question)], add_generation_prompt=True)[0]
