"""tools/model_info.py against the official README's figures (parameters and FLOPs, which are MACs there)."""

import os

import pytest

from config import get_config
from model_info import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name, params, macs', [('repmlp_t_224', 38.3e6, 2.8e9), ('repmlp_b_224', 68.2e6, 6.7e9)])
def test_counts_match_the_official_table(name, params, macs):
    _, size, params_train, params_deploy, macs_train, macs_deploy = describe(
        get_config(os.path.join(ROOT, 'configs', f'{name}.yaml')))
    assert abs(params_train - params) <= 0.05e6
    assert abs(macs_deploy - macs) <= 0.05e9
    assert params_deploy > params_train and macs_train > macs_deploy  # fc3 bias added, local branches gone
