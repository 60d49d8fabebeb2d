"""utils.py: rank helpers and meters in one process (world size 1, no collective is called)."""

import numpy as np

import utils


def test_rank_helpers_in_one_process():
    assert utils.get_world_size() == 1 and utils.get_rank() == 0 and utils.is_main_process()
    np.testing.assert_array_equal(utils.all_reduce_sum([1, 2.5]), [1.0, 2.5])
    assert utils.on_main_process(lambda: 'read') == 'read'


def test_average_meter_weights_each_value_by_its_count():
    meter = utils.AverageMeter()
    assert meter.global_avg() == 0.0
    meter.update(2.0, 3)
    meter.update(4.0, 1)
    assert meter.global_avg() == (2.0 * 3 + 4.0) / 4
