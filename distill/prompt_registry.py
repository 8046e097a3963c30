"""Prompt templates in the MLflow prompt registry, shared by every stage.

`ensure_prompt(name, template)` registers a template only when its text differs from the
latest registered version, so rerunning a stage never piles up identical versions, and returns
the version's URI (`prompts:/<name>/<version>`). `log_prompt_versions(uris)` records on the
active run which versions it used: a tag `prompts`, a `prompts.json` artifact, and MLflow's own
run-to-prompt link (the prompt's page in the UI then lists the run).

A template is a string, or chat messages (`[{"role": ..., "content": ...}]`) as MLflow's chat
prompts take them; variables are written `{{name}}`. Template files (distill/resources/prompts)
mark each message with a line `[system]`, `[user]` or `[assistant]` (`read_chat_template`).
`fill_chat_template` fills one: a block (text between blank lines) whose variables are all
empty is left out, so an item without a passage or <보기> box gets no empty heading.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

PROMPTS_TAG = "prompts"
PROMPTS_ARTIFACT = "prompts.json"


_ROLE_LINE = re.compile(r"^\[(system|user|assistant)\]$")
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def parse_chat_template(text: str, source: str = "<template>") -> list[dict[str, str]]:
    """`[system]` / `[user]` / `[assistant]` lines start messages; the lines below are the content
    (surrounding blank lines removed)."""
    from distill.errors import InputError

    messages: list[dict[str, str]] = []
    lines: list[str] = []
    role: str | None = None
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
    if role is not None:
        messages.append({"role": role, "content": "\n".join(lines).strip("\n")})
    if not messages:
        raise InputError(source, "no [system]/[user] message in the template")
    return messages


def read_chat_template(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return parse_chat_template(fh.read(), str(path))


def template_variables(template: str | list[dict[str, str]]) -> set[str]:
    texts = [template] if isinstance(template, str) else [m["content"] for m in template]
    return {name for text in texts for name in _VARIABLE.findall(text)}


def fill_text(text: str, variables: Mapping[str, Any]) -> str:
    """Fill `{{name}}`s, leaving out blocks (split on blank lines) whose variables are all empty."""
    kept = []
    for block in text.split("\n\n"):
        names = _VARIABLE.findall(block)
        missing = [n for n in names if n not in variables]
        if missing:
            raise KeyError(f"template variable(s) without a value: {', '.join(sorted(set(missing)))}")
        if names and all(not str(variables[n]).strip() for n in names):
            continue
        kept.append(_VARIABLE.sub(lambda m: str(variables[m.group(1)]), block))
    return "\n\n".join(kept)


def fill_chat_template(template: list[dict[str, str]], variables: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": fill_text(m["content"], variables)} for m in template]


def _same_template(a: Any, b: Any) -> bool:
    """Compare as canonical JSON: a chat template read back may be a list of plain dicts."""
    return json.dumps(a, ensure_ascii=False, sort_keys=True) == json.dumps(b, ensure_ascii=False, sort_keys=True)


def latest_prompt_version(name: str):
    """The latest registered version of `name`, or None when there is none."""
    from mlflow import MlflowClient

    # cache_ttl_seconds=0: MLflow caches alias lookups for 60 s by default, which would hide
    # a version registered a moment ago (or one from another store).
    return MlflowClient().load_prompt(f"prompts:/{name}@latest", allow_missing=True, cache_ttl_seconds=0)


def ensure_prompt(
    name: str,
    template: str | list[dict[str, str]],
    *,
    tags: Mapping[str, str] | None = None,
    commit_message: str | None = None,
) -> str:
    """Register `template` under `name` unless the latest version already has exactly this text;
    return the URI of the version that holds it (`prompts:/<name>/<version>`)."""
    import warnings

    import mlflow

    latest = latest_prompt_version(name)
    if latest is not None and _same_template(latest.template, template):
        return f"prompts:/{name}/{latest.version}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # genai API migration notices
        version = mlflow.genai.register_prompt(
            name=name,
            template=template,
            commit_message=commit_message or "registered by distill",
            tags={str(k): str(v) for k, v in (tags or {}).items()},
        )
    return f"prompts:/{name}/{version.version}"


def prompt_name_of(uri: str) -> str:
    """`prompts:/answer/3` -> `answer`."""
    body = uri[len("prompts:/"):] if uri.startswith("prompts:/") else uri
    return body.split("/")[0].split("@")[0]


def log_prompt_versions(uris: Iterable[str]) -> dict[str, str]:
    """Record on the active run which prompt versions it used; return {name: uri}.

    Tag `prompts` (comma-separated URIs), artifact `prompts.json` ({name: uri}), and a run link
    in the prompt registry.
    """
    import mlflow
    from mlflow import MlflowClient

    by_name = {prompt_name_of(uri): uri for uri in uris}
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_prompt_versions needs an active MLflow run")
    mlflow.set_tag(PROMPTS_TAG, ",".join(by_name[name] for name in sorted(by_name)))
    mlflow.log_dict(dict(sorted(by_name.items())), PROMPTS_ARTIFACT)
    client = MlflowClient()
    for uri in by_name.values():
        client.link_prompt_version_to_run(run.info.run_id, uri)
    return by_name
