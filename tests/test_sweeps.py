"""Every sweep file composes, for every combination of its values, without launching anything.

A typo in a sweep key or value, a wrong job count in a header, or a launcher config that does not compose
fails here, in CI, instead of minutes into a sweep.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.sweep_helpers import REPO
from vsd.config import compose
from vsd.sweep import SWEEPS_DIR, header_command, sweep_files, sweep_params

PLACEHOLDER = "/tmp/vsd-placeholder-draft"


def _command_overrides(path: Path) -> list[str]:
    """The overrides of the header command, with ``<...>`` placeholders replaced by a path."""
    cmd, _ = header_command(path)
    cmd = re.sub(r"<[^>]*>", PLACEHOLDER, cmd)
    args = shlex.split(cmd)
    assert args[:3] == ["python", "run.py", "-m"], f"{path.name}: header must start with 'python run.py -m'"
    return args[3:]


def _num_jobs(params: dict[str, str]) -> int:
    return _count([f"{k}={v}" for k, v in params.items()])


def _count(overrides: list[str]) -> int:
    """Jobs of the product of the discrete sweeps among ``overrides``."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_discrete_sweep())


@pytest.mark.parametrize("path", sweep_files(), ids=lambda p: p.stem)
def test_sweep_file_composes_every_combination(path: Path) -> None:
    cmd, jobs = header_command(path)
    assert f"+sweep={path.stem}" in cmd and jobs > 0, f"{path.name}: header needs the command and '# jobs: N'"
    params = sweep_params(path.stem)
    assert params, f"{path.name}: no hydra.sweeper.params"
    cfg = yaml.safe_load(path.read_text())
    if cfg["hydra"]["sweeper"].get("n_trials"):  # Optuna: the header counts trials
        assert jobs == cfg["hydra"]["sweeper"]["n_trials"]
    else:
        assert jobs == _num_jobs(params), f"{path.name}: header says {jobs} jobs"
    base = _command_overrides(path)
    if cfg["hydra"]["sweeper"].get("n_trials"):  # interval ranges: all lower ends, then all upper ends
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        combos = [
            compose(
                base
                + [
                    f"{o.get_key_element()}={getattr(o.value(), end) if o.is_interval_sweep() else o.value()}"
                    for o in parsed
                ]
            )[0]
            for end in ("start", "end")
        ]
    else:
        combos = compose(base + [f"{k}={v}" for k, v in params.items()], all_combinations=True)
        assert len(combos) == jobs * _count(base)  # e.g. temperature: 2 per draft on the command line
    for _, c in combos:
        assert c.run_name


def test_ablation_arms_are_the_grid() -> None:
    """EAGLE-3 plus every ARW x CAR x oracle-filter combination of VSD, each exactly once."""
    arms = sweep_params("ablation")["+sweep/arm"].split(",")
    assert sorted(arms) == sorted(p.stem for p in (SWEEPS_DIR / "arm").glob("*.yaml"))
    seen = set()
    for arm in arms:
        _, c = compose(["+sweep=ablation", f"train.init_from={PLACEHOLDER}", f"+sweep/arm={arm}"])[0]
        seen.add(
            (c.loss.name,) if c.loss.name == "eagle3" else (c.loss.arw, c.loss.car, c.loss.oracle_filter)
        )
        assert c.train.init_from == PLACEHOLDER
    assert len(seen) == 9


def test_sweeps_combine_and_missing_init_fails() -> None:
    _, c = compose(["+sweep=[mc_samples,seeds]", f"train.init_from={PLACEHOLDER}", "seed=2"])[0]
    assert c.loss.name == "vsd" and c.seed == 2
    # the default job's warm start (the shipped base) serves the sweep; without one it is a one-line error
    assert compose(["+sweep=mc_samples"])[0][1].train.init_from == "shipped"
    with pytest.raises(Exception, match="init_from"):
        compose(["+sweep=mc_samples", "train=scratch"])


def test_a_typo_in_a_sweep_key_fails() -> None:
    with pytest.raises(Exception, match="num_sample"):
        compose(["+sweep=mc_samples", f"train.init_from={PLACEHOLDER}", "loss.num_sample=1,2"])


def test_wandb_agent_file_drives_run_py_with_valid_keys() -> None:
    w = yaml.safe_load((SWEEPS_DIR / "wandb_vsd.yaml").read_text())
    assert w["program"] == "run.py" and "${args_no_hyphens}" in w["command"]
    assert w["metric"] == {"name": "eval/tau", "goal": "maximize"}
    fixed = [a for a in w["command"] if "=" in a and not a.startswith("${")]
    fixed = [a.replace("${oc.env:VSD_INIT_FROM}", PLACEHOLDER) for a in fixed]
    optuna = set(sweep_params("optuna_vsd"))
    assert set(w["parameters"]) == optuna  # the same keys as the Optuna search
    for bound in ("min", "max"):
        _, c = compose(fixed + [f"{k}={v[bound]}" for k, v in w["parameters"].items()])[0]
        assert c.loss.name == "vsd" and c.tracker.mode == "online"


@pytest.mark.parametrize("name", ["sequential", "local", "slurm_cpu", "slurm_gpu"])
def test_launcher_configs(name: str) -> None:
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from vsd.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        launcher = hcompose("config", [f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher
    if name == "local":
        assert launcher.cpus_per_task == 1
    if name.startswith("slurm"):
        assert launcher.timeout_min >= 5  # Slurm may signal up to 60 s early
        assert launcher.cpus_per_task and launcher.tasks_per_node >= 1
    if name == "slurm_gpu":
        assert launcher.gpus_per_node >= 1 and launcher.tasks_per_node == launcher.gpus_per_node


def test_readme_lists_every_sweep() -> None:
    readme = (SWEEPS_DIR / "README.md").read_text()
    for p in [*sweep_files(), SWEEPS_DIR / "wandb_vsd.yaml"]:
        assert p.name in readme, f"sweeps/README.md does not mention {p.name}"
    assert (REPO / "docs" / "sweeps.md").exists()
