"""Config schema registration, composition and one-line error formatting."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vsd.config.schema import STAGES, Config, ConfigError

__all__ = [
    "CONF_DIR",
    "STAGES",
    "Config",
    "ConfigError",
    "compose",
    "format_error",
    "register",
    "sqlite_file",
    "to_config",
]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register() -> None:
    """Register the root schema (conf/config.yaml lists ``base_config`` first) and the config resolvers."""
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("sqlite_file"):
        OmegaConf.register_new_resolver("sqlite_file", sqlite_file)


def sqlite_file(path: str) -> str:
    """``${sqlite_file:multirun/x/study.db}`` -> a SQLAlchemy URL, creating the parent folder.

    An Optuna study stored there survives an interrupted search and lets it run in parts: SQLite creates the
    file but not its folder, and the sweeper opens the study before the launcher creates the sweep dir.
    """
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def to_config(cfg: DictConfig) -> Config:
    """Resolve interpolations and build the typed, range-checked :class:`Config`."""
    check_known_keys(cfg)
    try:
        return OmegaConf.to_object(cfg)  # runs every __post_init__
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(getattr(e, "full_key", None) or "config", _first_line(e)) from e


def check_known_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for a key that no schema dataclass declares.

    The struct flag rejects ``train.stepz=3``, but Hydra's ``+key=v`` / ``++key=v`` add keys with the flag
    lifted, and ``OmegaConf.to_object`` keeps them; so every dataclass-typed node is checked against its
    fields. Dict-typed fields (``extra``) stay free-form.
    """
    typ = OmegaConf.get_type(cfg)
    known = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if known is not None and key not in known:
            raise ConfigError(name, "unknown key (no such field in the schema, vsd/config/schema.py)")
        if known is not None and OmegaConf.is_dict(cfg._get_node(key)):
            check_known_keys(cfg._get_node(key), f"{name}.")


def _first_line(e: BaseException) -> str:
    msg = getattr(e, "msg", None) or str(e)
    return " ".join(str(msg).strip().splitlines()[0].split())


def format_error(e: BaseException) -> str:
    """One line that names the offending key (or file) for any config-composition error."""
    if isinstance(e, ConfigError):
        return f"config error: {e}"
    key = getattr(e, "full_key", None)
    cause = e.__cause__ or e.__context__
    if key is None and cause is not None:
        key = getattr(cause, "full_key", None)
    text = " ".join(str(e).split())
    if key:
        inner = (
            _first_line(cause) if cause is not None and getattr(cause, "full_key", None) else _first_line(e)
        )
        return f"config error: {key}: {inner}"
    return f"config error: {text}"


def _first_values(overrides: list[str]) -> list[list[str]]:
    """Expand Hydra sweep overrides (``a=1,2``, ``choice(...)``, ``range(...)``) into concrete lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    options: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            if o.is_discrete_sweep():
                vals = list(o.sweep_string_iterator())
            else:  # interval sweeps (Optuna): take both ends
                v = o.value()
                vals = [str(v.start), str(v.end)]
            options.append([f"{o.get_key_element()}={v}" for v in vals])
        else:
            options.append([o.input_line])
    return options


def compose(
    overrides: list[str] | None = None, config_name: str = "config", all_combinations: bool = False
) -> list[tuple[DictConfig, Config]]:
    """Compose ``conf/`` with overrides (sweep syntax allowed) and validate each resulting config.

    Returns (DictConfig, Config) per combination; only the first combination unless ``all_combinations``.
    Used by run.py's pre-flight and by tests; raises :class:`ConfigError` or Hydra's errors.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    options = _first_values(list(overrides or []))
    combos = list(itertools.product(*options)) if all_combinations else [tuple(o[0] for o in options)]
    out = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for combo in combos:
            dc = hydra_compose(config_name=config_name, overrides=list(combo), return_hydra_config=True)
            from hydra.core.hydra_config import HydraConfig

            HydraConfig.instance().set_config(dc)  # lets ${hydra:...} interpolations resolve
            hydra_node = dc.hydra
            with _open(dc):
                del dc["hydra"]
            OmegaConf.resolve(dc)
            out.append((dc, to_config(dc)))
            del hydra_node
    return out


class _open:
    def __init__(self, cfg: Any):
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *a: Any) -> None:
        OmegaConf.set_struct(self.cfg, True)
