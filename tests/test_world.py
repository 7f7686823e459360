"""The synthetic world: real-traffic statistics, known truth, and the relatedness knob."""

import numpy as np
import pytest

from lt4rec.logs import world as world_lib


@pytest.fixture(scope="module")
def sample():
    world = world_lib.World(world_lib.WorldConfig(rows=20_000, days=3, seed=3))
    return world, world.sample(20_000)


def test_labels_match_the_real_sample(sample):
    _, impressions = sample
    clicked = impressions.click == 1
    assert abs(clicked.mean() - world_lib.TARGET_CTR) < 0.02
    ratio = impressions.watch_ratio[clicked]
    assert abs(ratio.mean() - world_lib.TARGET_MEAN_WATCH_RATIO) < 0.03
    assert abs((ratio == 1.0).mean() - world_lib.TARGET_FULL_WATCH_SHARE) < 0.04
    # watch ratio > 0 exactly on clicks, and within [0, 1]
    assert np.all(impressions.watch_ratio[~clicked] == 0.0)
    assert np.all(ratio > 0.0) and np.all(ratio <= 1.0)


def test_truth_explains_the_labels(sample):
    _, impressions = sample
    # the true probabilities are calibrated...
    assert abs(impressions.p_click.mean() - impressions.click.mean()) < 0.02
    clicked = impressions.click == 1
    assert abs(impressions.expected_watch_ratio[clicked].mean() - impressions.watch_ratio[clicked].mean()) < 0.02
    # ...and informative: clicked impressions have a higher true pCTR
    assert impressions.p_click[clicked].mean() > impressions.p_click[~clicked].mean() + 0.05


def test_popularity_is_long_tailed(sample):
    world, impressions = sample
    per_user = np.bincount(impressions.user)
    per_user = per_user[per_user > 0]
    assert per_user.max() > 4 * per_user.mean()
    distinct_videos = len(np.unique(impressions.video))
    assert distinct_videos > 0.8 * len(impressions)  # most videos are seen once
    counts = np.sort(np.bincount(impressions.video))[::-1]
    assert counts[0] >= 20  # and a few are seen very often


def test_requests_never_show_a_video_twice(sample):
    _, impressions = sample
    keys = impressions.request_no * 10**9 + impressions.video
    assert len(np.unique(keys)) == len(keys)


def test_same_seed_same_world_and_chunks_differ():
    config = world_lib.WorldConfig(rows=2000, seed=11)
    first, second = world_lib.World(config).sample(2000), world_lib.World(config).sample(2000)
    np.testing.assert_array_equal(first.video, second.video)
    np.testing.assert_array_equal(first.click, second.click)
    other_chunk = world_lib.World(config).sample(2000, chunk=1)
    assert not np.array_equal(first.video, other_chunk.video)


def test_relatedness_ties_the_tasks_together():
    def correlation(rho):
        world = world_lib.World(world_lib.WorldConfig(rows=20_000, seed=5, task_relatedness=rho))
        impressions = world.sample(20_000)
        logit = lambda p: np.log(p / (1 - p))
        return np.corrcoef(logit(impressions.p_click), logit(impressions.expected_watch_ratio))[0, 1]

    independent, related = correlation(0.0), correlation(1.0)
    assert related > independent + 0.3


@pytest.mark.parametrize("bad", [dict(rows=0), dict(rows=10, days=0), dict(rows=10, task_relatedness=1.5)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        world_lib.WorldConfig(**bad)
