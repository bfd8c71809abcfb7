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
`transformers`' `tokenizer.apply_chat_template` produces the same ids (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
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


_SKYWORK_JINJA = (
    "{{ eos_token }}{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% set sys = namespace(text='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set sys.text = sys.text + (m['content'] | trim) + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[USER]{{ sys.text }}{{ m['content'] }}[SEP][BOT]{% set sys.text = '' %}"
    "{% else %}{{ m['content'] }}[SEP]{% endif %}"
    "{% endfor %}"
)
_PLAIN_JINJA = (
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

    def _pieces(self, pieces: Sequence[Piece]) -> list[int]:
        out: list[int] = []
        for p in pieces:
            if isinstance(p, tuple):
                tid = self.ids.get(p[1])
                if tid is not None:  # a missing BOS is simply left out
                    out.append(tid)
            elif p:
                out.extend(self.tokenizer.encode(p))
        return out

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
