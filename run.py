"""vsd entry point: compose (Hydra) -> validate -> seed -> build -> stages -> records.

python run.py                                   # embedded default (SmolLM2-135M, EAGLE-3, eval)
python run.py experiment=smoke                  # whole pipeline on a tiny random model, seconds
python run.py loss=vsd train.init_from=DIR      # VSD fine-tune of an EAGLE-3 draft
python run.py stages=[eval] draft.checkpoint=DIR
python run.py -m loss.num_samples=1,4,16        # a sweep (see sweeps/)
"""

import sys

import hydra
from omegaconf import DictConfig

from vsd.config import register
from vsd.pipeline import hydra_task, preflight

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return hydra_task(cfg)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
