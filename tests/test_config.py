"""Every config option composes; bad configs fail at compose time with one line naming the key."""

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PY, ROOT
from vsd.config import CONF_DIR, compose, format_error

GROUPS = ["model", "dataset", "loss", "decoding", "eval", "train", "tracker", "paths"]
# Options that need a value the user must supply (path of their own file).
NEEDS = {
    "dataset/jsonl_file": ["dataset.path=/tmp/x.jsonl"],
    "dataset/hf_dataset": ["dataset.hf_name=/tmp/x"],
    "eval/file": ["eval.prompts=/tmp/p.jsonl"],
    "loss/vsd": ["train.init_from=/tmp/draft"],
    "train/scratch": ["loss=eagle3"],  # the default loss (vsd) needs the warm start only train=default names
    "train/tiny": ["loss=eagle3"],
}


def options():
    for g in GROUPS:
        for f in sorted((CONF_DIR / g).glob("*.yaml")):
            yield g, f.stem


@pytest.mark.parametrize("group,option", list(options()))
def test_every_option_composes(group, option):
    extra = NEEDS.get(f"{group}/{option}", [])
    _, cfg = compose([f"{group}={option}", *extra])[0]
    assert getattr(cfg, group) is not None


@pytest.mark.parametrize("exp", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes(exp):
    _, cfg = compose([f"experiment={exp}"])[0]
    assert cfg.run_name


def test_launcher_configs_exist():
    assert (CONF_DIR / "hydra" / "launcher").is_dir()


BAD = [
    (["model.hidden=3"], "model.hidden"),  # unknown key
    (["trian.steps=3"], "trian"),  # typo'd group
    (["train.steps=abc"], "train.steps"),  # wrong type
    (["train.steps=0"], "train.steps"),  # out of range
    (["loss=vsd", "loss.num_samples=0", "train.init_from=x"], "loss.num_samples"),
    (["loss=vsd", "loss.arw_target_ess=1.5", "train.init_from=x"], "loss.arw_target_ess"),
    (["loss=vsd", "train=scratch"], "train.init_from"),  # VSD needs a warm start
    (["decoding.temperature=-1"], "decoding.temperature"),
    (["decoding.mode=beam"], "decoding.mode"),
    (["dataset=jsonl_file"], "dataset.path"),  # missing required value
    (["model=nope"], "model/nope"),  # unknown option
    (["device=tpu"], "device"),
    (["train.batch_size=6", "train.grad_accum=4"], "train.grad_accum"),
    (["+loss.nosuchkey=1"], "loss.nosuchkey"),  # Hydra's '+' adds keys past the struct flag
    (["++model.draft.nosuchkey=1"], "model.draft.nosuchkey"),
    (["+nosuchkey=1"], "nosuchkey"),
    # the regime keys (issue 17): each bad value is one line naming its key
    (["dataset.responses=human"], "dataset.responses"),
    (["loss.estep=beam"], "loss.estep"),
    (["loss.estep=tree", "loss.verify_temperature=1.0"], "loss.estep"),  # the tree E-step is greedy only
    (["loss.acceptance=mean"], "loss.acceptance"),
    (["loss.vsd_norm=batch"], "loss.vsd_norm"),
    (["loss.tree_top_k=0"], "loss.tree_top_k"),
    (["loss.grad_cosine_every=-1"], "loss.grad_cosine_every"),
    (["regime=nope"], "regime/nope"),
    (["eval.method=sampled"], "eval.method"),
    (["eval.method=reference", "decoding.temperature=1.0"], "eval.method"),  # reference is T=0 only
    (["decoding.shape=best"], "decoding.shape"),
    (["decoding.ngram_branch=-2"], "decoding.ngram_branch"),
    (["train.features_batch_size=0"], "train.features_batch_size"),
    (["dataset.turns=some"], "dataset.turns"),  # issue 28
]


@pytest.mark.parametrize("overrides,key", BAD)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(Exception) as ei:
        compose(overrides)
    line = format_error(ei.value)
    assert "\n" not in line
    assert key in line, line


@pytest.mark.parametrize(
    "override,key", [("train.stepz=3", "train.stepz"), ("+loss.nosuchkey=1", "loss.nosuchkey")]
)
def test_run_py_bad_key_is_one_line_and_leaves_nothing(tmp_path, override, key):
    r = subprocess.run(
        [PY, "run.py", override, f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and key in err[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_extra_stays_free_form():
    _, cfg = compose(["+extra.note=hello", "+extra.sub.depth=2"])[0]
    assert cfg.extra == {"note": "hello", "sub": {"depth": 2}}


def test_sweep_syntax_composes_every_combination():
    out = compose(
        ["loss=vsd", "train.init_from=x", "loss.arw=true,false", "loss.car=true,false"], all_combinations=True
    )
    assert {(c.loss.arw, c.loss.car) for _, c in out} == {
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    }


def test_sqlite_file_resolver_makes_the_folder(tmp_path: Path) -> None:
    # Optuna studies stored as SQLite (sweeps/paper_tune_*.yaml): SQLite will not create the folder itself.
    from omegaconf import OmegaConf

    from vsd.config import register

    register()
    cfg = OmegaConf.create({"db": "${sqlite_file:" + str(tmp_path / "a" / "b" / "study.db") + "}"})
    assert cfg.db == f"sqlite:///{tmp_path / 'a' / 'b' / 'study.db'}"
    assert (tmp_path / "a" / "b").is_dir()


def test_sweep_jobs_whole_grid_or_value_by_value():
    from vsd.config import sweep_jobs

    axes = [["a=1", "a=2"], ["b=1", "b=2", "b=3"]]
    assert len(sweep_jobs(axes, limit=6)) == 6  # small grid: every job
    one_by_one = sweep_jobs(axes, limit=5)
    assert one_by_one == [("a=1", "b=1"), ("a=2", "b=1"), ("a=1", "b=2"), ("a=1", "b=3")]


@pytest.mark.parametrize(
    "overrides,params,bad",
    [
        (["train.lr=1e-3,-1"], [], "train.lr=-1"),  # a later command-line value
        (["seed=range(0,40)", "train.lr=1e-3,-1"], [], "train.lr=-1"),  # a grid too large to check whole
        (["+sweep=paper_main"], ["decoding.temperature=0.0,-1"], "decoding.temperature=-1"),  # sweeper params
        (["+sweep=paper_tune_eagle3"], ["loss.step_decay=interval(0.5, 1.5)"], "loss.step_decay=1.5"),
    ],
)
def test_validate_multirun_names_the_bad_job(overrides, params, bad):
    from vsd.config import validate_multirun

    with pytest.raises(Exception) as ei:
        validate_multirun(overrides, params)
    line = format_error(ei.value)
    assert "\n" not in line and bad in line, line


def test_validate_multirun_counts_jobs_of_grids_and_optuna_intervals():
    from vsd.config import validate_multirun

    assert validate_multirun(["+sweep=paper_main"]) == 12  # 2 experiments x 3 seeds x 2 temperatures
    # Optuna: experiment fixed, each interval checked at both ends (2 x 2), nothing launched
    assert validate_multirun(["+sweep=paper_tune_eagle3"]) == 4


def test_one_default_per_decoding_key():
    """The default job's decoding settings are the schema's defaults: conf/decoding/tree.yaml restates none
    with another value (decoding.shape and ngram_branch once differed there)."""
    from vsd.config.schema import DecodingConfig

    _, cfg = compose([])[0]
    assert cfg.decoding == DecodingConfig()
    assert (cfg.decoding.shape, cfg.decoding.ngram_branch) == ("auto", 5)
    for preset in ("chain", "ngram"):  # the chain presets pin a fixed shape without a branch
        _, c = compose([f"decoding={preset}"])[0]
        assert (c.decoding.shape, c.decoding.ngram_branch) == ("fixed", 0)
