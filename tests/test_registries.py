"""One registry per axis (drafter, loss, peer): each name the schema accepts has exactly one builder."""

from __future__ import annotations

import ast
import re

import pytest

from vsd.config.schema import DecodingConfig, EvalConfig, LossConfig
from vsd.decoding.registry import DRAFTERS
from vsd.errors import ConfigError
from vsd.evaluation.turns import PEERS
from vsd.losses import LOSSES


def _choices(make) -> set[str]:
    """The names the schema accepts, read from its one-line error for an unknown name."""
    with pytest.raises(ConfigError) as e:
        make("no-such-name")
    return set(ast.literal_eval(re.search(r"must be one of (\[.*?\])", str(e.value)).group(1)))


def test_each_schema_choice_has_one_registered_builder():
    assert _choices(lambda n: DecodingConfig(drafter=n)) == set(DRAFTERS)
    assert _choices(lambda n: LossConfig(name=n)) == set(LOSSES)
    assert _choices(lambda n: EvalConfig(peers=[n])) == set(PEERS)
