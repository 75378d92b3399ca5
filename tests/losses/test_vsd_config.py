"""Bad loss=vsd combinations fail at compose time with one line naming the key."""

from __future__ import annotations

import pytest

from vsd.config import compose
from vsd.errors import ConfigError

WARM = "train.init_from=/some/eagle3/draft"


@pytest.mark.parametrize(
    "override,key",
    [
        ("loss.num_samples=0", "loss.num_samples"),
        ("loss.arw_target_ess=0", "loss.arw_target_ess"),
        ("loss.arw_target_ess=1.5", "loss.arw_target_ess"),
        ("loss.depth=0", "loss.depth"),
        ("loss.log_weight_clip=0", "loss.log_weight_clip"),
        ("loss.car_weight=-1", "loss.car_weight"),
    ],
)
def test_bad_vsd_values(override, key):
    with pytest.raises(ConfigError) as ei:
        compose(["model=tiny_random", "loss=vsd", WARM, override])
    assert str(ei.value).startswith(key) and "\n" not in str(ei.value)


def test_vsd_needs_warm_start():
    with pytest.raises(ConfigError, match=r"^train\.init_from: loss=vsd needs a warm start"):
        compose(["model=tiny_random", "loss=vsd", "train=scratch"])
    # either way of warm-starting composes, as does an explicit opt-out
    for ok in ([WARM], ["loss.vsd_start_step=100"], ["loss.require_warm_start=false"]):
        cfg = compose(["model=tiny_random", "loss=vsd", *ok])[0][1]
        assert cfg.loss.name == "vsd" and cfg.loss.num_samples == 4


def test_eagle3_refuses_vsd_terms():
    with pytest.raises(ConfigError, match=r"^loss\.name"):
        compose(["model=tiny_random", "loss=eagle3", "loss.vsd_weight=1.0"])
