"""Transform's preprocessing_fn, run by tf.Transform's Beam implementation on a few rows."""

import tempfile

import numpy as np
import pytest
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata
from tfx.utils import io_utils

from lt4rec import features
from lt4rec.models import preprocessing
from lt4rec.pipeline import configs


def _row(**values):
    row = {name: [b"-1"] for name in features.FEATURE_NAMES}
    row.update(
        {
            features.CLICK_LABEL: [0],
            features.WATCH_RATIO_LABEL: [0.0],
            features.REQUEST_ID: [b"r@1@1"],
            features.PRODUCTION_PCTR: [b"0.5"],
        }
    )
    for key, value in values.items():
        row[key] = value
    return row


ROWS = [
    _row(
        FEA_UID=[b"u1"],
        FEA_VID=[b"v1"],
        FEA_SVID=[b"v2"],
        FEA_ICAT1=[b"105"],
        FEA_SICAT1=[b"105"],
        FEA_UCAT=[b"c1", b"c2", b"c3", b"c4", b"c5", b"c6", b"c7", b"c8"],
        FEA_AGE=[b"3"],
        label=[1],
        cvrlabel=[0.75],
    ),
    _row(
        FEA_UID=[b"u2"],
        FEA_VID=[b"v2"],
        FEA_SVID=[b"v1"],
        FEA_ICAT1=[b"105"],
        FEA_SICAT1=[b"107"],
        FEA_IKEYWORD=[b"kw1", "新闻".encode(), b"-1"],
        FEA_AGE=[b"3"],
    ),
    _row(FEA_UID=[b"u3"], FEA_VID=[b"v3"], FEA_ICAT1=[b"106"], FEA_AGE=[b"4"], FEA_UCAT=[b"c1"]),
]


@pytest.fixture(scope="module")
def transformed():
    config = features.feature_config(overrides={"video": {"size": 1000}, "age": {"size": 3}})
    schema = io_utils.SchemaReader().read(configs.SCHEMA_PATH)
    metadata = dataset_metadata.DatasetMetadata(schema)
    with tempfile.TemporaryDirectory() as temp_dir, tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
        (result, _), _ = (ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, {preprocessing.FEATURES_CONFIG_KEY: config.to_dict()})
        )
    return config, result


def test_every_feature_is_a_fixed_width_row_of_ids(transformed):
    config, rows = transformed
    for row in rows:
        for spec in features.FEATURES:
            ids = np.asarray(row[spec.name])
            assert ids.shape == (spec.max_values,), spec.name
            assert np.all((ids >= 0) & (ids < config.table_of[spec.name].size)), spec.name


def test_missing_values_and_padding_are_id_zero(transformed):
    _, rows = transformed
    assert list(rows[0]["FEA_IKEYWORD"]) == [0] * 8
    keywords = list(rows[1]["FEA_IKEYWORD"])
    assert keywords[0] > 0 and keywords[1] > 0 and keywords[2:] == [0] * 6
    assert rows[2]["FEA_SVID"][0] == 0


def test_multivalued_features_are_cut_to_their_cap(transformed):
    _, rows = transformed
    assert np.all(np.asarray(rows[0]["FEA_UCAT"]) > 0)  # 8 values cut to the first 6


def test_shared_tables_give_one_value_one_id(transformed):
    _, rows = transformed
    assert rows[0]["FEA_VID"][0] == rows[1]["FEA_SVID"][0] != rows[0]["FEA_SVID"][0] == rows[1]["FEA_VID"][0]
    assert rows[0]["FEA_ICAT1"][0] == rows[0]["FEA_SICAT1"][0] == rows[1]["FEA_ICAT1"][0]
    assert rows[1]["FEA_SICAT1"][0] != rows[1]["FEA_ICAT1"][0]
    assert rows[0]["FEA_UCAT"][0] == rows[2]["FEA_UCAT"][0]


def test_vocabulary_keeps_the_most_frequent_values_and_sends_the_rest_to_oov(transformed):
    _, rows = transformed
    # the age table (size 3) keeps one value: "3", seen twice; "4" is out of vocabulary
    assert rows[0]["FEA_AGE"][0] == rows[1]["FEA_AGE"][0] == preprocessing.FIRST_VOCABULARY_ID
    assert rows[2]["FEA_AGE"][0] == preprocessing.OOV_ID


def test_hashed_ids_match_the_fingerprint(transformed):
    import tensorflow as tf

    config, rows = transformed
    size = config.table_of["FEA_VID"].size
    expected = int(tf.strings.to_hash_bucket_fast(["v1"], size - 1).numpy()[0]) + 1
    assert rows[0]["FEA_VID"][0] == expected


def test_labels_pass_through(transformed):
    _, rows = transformed
    assert [int(r["label"]) for r in rows] == [1, 0, 0]
    assert [float(r["cvrlabel"]) for r in rows] == pytest.approx([0.75, 0.0, 0.0])
