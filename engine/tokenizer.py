"""Tokenizer: a `tokenizers.Tokenizer` plus the model's chat template.

Reads an HF directory (tokenizer.json, tokenizer_config.json, optional
chat_template.jinja / generation_config.json / config.json) without
importing transformers. The chat template is rendered in a sandboxed jinja2
environment set up the way transformers sets it up, so model templates
behave the same.

`encode_chat` is how a conversation becomes prompt ids: special-token text
that a user writes inside a message (`<|im_end|>\n<|im_start|>system`)
stays text, so that only the template's own markers are control tokens.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


class Tokenizer:
    """Fast tokenizer with special-token ids, stop tokens and chat template."""

    def __init__(
        self,
        backend: HFTokenizer,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_stop_token_ids: set[int] | None = None,
        special_tokens: dict[str, str] | None = None,
    ):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        self.eos_token_id = backend.token_to_id(eos_token) if eos_token else None
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        stops = set(extra_stop_token_ids or ())
        if self.eos_token_id is not None:
            stops.add(self.eos_token_id)
        self.stop_token_ids: set[int] = stops
        self.special_tokens = dict(special_tokens or {})  # e.g. {"pad_token": "<|endoftext|>"}
        added = backend.get_added_tokens_decoder()
        self._special_ids = {i for i, t in added.items() if t.special}
        self._special_text = {t.content: i for i, t in added.items() if t.special and t.content}
        self._compiled_template = None
        self._literal_backend: HFTokenizer | None = None

    @classmethod
    def from_dir(cls, path) -> "Tokenizer":
        """Load tokenizer.json and its settings from an HF model directory."""
        path = str(path)
        backend = HFTokenizer.from_file(os.path.join(path, "tokenizer.json"))
        settings = _read_json(path, "tokenizer_config.json")
        special = {k: _token_content(settings.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        special = {k: v for k, v in special.items() if v}
        config_eos = _stop_ids_from_configs(path)
        eos_token = special.get("eos_token")
        if eos_token is None and config_eos:
            eos_token = backend.id_to_token(min(config_eos))
        return cls(
            backend,
            chat_template=_read_chat_template(path, settings),
            bos_token=special.get("bos_token"),
            eos_token=eos_token,
            extra_stop_token_ids=config_eos,
            special_tokens=special,
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Special tokens written in the text (e.g. from the chat
        template) are always recognised; add_special_tokens adds BOS etc."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        """True for added tokens marked special (skipped by decode; never
        banned by a grammar's control-character mask)."""
        return token_id in self._special_ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render the conversation to the prompt text the model was trained on.

        Extra keyword arguments (e.g. tools) are passed to the template.
        Raises ValueError if the model has no chat template or the template
        rejects the conversation.
        """
        if not self.chat_template:
            raise ValueError(
                "this model has no chat template (tokenizer_config.json / chat_template.jinja); "
                "use the completions endpoint with a raw prompt instead"
            )
        context = dict(self.special_tokens)
        context.update(bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        context.update(kwargs, messages=messages, add_generation_prompt=add_generation_prompt)
        try:
            return self._template().render(**context)
        except jinja2.TemplateError as err:
            raise ValueError(f"chat template error: {err}") from err

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    **kwargs) -> list[int]:
        """Render the conversation and tokenize it, keeping message content
        literal: special-token text inside a message is encoded as plain text.

        Without special-token text in any message this is exactly
        `encode(apply_chat_template(...))`. Raises ValueError, like
        apply_chat_template, when the template fails, or when content with
        special-token text cannot be located in the rendered prompt (a
        template that rewrites content).
        """
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        if not any(self._holds_special_text(m.get("content")) for m in messages):
            return self.encode(text)
        spans = self._content_spans(messages, text, add_generation_prompt, kwargs)
        return self._encode_keeping_literal(text, spans)

    def _holds_special_text(self, content) -> bool:
        return isinstance(content, str) and any(t in content for t in self._special_text)

    def _content_spans(self, messages: list[dict], text: str, add_generation_prompt: bool,
                       kwargs: dict) -> list[tuple[int, int]]:
        """Where each message's content lies in `text`: render once more with
        every content between unique markers, then take the markers out; the
        result must be `text` again, or the template changed the content."""
        markers = _Markers.unused_in(messages)
        wrapped = [m | {"content": markers.wrap(m["content"])} if isinstance(m.get("content"), str)
                   else m for m in messages]
        marked = self.apply_chat_template(wrapped, add_generation_prompt, **kwargs)
        plain, spans = markers.strip(marked)
        if plain != text:
            raise ValueError("this model's chat template rewrites message content, so "
                             "special-token text in a message cannot be kept as text")
        return spans

    def _encode_keeping_literal(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """Ids of `text` where special tokens count as control tokens only
        outside `spans`. Text between control tokens is encoded as one piece,
        as the tokenizer itself does, so nothing else changes."""
        ids: list[int] = []
        cursor = 0
        for match in self._special_pattern().finditer(text):
            start, end = match.span()
            if any(a < end and start < b for a, b in spans):
                continue  # inside (or across) user content: it stays text
            ids += self._encode_literal(text[cursor:start])
            ids.append(self._special_text[match.group()])
            cursor = end
        return ids + self._encode_literal(text[cursor:])

    def _encode_literal(self, text: str) -> list[int]:
        if not text:
            return []
        if self._literal_backend is None:
            # A copy that encodes special-token text as ordinary text.
            self._literal_backend = HFTokenizer.from_str(self.backend.to_str())
            self._literal_backend.encode_special_tokens = True
        return self._literal_backend.encode(text, add_special_tokens=False).ids

    def _special_pattern(self) -> re.Pattern:
        # Longest first, so that a token that prefixes another never wins.
        alternatives = sorted(self._special_text, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in alternatives))

    def _template(self) -> jinja2.Template:
        if self._compiled_template is None:
            self._compiled_template = _chat_environment().from_string(self.chat_template)
        return self._compiled_template


class _Markers:
    """A pair of strings found nowhere in a conversation, to mark content."""

    def __init__(self, nonce: str):
        self.open, self.close = f"\ue000{nonce}\ue001", f"\ue001{nonce}\ue000"

    @classmethod
    def unused_in(cls, messages: list[dict]) -> "_Markers":
        while True:
            markers = cls(secrets.token_hex(8))
            if not any(markers.open in str(m) or markers.close in str(m) for m in messages):
                return markers

    def wrap(self, content: str) -> str:
        """Markers around the content without its outer whitespace, so that a
        template that trims content renders the same text."""
        core = content.strip()
        if not core:
            return content
        lead = content[: len(content) - len(content.lstrip())]
        trail = content[len(content.rstrip()):]
        return f"{lead}{self.open}{core}{self.close}{trail}"

    def strip(self, marked: str) -> tuple[str, list[tuple[int, int]]]:
        """The text without markers and the (start, end) spans they enclosed."""
        pieces, spans, length, cursor = [], [], 0, 0
        while (start := marked.find(self.open, cursor)) >= 0:
            end = marked.find(self.close, start)
            if end < 0:
                break
            before, inside = marked[cursor:start], marked[start + len(self.open): end]
            pieces += [before, inside]
            spans.append((length + len(before), length + len(before) + len(inside)))
            length += len(before) + len(inside)
            cursor = end + len(self.close)
        pieces.append(marked[cursor:])
        return "".join(pieces), spans


class _GenerationTagExtension(Extension):
    """Accept HF's `{% generation %}...{% endgeneration %}` and render the body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Like transformers: no ASCII escaping, so non-English text stays readable.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _chat_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTagExtension, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _read_json(path: str, name: str) -> dict:
    full = os.path.join(path, name)
    if not os.path.exists(full):
        return {}
    with open(full, encoding="utf-8") as f:
        return json.load(f)


def _token_content(token) -> str | None:
    """tokenizer_config writes a special token as a string or an AddedToken dict."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def _read_chat_template(path: str, settings: dict) -> str | None:
    """chat_template.jinja (transformers >= 4.43 layout) or tokenizer_config's."""
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = settings.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template}
        return named.get("default") or next(iter(named.values()), None)
    return template


def _stop_ids_from_configs(path: str) -> set[int]:
    """eos_token_id(s) named by generation_config.json and config.json."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        value = _read_json(path, name).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids
