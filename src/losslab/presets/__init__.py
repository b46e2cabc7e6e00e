"""Study files and training configs shipped inside the package, so a ``pip install`` has them too.

``studies/`` holds the study YAMLs (``losslab study run quickstart``), ``configs/`` the phase schedules and
recipes (``losslab train --reg-schedule combined_protocol``). In a source checkout the top-level ``studies/`` and
``configs/`` folders are links to these. Wherever a command takes one of these files, it takes a path or a
preset name::

    from losslab.presets import preset_names, resolve_yaml
    preset_names("studies")                       # ['fnl_resnet20', 'lr_quant_cifar10', 'quickstart', ...]
    resolve_yaml("quickstart", "studies")         # the packaged studies/quickstart.yaml
    resolve_yaml("my_study.yaml", "studies")      # an existing file is used as it is
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from losslab.errors import ConfigError

KINDS = ("studies", "configs")
_WHAT = {"studies": "study file", "configs": "config file"}


def _folder(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return Path(str(resources.files(__name__) / kind))


def preset_names(kind: str) -> list[str]:
    """Names (file stems) of the shipped YAML files of ``kind`` ("studies" or "configs"), sorted."""
    return sorted(path.stem for path in _folder(kind).glob("*.yaml"))


def preset_file(kind: str, name: str) -> Path:
    """The packaged file of preset ``name`` (with or without ``.yaml``); ConfigError listing the names if absent."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = _folder(kind) / f"{stem}.yaml"
    if not path.is_file():
        raise ConfigError(f"no shipped {_WHAT[kind]} named {name!r}; shipped: {', '.join(preset_names(kind))}")
    return path


def resolve_yaml(path_or_name: str | Path, kind: str) -> Path:
    """``path_or_name`` if it is an existing file, else the shipped preset of that name (``kind`` folder).

    A bare name (no folder) or ``studies/NAME.yaml`` / ``configs/NAME.yaml`` falls back to the preset, so commands
    from the README work outside the source checkout. Anything else that does not exist raises a ConfigError
    naming the path and the shipped presets.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    parent = path.parent.name
    if parent in ("", kind) and len(path.parts) <= 2 and path.suffix in ("", ".yaml"):
        stem = path.name[: -len(".yaml")] if path.suffix == ".yaml" else path.name
        if stem in preset_names(kind):
            return preset_file(kind, stem)
    raise ConfigError(
        f"{_WHAT[kind]} {str(path)!r} does not exist; pass the path of a YAML file or the name of a shipped one: "
        f"{', '.join(preset_names(kind))}"
    )
