"""A sweep's search space: the YAML space file, its checks, and what Optuna is asked from it.

A space file (`sweeps/*.yaml`, documented in `sweeps/default.yaml`) names the train parameters
Optuna varies (`space`: float, int or categorical, with ranges, log scale or steps), the train
parameters every trial shares (`fixed`), the objective (a `dev/*` metric: the eval set is the
test split and is never optimised), its direction, the trial budget, how often a trial measures
the dev split (`dev_eval_steps`), the sampler and the pruner. Every error names the file and the
field.

The train parameters are the fields of the train stage's config class, which the caller passes
in (`train_config`): this module does not import the stage (see docs/design.md, "Stages").
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, InputError

DEV_OBJECTIVES = ("macro_f1", "accuracy", "reward_accuracy", "margin")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")
PRUNERS = ("median", "percentile", "hyperband", "threshold", "none")
SAMPLERS = ("tpe", "random")
SPACE_KEYS = (
    "study_name",
    "objective",
    "direction",
    "n_trials",
    "dev_eval_steps",
    "sampler",
    "pruner",
    "space",
    "fixed",
)
SWEEP_OWNED = ("experiment", "seed", "output_dir", "dev_eval_steps", "score_eval")
"""Train parameters the sweep sets itself (not in a space file's `space` or `fixed`, nor in
overrides); `score_eval` is always false: a trial never looks at the test split."""
SIGNIFICANT_DIGITS = 4
"""A float sample is rounded to this many significant digits before a trial trains with it, so
the value a run logs, its name shows and the adapter was trained with are one and the same."""
SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The source tree, whose `sweeps/` holds the bundled space files."""


@dataclass(frozen=True)
class ParamSpec:
    """One varied parameter: a float or int range (log scale or a step), or categorical choices."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass
class SweepSpace:
    """A parsed space file."""

    path: str
    study_name: str
    objective: str
    direction: str
    n_trials: int
    dev_eval_steps: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    params: list[ParamSpec]
    fixed: dict[str, Any]

    @property
    def objective_key(self) -> str:
        """The metric's name inside `dev_metrics` (`dev/macro_f1` -> `macro_f1`)."""
        return self.objective.split("/", 1)[1]


def resolve_space_path(space: str) -> Path:
    """`space` as given; a bare name `quick` is `sweeps/quick.yaml` here or in the source tree."""
    given = Path(space).expanduser()
    candidates = [given]
    if given.suffix not in (".yaml", ".yml") and len(given.parts) == 1:
        candidates.append(Path("sweeps") / f"{space}.yaml")
    candidates += [SOURCE_ROOT / c for c in list(candidates) if not c.is_absolute()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"space file {space!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def load_space(path: str | os.PathLike, *, train_config: type) -> SweepSpace:
    """Read and check a space file (YAML)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})") from None
    return parse_space(data, str(path), train_config=train_config)


def parse_space(data: Any, path: str = "<space>", *, train_config: type) -> SweepSpace:
    """Check a space file's content and turn it into a SweepSpace (errors name the field)."""
    if not isinstance(data, Mapping):
        raise InputError(path, "a space file is a YAML mapping (study_name, objective, space, fixed, ...)")
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise InputError(path, f"unknown key(s): {', '.join(unknown)} (known: {', '.join(SPACE_KEYS)})")
    train_fields = {f.name for f in dataclasses.fields(train_config)}
    params = _parse_varied(path, data.get("space"), train_fields)
    fixed = _parse_fixed(path, data.get("fixed"), train_fields, varied={p.name for p in params})
    _check_choices(path, params, train_config)
    direction = str(data.get("direction", "maximize")).strip().lower()
    if direction not in DIRECTIONS:
        raise InputError(
            path, f"direction must be maximize or minimize, got {data.get('direction')!r}", field="direction"
        )
    n_trials = _whole(path, data.get("n_trials", 10), "n_trials", minimum=1)
    dev_eval_steps = _whole(path, data.get("dev_eval_steps", 0), "dev_eval_steps", minimum=0)
    pruner = _check_component(path, "pruner", data.get("pruner"), PRUNERS, "median")
    if pruner["type"] != "none" and dev_eval_steps == 0:
        raise InputError(
            path,
            "a pruner needs intermediate dev evaluations: set dev_eval_steps > 0 (or pruner: none)",
            field="dev_eval_steps",
        )
    return SweepSpace(
        path=str(path),
        study_name=str(data.get("study_name") or Path(path).stem).strip(),
        objective=check_objective(path, data.get("objective", "dev/macro_f1")),
        direction=direction,
        n_trials=n_trials,
        dev_eval_steps=dev_eval_steps,
        sampler=_check_component(path, "sampler", data.get("sampler"), SAMPLERS, "tpe"),
        pruner=pruner,
        params=params,
        fixed=fixed,
    )


def _parse_varied(path: str, space: Any, train_fields: Collection[str]) -> list[ParamSpec]:
    if not isinstance(space, Mapping) or not space:
        raise InputError(path, "space must map at least one train parameter to its range", field="space")
    params = []
    for name, spec in space.items():
        if name not in train_fields or name in SWEEP_OWNED:
            raise InputError(path, f"{name!r} is not a train parameter a sweep can vary", field=f"space.{name}")
        params.append(parse_param(path, str(name), spec))
    return params


def _parse_fixed(path: str, fixed: Any, train_fields: Collection[str], varied: Collection[str]) -> dict[str, Any]:
    fixed = fixed or {}
    if not isinstance(fixed, Mapping):
        raise InputError(path, "fixed must map train parameters to values", field="fixed")
    for name in fixed:
        if name not in train_fields or name in SWEEP_OWNED:
            raise InputError(
                path,
                f"{name!r} is not a train parameter a space file can fix"
                + (" (the sweep sets it)" if name in SWEEP_OWNED else ""),
                field=f"fixed.{name}",
            )
        if name in varied:
            raise InputError(path, f"{name!r} is both varied (space) and fixed", field=f"fixed.{name}")
    return dict(fixed)


def _check_choices(path: str, params: list[ParamSpec], train_config: type) -> None:
    """Each categorical choice is a value the train config accepts on its own (a `method` that
    does not exist fails here, naming the field, not in the middle of the study)."""
    for spec in params:
        if spec.type != "categorical":
            continue
        for choice in spec.choices:
            try:
                train_config(**{spec.name: choice})
            except ConfigError as exc:
                raise InputError(
                    path, f"choice {choice!r} is not accepted: {exc}", field=f"space.{spec.name}"
                ) from None


def _whole(path: str, value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(path, f"{where} must be a whole number >= {minimum}, got {value!r}", field=where)
    return value


def _number(path: str, value: Any, where: str) -> float:
    # YAML 1.1 reads 1e-5 (no dot) as a string; accept it as the number it plainly is.
    if isinstance(value, bool):
        raise InputError(path, f"expected a number, got {value!r}", field=where)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"expected a number, got {value!r}", field=where) from None
    if not math.isfinite(number):
        raise InputError(path, f"expected a finite number, got {value!r}", field=where)
    return number


def parse_param(path: str, name: str, spec: Any) -> ParamSpec:
    """One entry of `space`: its type and range (or choices)."""
    where = f"space.{name}"
    if not isinstance(spec, Mapping):
        raise InputError(path, "each parameter is a mapping with a type (float, int or categorical)", field=where)
    kind = str(spec.get("type", "")).strip().lower()
    if kind not in PARAM_TYPES:
        raise InputError(path, f"type must be one of {', '.join(PARAM_TYPES)}, got {spec.get('type')!r}", field=where)
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(path, f"unknown key(s) {', '.join(unknown)} for a {kind} parameter", field=where)
    if kind == "categorical":
        return ParamSpec(name=name, type=kind, choices=_choices(path, spec.get("choices"), where))
    return _numeric_param(path, name, kind, spec, where)


def _choices(path: str, choices: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise InputError(path, "choices must be a non-empty list", field=where)
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise InputError(path, f"a choice must be a number, string, bool or null, got {choice!r}", field=where)
    if len(set(map(repr, choices))) != len(choices):
        raise InputError(path, "choices repeat a value", field=where)
    return tuple(choices)


def _numeric_param(path: str, name: str, kind: str, spec: Mapping[str, Any], where: str) -> ParamSpec:
    if "low" not in spec or "high" not in spec:
        raise InputError(path, "a float or int parameter needs low and high", field=where)
    low, high = _number(path, spec["low"], where + ".low"), _number(path, spec["high"], where + ".high")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise InputError(path, "an int parameter needs whole low and high", field=where)
    if not low < high:
        raise InputError(path, f"low ({low:g}) must be below high ({high:g})", field=where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(path, f"log must be true or false, got {log!r}", field=where + ".log")
    if log and low <= 0:
        raise InputError(path, f"a log-scale parameter needs low > 0, got {low:g}", field=where)
    step = spec.get("step")
    if step is not None:
        step = _number(path, step, where + ".step")
        if step <= 0:
            raise InputError(path, "step must be positive", field=where + ".step")
        if log:
            raise InputError(path, "step and log cannot be combined (Optuna samples one or the other)", field=where)
    return ParamSpec(name=name, type=kind, low=low, high=high, log=log, step=step)


def check_objective(path: str, objective: Any) -> str:
    """`objective` if it is a dev-split metric; an InputError naming the field otherwise."""
    text = str(objective or "").strip()
    name = text.split("/", 1)[1] if text.startswith("dev/") else None
    if name not in DEV_OBJECTIVES:
        raise InputError(
            path,
            f"objective must be a dev-split metric ({', '.join('dev/' + n for n in DEV_OBJECTIVES)}), got {objective!r}; "
            "the eval set is the test split and is never optimised",
            field="objective",
        )
    return text


def _check_component(path: str, where: str, value: Any, kinds: tuple[str, ...], default: str) -> dict[str, Any]:
    """A sampler or pruner: a name, or a mapping with a type and that type's keyword arguments."""
    if value is None:
        value = {"type": default}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise InputError(path, f"expected a mapping with a type ({', '.join(kinds)})", field=where)
    out = dict(value)
    out["type"] = str(out.get("type", default)).strip().lower()
    if out["type"] not in kinds:
        raise InputError(
            path, f"type must be one of {', '.join(kinds)}, got {value.get('type')!r}", field=where + ".type"
        )
    return out


def parse_overrides(text: str | None, *, train_config: type) -> dict[str, Any]:
    """`max_steps=20,epochs=1` -> {"max_steps": 20, "epochs": 1.0}, typed as the train config's fields."""
    from distill.cli import field_converter

    if not text:
        return {}
    hints = typing.get_type_hints(train_config)
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"train_overrides: expected name=value, got {part.strip()!r}")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in hints or name in SWEEP_OWNED:
            raise ConfigError(f"train_overrides: {name!r} is not a train parameter the sweep lets you set")
        try:
            out[name] = field_converter(train_config, name)(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"train_overrides: {name}={value!r}: {exc}") from None
    return out


def suggest(trial: Any, params: list[ParamSpec]) -> dict[str, Any]:
    """Ask `trial` for a value of every parameter of the space; a float from a continuous range
    comes back rounded (`rounded_sample`)."""
    values: dict[str, Any] = {}
    for p in params:
        if p.type == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            sample = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
            values[p.name] = sample if p.step else rounded_sample(sample, p)
    return values


def rounded_sample(value: float, spec: ParamSpec) -> float:
    """`value` to SIGNIFICANT_DIGITS significant digits, kept inside the spec's range."""
    from distill.tracking import round_significant

    rounded = round_significant(float(value), SIGNIFICANT_DIGITS)
    return min(max(rounded, float(spec.low)), float(spec.high))


def rounded_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as shown and logged: floats to SIGNIFICANT_DIGITS significant digits (a study
    keeps Optuna's raw sample; the trial trained with the rounded one)."""
    from distill.tracking import round_significant

    return {k: round_significant(v, SIGNIFICANT_DIGITS) if isinstance(v, float) else v for k, v in params.items()}


def make_pruner(spec: Mapping[str, Any]):
    """The Optuna pruner a space file's `pruner` names, with its keyword arguments."""
    import optuna

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    try:
        if kind == "median":
            return optuna.pruners.MedianPruner(**kwargs)
        if kind == "percentile":
            return optuna.pruners.PercentilePruner(**kwargs)
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(**kwargs)
        if kind == "threshold":
            return optuna.pruners.ThresholdPruner(**kwargs)
        return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError(f"pruner {kind}: {exc}") from None


def make_sampler(spec: Mapping[str, Any], seed: int | None):
    """The Optuna sampler a space file's `sampler` names (TPE with constant_liar unless it says otherwise)."""
    import optuna

    kwargs = {k: v for k, v in spec.items() if k not in ("type", "seed")}
    try:
        if spec["type"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # Parallel workers: running trials count as "bad" guesses, not as unexplored.
        kwargs.setdefault("constant_liar", True)
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"sampler {spec['type']}: {exc}") from None
