"""Reduced-precision embedding tables: bytes on disk, resident memory and quality per storage.

Trains S-Weight once as the pipeline trains it (`comparison.train_model`: warmup, a mask
search per task, shared training) on generated logs in the paper's shape (--rows
impressions over 9 days; the tables of --table-scale 0.25, the shape of `frontier.py`'s
models), then exports from the same weights, once per embedding storage (float32, float16,
int8 with one float32 scale per row): the CTR and CVR task models as the pipeline pushes
them (compacted; dense matmuls unless --matmul measure, so that every storage has the same
kernels) and the joint rank model; and, as the reference, the dense single-task model of
the same shape (the unpruned network, float32). Printed side by side:
- bytes on disk of each model, and the CTR + CVR pair's and the rank model's ratio to two
  dense single-task models (the target: the pair at most 0.6x);
- the resident memory a fresh process gains by loading one model and scoring one request
  of 200 raw candidates (RSS after minus before; TensorFlow imported before);
- the whole `serving_default` call on those 200 candidates (median ms, interleaved rounds);
- quality on the test day, scored by the exported rank models (whose towers are the task
  models', checked) on the raw logs: CTR AUC, GAUC, CVR MSE on clicks, the difference to
  float32's, and the largest change of a score.

    .venv/bin/python benchmarks/embedding_storage.py                 # 50k impressions, seed 0: ~4 min on 2 cores
    .venv/bin/python benchmarks/embedding_storage.py --rows 200000   # a better-trained model: ~6 min
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

import comparison
from exported_models import folder_bytes, time_side_by_side
from lt4rec import features
from lt4rec.models import export, masks, training
from lt4rec.pipeline import configs

CANDIDATES = 200
KINDS = ("ctr", "cvr", "rank")
DENSE = "dense"


_RSS_SCRIPT = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) * 1024
request = tf.constant(open(sys.argv[1], "rb").read().split(b"\\0SPLIT\\0"))
before = rss()
signature = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
ranks = "rank_weights" in signature.structured_input_signature[1]
extra = {"rank_weights": tf.constant([1.0, 1.0, 1.0])} if ranks else {}
signature(examples=request, **extra)
print(rss() - before)
"""


def resident_bytes(path: str, request_file: str) -> int:
    """Resident memory a fresh process gains by loading the SavedModel at `path` and scoring one request."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, request_file, path], capture_output=True, text=True, env=env, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_day_records(folder: str) -> list[bytes]:
    """The serialized raw examples of the last day (the test split), in the split's order."""
    logs = os.path.join(folder, "logs")
    last_day = sorted(day for day in os.listdir(logs) if day.isdigit())[-1]
    files = sorted(tf.io.gfile.glob(os.path.join(logs, last_day, "part-*.gz")))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def exported_scores(path: str, records: list[bytes], batch: int = 2048) -> dict[str, np.ndarray]:
    """`ctr` and `cvr` of a SavedModel's `serving_default` (the rank model's `serving_scores`) over `records`."""
    signatures = tf.saved_model.load(path).signatures
    signature = signatures.get(export.SCORES_SIGNATURE) or signatures["serving_default"]
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(records), batch):
        for name, values in signature(examples=tf.constant(records[start : start + batch])).items():
            outputs.setdefault(name, []).append(values.numpy())
    return {name: np.concatenate(values) for name, values in outputs.items()}


def main() -> None:
    parser = comparison.build_parser()
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(rows=50_000, epochs=2, rounds=4, remaining=0.2, min_sparsity=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-rounds", type=int, default=5, help="Interleaved timing rounds.")
    parser.add_argument("--calls", type=int, default=20, help="Calls per model per timing round.")
    parser.add_argument(
        "--matmul",
        choices=export.MATMUL_CHOICES,
        default=export.DENSE,
        help="The task models' matmul paths (dense: the same kernels whatever the storage; measure: as pushed).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    begin = time.perf_counter()

    train, test, folder = comparison.load_transformed(args)
    transform_output = tft.TFTransformOutput(os.path.join(folder, "transform"))
    records = test_day_records(folder)
    assert len(records) == test.rows, (len(records), test.rows)
    build_batch = {name: tf.constant(test.examples[name][:2]) for name in features.FEATURE_NAMES}

    start = time.perf_counter()
    model, info = comparison.train_model(configs.S_WEIGHT, train, args, args.seed, build_batch)
    kept = {task: masks.remaining_fraction(masks.get_task_masks(model)[task]) for task in masks.TASKS}
    print(
        f"{args.rows} impressions ({args.catalogue} catalogue, {args.days} days, table scale {args.table_scale}), "
        f"test day {test.rows} rows; S-Weight trained in {time.perf_counter() - start:.0f} s "
        f"(rounds ctr {info['ctr_round']}, cvr {info['cvr_round']}; MLP kept ctr {100 * kept['ctr']:.0f}%, "
        f"cvr {100 * kept['cvr']:.0f}%)",
        flush=True,
    )

    out = tempfile.mkdtemp(prefix="lt4rec-embedding-storage-")
    paths: dict[str, dict[str, str]] = {}
    embedding_bytes: dict[str, int] = {}
    start = time.perf_counter()
    for storage in export.EMBEDDING_STORAGES:
        paths[storage] = {kind: os.path.join(out, storage, kind) for kind in KINDS}
        for task in masks.TASKS:
            export.export_task_model(
                model, task, transform_output, paths[storage][task], matmul=args.matmul, embedding_storage=storage
            )
        rank = export.export_rank_model(
            model, transform_output, paths[storage]["rank"], matmul=args.matmul, embedding_storage=storage
        )
        embedding_bytes[storage] = rank.embedding_bytes
    chosen = masks.get_task_masks(model)
    masks.set_task_masks(model, {task: model.initial_masks(task) for task in masks.TASKS})
    paths[DENSE] = {task: os.path.join(out, DENSE, task) for task in masks.TASKS}
    for task in masks.TASKS:
        unpruned = export.TaskNetwork(model, task, compact=False, matmul=export.DENSE)
        export.save_task_network(unpruned, transform_output, paths[DENSE][task])
    masks.set_task_masks(model, chosen)
    print(f"exported under {out} in {time.perf_counter() - start:.0f} s", flush=True)

    # Quality: the exported rank models (whose towers are the task models') score the raw test
    # day; the float32 export is the trained network.
    start = time.perf_counter()
    quality, scores = {}, {}
    for storage in export.EMBEDDING_STORAGES:
        scores[storage] = exported_scores(paths[storage]["rank"], records)
        quality[storage] = comparison._metrics(test, scores[storage]["ctr"], scores[storage]["cvr"])
    pair = {task: exported_scores(paths[export.INT8][task], records[:CANDIDATES])[task] for task in masks.TASKS}
    for task in masks.TASKS:  # the task models score as the rank model (checked on one request)
        np.testing.assert_allclose(pair[task], scores[export.INT8][task][:CANDIDATES], atol=1e-5)
    in_memory = training.predict(model, training.ordered_batches(test.examples, 4096))
    float32_gap = max(float(np.abs(scores[export.FLOAT32][task] - in_memory[task]).max()) for task in masks.TASKS)
    print(f"test day scored by every export in {time.perf_counter() - start:.0f} s", flush=True)

    # Latency and resident memory: one request of 200 raw candidates.
    request = records[:CANDIDATES]
    request_file = os.path.join(out, "request.bin")
    with open(request_file, "wb") as f:
        f.write(b"\0SPLIT\0".join(request))
    weights = tf.constant([1.0, 1.0, 1.0])
    calls = {}
    for storage, models in paths.items():
        for kind, path in models.items():
            if kind == "cvr":
                continue  # as the CTR model but for its tower: timed through the rank model and CTR
            signature = tf.saved_model.load(path).signatures["serving_default"]
            extra = {"rank_weights": weights} if kind == "rank" else {}
            calls[(storage, kind)] = lambda s=signature, e=extra: s(examples=tf.constant(request), **e)
    ms = time_side_by_side(calls, args.timing_rounds, args.calls)
    start = time.perf_counter()
    disk = {storage: {kind: folder_bytes(path) for kind, path in models.items()} for storage, models in paths.items()}
    resident = {
        storage: {kind: resident_bytes(path, request_file) for kind, path in models.items()}
        for storage, models in paths.items()
    }
    print(f"resident memory measured in {time.perf_counter() - start:.0f} s\n", flush=True)

    two_dense = disk[DENSE]["ctr"] + disk[DENSE]["cvr"]
    print(
        f"{'storage':<20} {'CTR MB':>7} {'CVR MB':>7} {'rank MB':>8} {'pair x2dense':>12} {'rank x2dense':>12} "
        f"{'tables MB':>9} {'CTR RSS MB':>10} {'CVR RSS MB':>10} {'rank RSS MB':>11} {'CTR ms':>7} {'rank ms':>8}"
    )
    mb = 1e6
    print(
        f"{'dense single-task':<20} {disk[DENSE]['ctr'] / mb:7.2f} {disk[DENSE]['cvr'] / mb:7.2f} {'':>8} "
        f"{1.0:12.3f} {'':>12} {embedding_bytes[export.FLOAT32] / mb:9.2f} "
        f"{resident[DENSE]['ctr'] / mb:10.1f} {resident[DENSE]['cvr'] / mb:10.1f} {'':>11} "
        f"{ms[(DENSE, 'ctr')]:7.2f} {'':>8}"
    )
    for storage in export.EMBEDDING_STORAGES:
        size, rss = disk[storage], resident[storage]
        print(
            f"{'S-Weight ' + storage:<20} {size['ctr'] / mb:7.2f} {size['cvr'] / mb:7.2f} {size['rank'] / mb:8.2f} "
            f"{(size['ctr'] + size['cvr']) / two_dense:12.3f} {size['rank'] / two_dense:12.3f} "
            f"{embedding_bytes[storage] / mb:9.2f} {rss['ctr'] / mb:10.1f} {rss['cvr'] / mb:10.1f} "
            f"{rss['rank'] / mb:11.1f} {ms[(storage, 'ctr')]:7.2f} {ms[(storage, 'rank')]:8.2f}"
        )
    print(
        "MB: bytes on disk of the SavedModel folder (1e6 bytes); x2dense: over two dense single-task models "
        "(CTR + CVR); tables: the id tables' bytes in one model; RSS: what a fresh process gains by loading the "
        f"model and scoring one request of {CANDIDATES} raw candidates; ms: median serving_default call on them.\n"
    )
    base = quality[export.FLOAT32]
    print(
        f"{'storage':<20} {'CTR AUC':>8} {'d AUC':>9} {'GAUC':>8} {'d GAUC':>9} {'CVR MSE':>9} {'d MSE':>8} "
        f"{'max |d pCTR|':>12} {'max |d pCVR|':>12}"
    )
    for storage in export.EMBEDDING_STORAGES:
        q = quality[storage]
        gaps = {task: float(np.abs(scores[storage][task] - scores[export.FLOAT32][task]).max()) for task in masks.TASKS}
        print(
            f"{'S-Weight ' + storage:<20} {q['ctr_auc']:8.4f} {q['ctr_auc'] - base['ctr_auc']:+9.5f} "
            f"{q['ctr_gauc']:8.4f} {q['ctr_gauc'] - base['ctr_gauc']:+9.5f} {q['cvr_mse']:9.5f} "
            f"{100 * (q['cvr_mse'] / base['cvr_mse'] - 1):+7.3f}% {gaps['ctr']:12.2e} {gaps['cvr']:12.2e}"
        )
    print(
        f"Test day: {test.rows} rows, {int(test.examples[features.CLICK_LABEL].sum())} clicks, scored by the exported "
        f"models on the raw logs (the rank model's scores equal the task models'); the float32 export is the trained "
        f"network within {float32_gap:.1e}. Seed spread for scale (docs/RESULTS.md, S-Weight over 3 seeds at 1M "
        f"impressions): CTR AUC +-0.0028, CVR MSE +-0.00089 (1.5%).\n"
        f"total {time.perf_counter() - begin:.0f} s"
    )


if __name__ == "__main__":
    main()
