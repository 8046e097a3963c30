"""Prompt templates in the MLflow prompt registry, shared by every stage.

`ensure_prompt(name, template)` registers a template only when its text differs from the
latest registered version, so rerunning a stage never piles up identical versions, and returns
the version's URI (`prompts:/<name>/<version>`). `log_prompt_versions(uris)` records on the
active run which versions it used: a tag `prompts`, a `prompts.json` artifact, and MLflow's own
run-to-prompt link (the prompt's page in the UI then lists the run).

A template is a string, or chat messages (`[{"role": ..., "content": ...}]`) as MLflow's chat
prompts take them; variables are written `{{name}}`. The stages register the package's template
files (distill/resources/prompts) with `register_template`: what is registered is
`Template.registered()`, the very text the one filling engine (distill/llm/templates.py) sends.
This module is the MLflow edge of prompts; the engine knows nothing of MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.llm.templates import Template

PROMPTS_TAG = "prompts"
PROMPTS_ARTIFACT = "prompts.json"


def _same_template(a: Any, b: Any) -> bool:
    """Compare as canonical JSON: a chat template read back may be a list of plain dicts."""
    return json.dumps(a, ensure_ascii=False, sort_keys=True) == json.dumps(b, ensure_ascii=False, sort_keys=True)


def latest_prompt_version(name: str):
    """The latest registered version of `name`, or None when there is none."""
    from distill import tracking

    # cache_ttl_seconds=0: MLflow caches alias lookups for 60 s by default, which would hide
    # a version registered a moment ago (or one from another store).
    return tracking.client().load_prompt(f"prompts:/{name}@latest", allow_missing=True, cache_ttl_seconds=0)


def ensure_prompt(
    name: str,
    template: str | list[dict[str, str]],
    *,
    tags: Mapping[str, str] | None = None,
    commit_message: str | None = None,
) -> str:
    """Register `template` under `name` unless the latest version already has exactly this text;
    return the URI of the version that holds it (`prompts:/<name>/<version>`)."""
    from distill import tracking

    latest = latest_prompt_version(name)
    if latest is not None and _same_template(latest.template, template):
        return f"prompts:/{name}/{latest.version}"
    version = tracking.register_prompt(
        name, template, commit_message=commit_message or "registered by distill", tags=tags or {}
    )
    return f"prompts:/{name}/{version.version}"


def register_template(name: str, template: Template, *, tags: Mapping[str, str] | None = None) -> str:
    """`ensure_prompt` for a package template: registers `template.registered()` under `name`,
    tagged with the file it came from; returns the version's URI."""
    from distill.llm.templates import template_file

    return ensure_prompt(name, template.registered(), tags={"file": template_file(template.name), **(tags or {})})


def prompt_name_of(uri: str) -> str:
    """`prompts:/answer/3` -> `answer`."""
    body = uri[len("prompts:/") :] if uri.startswith("prompts:/") else uri
    return body.split("/")[0].split("@")[0]


def log_prompt_versions(uris: Iterable[str]) -> dict[str, str]:
    """Record on the active run which prompt versions it used; return {name: uri}.

    Tag `prompts` (comma-separated URIs), artifact `prompts.json` ({name: uri}), and a run link
    in the prompt registry.
    """
    from distill import tracking

    by_name = {prompt_name_of(uri): uri for uri in uris}
    run_id = tracking.active_run_id()
    if run_id is None:
        raise RuntimeError("log_prompt_versions needs an active MLflow run")
    tracking.set_tags({PROMPTS_TAG: ",".join(by_name[name] for name in sorted(by_name))})
    tracking.log_dict(dict(sorted(by_name.items())), PROMPTS_ARTIFACT)
    client = tracking.client()
    for uri in by_name.values():
        client.link_prompt_version_to_run(run_id, uri)
    return by_name
