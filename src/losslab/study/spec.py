"""Study files: a YAML description of a training × compression grid, validated before any work starts.

A study file names a base training config (any :class:`losslab.train.TrainConfig` key), optional coupled
``variants`` (e.g. a loss together with its parameters), ``grid`` axes over training options, and the
compression methods with their bit widths and option axes::

    name: quickstart
    train: {dataset: digits, model: small_cnn, epochs: 3}
    variants:                      # each entry is merged into `train`; crossed with `grid`
      - {loss: ce}
      - {loss: focal, focal_gamma: 2.0}
    grid:                          # TrainConfig key -> list of values (full product)
      lr: [0.02, 0.1]
      seed: [0, 1]
    compress:
      calibration: {samples: 128, batch_size: 64, seed: 0}
      methods:
        - {method: rtn, bits: [8, 4, 3, 2]}
        - {method: gpfq, bits: [8, 4, 3, 2], options: {scalar: 1.16}, grid: {scalar: [1.16, 2.0]}}

Load and check it with::

    from losslab.study import load_study_spec
    spec = load_study_spec("studies/quickstart.yaml")
    spec.train_points()        # every resolved TrainConfig dict, in grid order
    spec.compression_groups()  # method configs sharing one calibration pass (all bit widths of one option set)

Every bad key or value raises :class:`losslab.errors.ConfigError` naming the key, the value, what is allowed
and how to fix it.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from losslab.errors import ConfigError
from losslab.io import load_yaml_file
from losslab.quant.budget import DEFAULT_SENSITIVITY
from losslab.study.records import RUNNER_KEYS
from losslab.train.config import TrainConfig, config_error_from

# TrainConfig keys the runner sets itself: one run folder per training point, inside the study folder.


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


class Calibration(BaseModel):
    """Calibration set for post-training quantization: ``samples`` training images drawn with ``seed``."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(256, gt=0, description="Calibration images (drawn from the training split).")
    batch_size: int = Field(64, gt=0, description="Calibration batch size.")
    seed: int = Field(0, description="Seed of the calibration draw.")


class MethodEntry(BaseModel):
    """One compression method with its bit widths, fixed options and option axes."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="Quantization method name (rtn, gpfq, gptq, ldlq, pwlq, ...).")
    bits: list[int] = Field(description="Bit widths; all of them share one calibration pass where possible.")
    options: dict[str, Any] = Field(default_factory=dict, description="Fixed method options.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Method option -> values (product).")
    label: str | None = Field(None, description="Name in tables and figures; default: method plus grid options.")

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("is empty: list at least one bit width, e.g. bits: [8, 4, 3]")
        if len(set(value)) != len(value):
            raise ValueError(f"has repeated bit widths {value}")
        return value


class BudgetEntry(BaseModel):
    """One method whose widths are chosen per layer under stored-bits budgets (``losslab quantize --budget``)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="Quantization method name (gptq, gpfq, ldlq, rtn, pwlq).")
    budgets: list[float] = Field(description="Stored bits per quantized weight, one compressed model each.")
    bits_choices: list[int] = Field(default_factory=lambda: [2, 3, 4, 8], description="Candidate widths per layer.")
    sensitivity: str = Field(DEFAULT_SENSITIVITY, description="proxy, hawq, loss or fisher (docs/budget.md).")
    solver: str = Field("exact", description="exact or greedy.")
    options: dict[str, Any] = Field(default_factory=dict, description="Fixed method options.")
    label: str | None = Field(None, description="Name in tables and figures; default: '<method> budget'.")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: list[float]) -> list[float]:
        if not value or any(not b > 0 for b in value):
            raise ValueError("must list positive stored bits per weight, e.g. budgets: [2.5, 3.0, 3.5]")
        return value

    @field_validator("bits_choices")
    @classmethod
    def _choices(cls, value: list[int]) -> list[int]:
        if len(set(value)) < 2:
            raise ValueError("needs at least two distinct widths, e.g. bits_choices: [2, 3, 4, 8]")
        return sorted(set(value))


BUDGET_KEYS = ("budget", "bits_choices", "sensitivity", "solver")
"""Options of a budgeted :class:`CompressionPoint` that are not method options."""


class CompressSection(BaseModel):
    """How every trained model is compressed and evaluated."""

    model_config = ConfigDict(extra="forbid")

    methods: list[MethodEntry] = Field(description="Compression methods (at least one).")
    calibration: Calibration = Field(default_factory=Calibration)
    fold_bn: bool = Field(False, description="Fold BatchNorm into the preceding conv before quantizing.")
    skip: list[str] = Field(default_factory=list, description="Layer names kept in float (e.g. first/last).")
    eval_batch_size: int = Field(256, gt=0, description="Batch size of test-set evaluation.")
    histogram_bins: int = Field(64, ge=8, le=512, description="Bins of the stored weight histograms.")
    budget: list[BudgetEntry] = Field(
        default_factory=list, description="Methods with per-layer widths under stored-bits budgets (an axis)."
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[MethodEntry]) -> list[MethodEntry]:
        if not value:
            raise ValueError("is empty: list at least one method, e.g. - {method: rtn, bits: [8, 4]}")
        return value


class LandscapeSection(BaseModel):
    """Loss-landscape probes of every trained model (``losslab landscape``; docs/landscape.md), run once per model
    as a stored stage of its job (``landscape.json`` in its run folder, reused for the same settings)."""

    model_config = ConfigDict(extra="forbid")

    probes: list[str] = Field(
        default_factory=lambda: ["eig", "trace", "sharpness", "kurtosis"], description="Probe names (see PROBES)."
    )
    samples: int | None = Field(None, gt=0, description="Probe-set images (default 2,048 or the whole split).")
    seed: int = Field(0, description="Seed of the probe set and of the probes.")
    loss: str = Field("ce", description="run (each model's own objective) or ce (comparable across objectives).")
    top_k: int = Field(3, gt=0, description="Top eigenvalues.")

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: list[str]) -> list[str]:
        from losslab.landscape.probes import parse_probes

        return list(parse_probes(",".join(value)))

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        if value not in ("run", "ce"):
            raise ValueError("must be run or ce")
        return value


class StudyFile(BaseModel):
    """The top level of a study YAML file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Study name (letters, digits, ., _ and -); the default output folder name.")
    description: str = ""
    seed_experiment: str | None = Field(None, description="Which seed experiment this study reproduces.")
    train: dict[str, Any] = Field(default_factory=dict, description="Base TrainConfig keys.")
    variants: list[dict[str, Any]] | None = Field(None, description="Coupled option sets merged into train.")
    grid: dict[str, list[Any]] | None = Field(None, description="TrainConfig key -> values (product).")
    compress: CompressSection
    landscape: LandscapeSection | None = Field(None, description="Loss-landscape probes of every trained model.")
    out_dir: str | None = Field(None, description="Study folder; default study_runs/<name>.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r} must start with a letter or digit and use only letters, digits, . _ -")
        return value


@dataclass(frozen=True)
class CompressionPoint:
    """One compression setting: method name, bit width and options (e.g. ``gpfq``, 4, ``{"scalar": 1.16}``)."""

    method: str
    bits: int
    options: tuple[tuple[str, Any], ...]
    label: str

    def options_dict(self) -> dict[str, Any]:
        """The method options as a plain dict (``bits`` excluded)."""
        return dict(self.options)

    def build(self) -> Any:
        """The :class:`losslab.quant.QuantMethod` config for this point: the options are the method dataclass's
        fields under the same names as the CLI flags (:func:`losslab.quant.methods.build_methods`, shared with
        ``losslab quantize`` and ``lm quantize``; values validated once, by the dataclass)."""
        from losslab.quant.methods import build_methods

        options = {k: v for k, v in self.options_dict().items() if k not in BUDGET_KEYS}
        return build_methods([self.method], [self.bits], options)[0]


@dataclass(frozen=True)
class CompressionGroup:
    """Compression points that differ only in bit width: quantized from one calibration pass."""

    method: str
    options: tuple[tuple[str, Any], ...]
    label: str
    points: tuple[CompressionPoint, ...]


@dataclass(frozen=True)
class StudySpec:
    """A validated study: the parsed file plus the expanded training points (resolved TrainConfig dicts)."""

    file: StudyFile
    source: Path | None
    points: tuple[dict[str, Any], ...]
    varied: tuple[str, ...]

    @property
    def name(self) -> str:
        """The study name."""
        return self.file.name

    def train_points(self) -> list[dict[str, Any]]:
        """Every training point as a resolved ``TrainConfig.to_dict()`` (runner keys left at their defaults)."""
        return [dict(p) for p in self.points]

    def compression_groups(self) -> list[CompressionGroup]:
        """Method option sets in file order, each holding its bit widths (one calibration pass per group)."""
        return expand_compression(self.file.compress)

    def compression_points(self) -> list[CompressionPoint]:
        """Every compression point (method × option combination × bits)."""
        return [p for g in self.compression_groups() for p in g.points]

    def default_out_dir(self) -> Path:
        """``out_dir`` from the file, else ``study_runs/<name>``."""
        return Path(self.file.out_dir) if self.file.out_dir else Path("study_runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        """The study file as a plain dict (what is stored with the results)."""
        return self.file.model_dump(mode="json", exclude_none=True)


#: Most training points and compression points a study may expand to (checked before expanding).
MAX_TRAIN_POINTS = 10_000
MAX_COMPRESSION_POINTS = 10_000


def _check_grid_size(where: str, count: int, limit: int) -> None:
    """Refuse a grid whose product exceeds ``limit`` before it is expanded."""
    if count > limit:
        raise ConfigError(
            f"{where} expands to {count:,} points; a study may have at most {limit:,}: split it into several studies "
            "or list fewer values"
        )


def expand_compression(section: CompressSection) -> list[CompressionGroup]:
    """Expand method entries in file order into groups (one per option combination), each with its bit widths."""
    total = sum(len(e.bits) * math.prod(len(v) for v in e.grid.values()) for e in section.methods)
    _check_grid_size("compress.methods", total, MAX_COMPRESSION_POINTS)
    groups = []
    for entry in section.methods:
        axes = list(entry.grid)
        for combo in itertools.product(*(entry.grid[a] for a in axes)):
            axis_values = dict(zip(axes, combo))
            options = tuple(sorted({**entry.options, **axis_values}.items()))
            label = entry.label or entry.method
            if axis_values:
                label += "(" + ", ".join(f"{k}={v}" for k, v in axis_values.items()) + ")"
            points = tuple(CompressionPoint(entry.method, b, options, label) for b in entry.bits)
            groups.append(CompressionGroup(entry.method, options, label, points))
    return groups + [_budget_group(entry) for entry in section.budget]


def _budget_group(entry: BudgetEntry) -> CompressionGroup:
    """A budget entry as one group: a point per budget, at the widest candidate width, with the budget settings
    in its options (:data:`BUDGET_KEYS`; the study pipeline sends such points to :mod:`losslab.compress.budget`)."""
    from losslab.quant.budget import check_sensitivity

    check_sensitivity(entry.sensitivity)
    if entry.solver not in ("exact", "greedy"):
        raise ConfigError(f"compress.budget solver={entry.solver!r} is not known: choose exact or greedy")
    base = {**entry.options, "bits_choices": tuple(entry.bits_choices), "sensitivity": entry.sensitivity}
    base["solver"] = entry.solver
    label = entry.label or f"{entry.method} budget"
    points = tuple(
        CompressionPoint(entry.method, max(entry.bits_choices), tuple(sorted({**base, "budget": b}.items())), label)
        for b in entry.budgets
    )
    return CompressionGroup(entry.method, tuple(sorted(base.items())), label, points)


def _study_file_error(exc: ValidationError) -> ConfigError:
    """One readable error from pydantic's: the dotted key, the value and the problem; unknown keys list choices."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = ".".join(loc) or "study"
        if err["type"] == "extra_forbidden":
            section: type[BaseModel] = {
                "compress": CompressSection,
                "calibration": Calibration,
                "landscape": LandscapeSection,
            }.get(loc[-2] if len(loc) > 1 else "", StudyFile)
            if len(loc) > 2 and loc[-3] == "methods":
                section = MethodEntry
            allowed = list(section.model_fields)
            lines.append(f"unknown key {key!r}{_close(loc[-1], allowed)} (allowed here: {', '.join(allowed)})")
        else:
            message = err["msg"].removeprefix("Value error, ")
            shown = f"={err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
            lines.append(f"{key}{shown}: {message}")
    return ConfigError("invalid study: " + "; ".join(lines))


def _check_train_keys(where: str, values: dict[str, Any]) -> None:
    fields = list(TrainConfig.model_fields)
    for key in values:
        if key in RUNNER_KEYS:
            raise ConfigError(
                f"{where}: key {key!r} is set by the study runner (one run folder per training point); remove it"
            )
        if key not in TrainConfig.model_fields:
            raise ConfigError(
                f"{where}: unknown training option {key!r}{_close(key, fields)} "
                "(allowed: any TrainConfig key, see `losslab train --help`)"
            )


def _check_axes(where: str, grid: dict[str, list[Any]]) -> None:
    if not grid:
        raise ConfigError(f"{where} is empty: give at least one axis (option: [values]) or remove the key")
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"{where}.{key} has no values: list at least one, e.g. {key}: [value1, value2]")
        if len({yaml.safe_dump(v) for v in values}) != len(values):
            raise ConfigError(f"{where}.{key} repeats a value ({values}); each grid value must be distinct")


def _expand_training(file: StudyFile) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    _check_train_keys("train", file.train)
    variants = file.variants if file.variants is not None else [{}]
    if not variants:
        raise ConfigError("variants is empty: list at least one option set, e.g. - {loss: ce}, or remove the key")
    for i, variant in enumerate(variants):
        _check_train_keys(f"variants[{i}]", variant)
    grid = file.grid if file.grid is not None else {}
    if file.grid is not None:
        _check_axes("grid", grid)
        _check_train_keys("grid", grid)
    axes = list(grid)
    _check_grid_size("the training grid", len(variants) * math.prod(len(v) for v in grid.values()), MAX_TRAIN_POINTS)
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, variant in enumerate(variants):
        overlap = set(variant) & set(axes)
        if overlap:
            raise ConfigError(f"variants[{i}] sets {sorted(overlap)}, which are also grid axes; keep each in one")
        for combo in itertools.product(*(grid[a] for a in axes)):
            values = {**file.train, **variant, **dict(zip(axes, combo))}
            try:
                cfg = TrainConfig(**values)
            except ValidationError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in {**variant, **dict(zip(axes, combo))}.items())
                raise ConfigError(
                    f"training point ({shown or 'base'}): {config_error_from(exc, TrainConfig)}"
                ) from None
            resolved = cfg.to_dict()
            fingerprint = yaml.safe_dump(resolved, sort_keys=True)
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            points.append(resolved)
    varied = tuple(sorted({k for v in variants for k in v} | set(axes)))
    return tuple(points), varied


def _check_methods(section: CompressSection) -> None:
    from losslab.quant.methods import QUANT_METHODS

    names = QUANT_METHODS.names()  # the internal identity16 reference is not offered
    for i, entry in enumerate(section.methods):
        where = f"compress.methods[{i}]"
        try:
            QUANT_METHODS.resolve(entry.method)
        except ValueError:
            raise ConfigError(
                f"{where}.method={entry.method!r} is not a quantization method{_close(entry.method, names)}; "
                f"choose one of: {', '.join(names)}"
            ) from None
        if "bits" in entry.options or "bits" in entry.grid:
            raise ConfigError(f"{where}: give bit widths in `bits:`, not in options or grid")
        if entry.grid:
            _check_axes(f"{where}.grid", entry.grid)
        both = set(entry.options) & set(entry.grid)
        if both:
            raise ConfigError(f"{where}: {sorted(both)} appear in both options and grid; keep each in one")
    for group in expand_compression(section):
        for point in group.points:
            try:
                point.build()
            except ConfigError as exc:
                raise ConfigError(f"compress method {point.method} bits={point.bits}: {exc}") from None


def parse_study(values: dict[str, Any], source: Path | None = None) -> StudySpec:
    """Validate a study mapping (the parsed YAML) and expand its training grid; raises :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"a study must be a mapping of keys to values, got {type(values).__name__}")
    try:
        file = StudyFile(**values)
    except ValidationError as exc:
        raise _study_file_error(exc) from None
    points, varied = _expand_training(file)
    _check_methods(file.compress)
    return StudySpec(file=file, source=source, points=points, varied=varied)


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a study YAML file (see the module docstring for the format).

    ``path`` may also name a shipped study (``quickstart``, ``lr_quant_cifar10``, ...; :mod:`losslab.presets`).
    """
    from losslab.presets import resolve_yaml

    path = resolve_yaml(path, "studies")
    values = load_yaml_file(path, "study file") or {}
    try:
        return parse_study(values, source=path)
    except ConfigError as exc:
        raise ConfigError(f"study file {str(path)!r}: {exc}") from None
