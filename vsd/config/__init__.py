"""Config schema registration, composition and one-line error formatting."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from vsd.config.schema import STAGES, Config
from vsd.errors import ConfigError, UserError

__all__ = [
    "CONF_DIR",
    "STAGES",
    "Config",
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
    _register_resolvers()


def _register_resolvers() -> None:
    from vsd.records import run_stamp

    if not OmegaConf.has_resolver("sqlite_file"):
        OmegaConf.register_new_resolver("sqlite_file", sqlite_file)
    if not OmegaConf.has_resolver("run_stamp"):
        # cached like Hydra's ${now:}: one value per config, copied into each job's config of a multirun (a
        # launcher's job process gets the resolvers with Hydra's pickled state)
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)


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


# A multirun of at most this many jobs is validated job by job before Hydra starts; a larger grid value by value.
GRID_LIMIT = 32


def _axes(overrides: list[str]) -> dict[str, list[str]]:
    """Override lines per key, each sweep expanded into its values (``a=1,2`` -> ``["a=1", "a=2"]``, also
    ``choice(...)``, ``range(...)``); Optuna's ``interval(lo, hi)`` (with ``tag``/``int``) gives both ends. A
    later override of the same key replaces an earlier one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            if o.is_discrete_sweep():
                vals = list(o.sweep_string_iterator())
            else:
                v = o.value()
                vals = [str(v.start), str(v.end)]
            axes[o.get_key_element()] = [f"{o.get_key_element()}={v}" for v in vals]
        else:
            axes[o.get_key_element()] = [o.input_line]
    return axes


def sweep_jobs(axes: list[list[str]], limit: int = GRID_LIMIT) -> list[tuple[str, ...]]:
    """The override combinations to validate: the whole grid when it has at most ``limit`` jobs, else the
    first combination plus each further value of each key with every other key at its first value."""
    if math.prod(len(a) for a in axes) <= limit:
        return list(itertools.product(*axes))
    first = tuple(a[0] for a in axes)
    return [first] + [first[:i] + (v,) + first[i + 1 :] for i, a in enumerate(axes) for v in a[1:]]


def _compose_one(overrides: list[str], config_name: str) -> tuple[DictConfig, DictConfig]:
    """(config without ``hydra``, the ``hydra`` node); call inside ``initialize_config_dir``."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    dc = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(dc)  # lets ${hydra:...} interpolations resolve
    hydra_node = dc.hydra
    with open_dict(dc):
        del dc["hydra"]
    OmegaConf.resolve(dc)
    return dc, hydra_node


def _initialize():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    return initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")


def compose(
    overrides: list[str] | None = None, config_name: str = "config", all_combinations: bool = False
) -> list[tuple[DictConfig, Config]]:
    """Compose ``conf/`` with overrides (sweep syntax allowed) and validate each resulting config.

    Returns (DictConfig, Config) per combination; only the first combination unless ``all_combinations``.
    Used by run.py's pre-flight and by tests; raises :class:`ConfigError` or Hydra's errors.
    """
    axes = list(_axes(list(overrides or [])).values())
    combos = list(itertools.product(*axes)) if all_combinations else [tuple(a[0] for a in axes)]
    out = []
    with _initialize():
        for combo in combos:
            dc, _ = _compose_one(list(combo), config_name)
            out.append((dc, to_config(dc)))
    return out


def hydra_dirs(overrides: list[str]) -> tuple[str | None, str | None]:
    """The run dir and the sweep dir Hydra would use for these overrides (sweeps at their first value)."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    first = [a[0] for a in _axes(list(overrides)).values()]
    out: list[str | None] = []
    with _initialize():
        dc = hydra_compose(config_name="config", overrides=first, return_hydra_config=True)
        HydraConfig.instance().set_config(dc)
        for key in ("hydra.run.dir", "hydra.sweep.dir"):
            try:
                out.append(str(OmegaConf.select(dc, key)))
            except OmegaConfBaseException:  # an interpolation only Hydra's own run can resolve
                out.append(None)
    return out[0], out[1]


def validate_multirun(
    overrides: list[str], sweeper_params: list[str] | None = None, limit: int = GRID_LIMIT
) -> int:
    """Compose and validate every job a multirun would launch, before any starts; returns how many configs.

    The jobs come from the sweep overrides on the command line and the sweeper's ``params`` (a sweep file,
    ``+sweep=<name>``, or ``hydra.sweeper.params.<key>=<value>`` given as ``sweeper_params`` ``key=value``
    lines); the command line wins for a key in both. Grids up to ``limit`` jobs are checked whole, larger ones
    value by value (:func:`sweep_jobs`). Raises :class:`~vsd.errors.UserError` whose message is the config
    error and the failing job's swept values, one line.
    """
    overrides = list(overrides)
    with _initialize():
        first = [a[0] for a in _axes(overrides).values()]
        _, hydra_node = _compose_one(first, "config")
        params = OmegaConf.select(hydra_node, "sweeper.params", default=None) or {}
        lines = [f"{k}={v}" for k, v in params.items()] + list(sweeper_params or []) + overrides
        axes = list(_axes(lines).values())
        combos = sweep_jobs(axes, limit)
        swept = [i for i, a in enumerate(axes) if len(a) > 1]
        for combo in combos:
            try:
                dc, _ = _compose_one(list(combo), "config")
                to_config(dc)
            except Exception as e:  # noqa: BLE001 - any composition error: one line naming the job
                job = " ".join(combo[i] for i in swept)
                raise UserError(f"{format_error(e).removeprefix('config error: ')} (sweep job: {job})") from e
    return len(combos)
