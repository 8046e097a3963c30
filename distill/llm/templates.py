"""The one prompt-filling engine. Its templates are the files in distill/resources/prompts/.

A template file is either chat messages, each begun by a line `[system]`, `[user]` or
`[assistant]` (the lines below it, surrounding blank lines removed, are its content), or, when it
has no such line at all, one plain text sent as a single user message. Variables are written
`{{name}}`, MLflow's prompt syntax, so what `Template.registered()` hands to the prompt registry
(distill/prompt_registry.py, the MLflow edge) is exactly the text `Template.fill` sends, with the
variables still in it.

Filling, the same for every template:
- every variable needs a value, and every value must be a variable of the template (a misspelt
  name is an error, not a prompt that silently stays the same);
- a block (text between blank lines) whose variables are all empty is left out, so an item
  without a passage or a <보기> box gets no empty heading;
- values go in as given: a value that itself looks like `{{name}}` is not filled again.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_ROLE_LINE = re.compile(r"^\[(system|user|assistant)\]$")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
BLOCK_SEPARATOR = "\n\n"


def template_variables(text: str) -> set[str]:
    return set(_VARIABLE.findall(text))


def fill_text(text: str, values: Mapping[str, Any]) -> str:
    """Fill the `{{name}}`s of one text, leaving out blocks whose variables are all empty.

    A variable without a value is a KeyError; unused values are checked by `Template.fill`,
    which sees every message of the template at once."""
    kept = []
    for block in text.split(BLOCK_SEPARATOR):
        names = _VARIABLE.findall(block)
        missing = sorted({name for name in names if name not in values})
        if missing:
            raise KeyError(f"template variable(s) without a value: {', '.join(missing)}")
        if names and all(not str(values[name]).strip() for name in names):
            continue
        kept.append(_VARIABLE.sub(lambda match: str(values[match.group(1)]), block))
    return BLOCK_SEPARATOR.join(kept)


@dataclass(frozen=True)
class Template:
    """One prompt template: its messages, and the text of the file it came from."""

    name: str
    messages: tuple[dict[str, str], ...]
    """Chat messages ({"role", "content"}); a plain template is one user message."""
    chat: bool
    """True: the file marks its messages with role lines; False: the file is one plain text."""
    text: str
    """The file's text, as read."""
    source: str = "<template>"

    @property
    def variables(self) -> set[str]:
        return {name for message in self.messages for name in template_variables(message["content"])}

    @property
    def version(self) -> str:
        """A short content hash of the file (12 hex digits): the same in every store."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    def registered(self) -> str | list[dict[str, str]]:
        """What the prompt registry stores: the chat messages, or the plain text."""
        if self.chat:
            return [dict(message) for message in self.messages]
        return self.messages[0]["content"]

    def fill(self, values: Mapping[str, Any]) -> list[dict[str, str]]:
        """The messages to send, every variable filled (see the module docstring)."""
        unused = sorted(set(values) - self.variables)
        if unused:
            raise KeyError(f"values for variable(s) the template {self.name} does not have: {', '.join(unused)}")
        return [{"role": m["role"], "content": fill_text(m["content"], values)} for m in self.messages]


def parse_template(text: str, name: str = "template", source: str = "<template>") -> Template:
    """A Template from a file's text: chat messages when it has role lines, else one plain text."""
    from distill.errors import InputError

    messages: list[dict[str, str]] = []
    lines: list[str] = []
    role: str | None = None
    chat = any(_ROLE_LINE.match(line.strip()) for line in text.splitlines())
    if not chat:
        if not text.strip():
            raise InputError(source, "the template is empty")
        return Template(name, ({"role": "user", "content": text},), chat=False, text=text, source=source)
    for lineno, line in enumerate(text.splitlines(), start=1):
        marker = _ROLE_LINE.match(line.strip())
        if marker:
            if role is not None:
                messages.append({"role": role, "content": "\n".join(lines).strip("\n")})
            role, lines = marker.group(1), []
        elif role is None:
            if line.strip():
                raise InputError(source, "text before the first [system]/[user] line", row=lineno)
        else:
            lines.append(line)
    messages.append({"role": str(role), "content": "\n".join(lines).strip("\n")})
    return Template(name, tuple(messages), chat=True, text=text, source=source)


def read_template(path: str | os.PathLike, name: str | None = None) -> Template:
    from pathlib import Path

    path = Path(path)
    return parse_template(path.read_text(encoding="utf-8"), name or path.stem, str(path))


def template_path(name: str):
    """The bundled template file `distill/resources/prompts/<name>.txt`."""
    from distill.resources import resource_path

    return resource_path(f"prompts/{name}.txt")


def template_file(name: str) -> str:
    """The bundled template's path inside the repository, as prompt registry tags name it."""
    return f"distill/resources/prompts/{name}.txt"


@functools.cache
def load_template(name: str) -> Template:
    """The bundled template `name` (answer, answer_direct, judge, blueprint, verify), read once
    per process: the answer prompt is rendered for every item a stage scores."""
    return read_template(template_path(name), name)
