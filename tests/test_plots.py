"""The mask search's report: two readable PNGs and a summary naming every round and layer."""

import lt4rec  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

# isort: split

import matplotlib.image
import numpy as np
import pytest

from lt4rec.models import plots
from lt4rec.models.masks import LayerOverlap, overlap
from lt4rec.models.sparse_sharing import RoundResult, TaskSearch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _search(task: str, metric: str, values: list[float], best_round: int) -> TaskSearch:
    rounds = [
        RoundResult(task, index, 0.6687**index, metric, value, 10.25 + index) for index, value in enumerate(values)
    ]
    return TaskSearch(task, rounds, best_round, masks={})


@pytest.fixture
def searches() -> dict[str, TaskSearch]:
    return {
        "ctr": _search("ctr", "ctr_auc", [0.71234, 0.71502, 0.71893, 0.71377, 0.70011], best_round=2),
        "cvr": _search("cvr", "cvr_mse", [0.04512, 0.04498, 0.04467, 0.04471, 0.04390], best_round=4),
    }


@pytest.fixture
def overlaps() -> list[LayerOverlap]:
    return [
        LayerOverlap("task_masked_prune_low_magnitude_mlp_0", 16384, 2500, 900, 1100, 11884),
        LayerOverlap("task_masked_prune_low_magnitude_mlp_1", 8192, 1200, 500, 40, 6452),
        LayerOverlap("task_masked_prune_low_magnitude_mlp_2", 2048, 0, 0, 0, 2048),
    ]


def _assert_png(path, min_width: int, min_height: int) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(str(path))
    height, width, channels = image.shape
    assert width >= min_width and height >= min_height and channels in (3, 4)
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_both_figures_are_valid_pngs(searches, overlaps, tmp_path):
    plots.pruning_curve(searches, str(tmp_path / "pruning_curve.png"))
    plots.mask_overlap(overlaps, str(tmp_path / "mask_overlap.png"))
    _assert_png(tmp_path / "pruning_curve.png", min_width=800, min_height=300)
    _assert_png(tmp_path / "mask_overlap.png", min_width=600, min_height=200)


def test_figures_accept_one_task_and_masks_from_overlap(tmp_path):
    ctr = {"dense": np.array([[1, 1], [0, 0]], np.float32)}
    cvr = {"dense": np.array([[1, 0], [1, 0]], np.float32)}
    search = _search("ctr", "ctr_auc", [0.7, 0.71], best_round=1)
    plots.pruning_curve({"ctr": search}, str(tmp_path / "curve.png"))
    plots.mask_overlap(overlap(ctr, cvr), str(tmp_path / "overlap.png"))
    _assert_png(tmp_path / "curve.png", min_width=400, min_height=300)
    _assert_png(tmp_path / "overlap.png", min_width=600, min_height=150)


def test_summary_lists_every_round_and_marks_the_chosen_one(searches, overlaps):
    text = plots.summary_text(searches, overlaps)
    lines = text.splitlines()
    for search in searches.values():
        for result in search.rounds:
            numbers = (f"{100 * result.remaining:.2f}%", f"{result.value:.5f}", f"{result.seconds:.1f}")
            (line,) = [line for line in lines if all(number in line for number in numbers)]
            assert line.split()[0 if result.round != search.best_round else 1] == str(result.round)
            assert line.startswith(plots.CHOSEN_MARK) == (result.round == search.best_round)
        assert f"{search.task}: {search.rounds[0].metric}" in text
    assert sum(line.startswith(plots.CHOSEN_MARK) for line in lines) == len(searches)


def test_summary_gives_each_layer_and_the_total(searches, overlaps):
    lines = plots.summary_text(searches, overlaps).splitlines()
    for layer in overlaps:
        (line,) = [line for line in lines if line.startswith(layer.layer)]
        assert f"{layer.size:,}" in line
        assert f"{layer.shared:,} (" in line and f"{layer.unused:,} (" in line
    (total,) = [line for line in lines if line.startswith("all layers")]
    assert total.split()[2:] == [
        "26,624",
        "3,700",
        "(13.9%)",
        "1,400",
        "(5.3%)",
        "1,140",
        "(4.3%)",
        "20,384",
        "(76.6%)",
    ]
