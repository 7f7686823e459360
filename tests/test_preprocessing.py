"""Transform's preprocessing_fn, run by tf.Transform's Beam implementation on a few rows."""

import tempfile

import numpy as np
import pytest
import tensorflow as tf
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
    # the tag table's four features side by side (one absent, one over its cap); c8 only past FEA_UCAT's cap
    _row(
        FEA_VID=[b"v3"],
        FEA_SVID=[b"v1"],
        FEA_IKEYWORD=[b"k1", b"", b"k2", b"-1"],
        FEA_IXFTAG=[b"t1", b"t2", b"t3", b"t4", b"t5", b"t6", b"t7", b"t8"],
        FEA_SIKEYWORD=[],
        FEA_STAG=[b"k1"],
        FEA_UCAT=[b"c9"] * 6 + [b"c8"] * 6,
        FEA_SICAT2=[b"c8"],
    ),
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
    config, rows = transformed
    size = config.table_of["FEA_VID"].size
    expected = int(tf.strings.to_hash_bucket_fast(["v1"], size - 1).numpy()[0]) + 1
    assert rows[0]["FEA_VID"][0] == expected


def test_each_feature_of_a_shared_table_gets_the_ids_of_its_own_values(transformed):
    config, rows = transformed

    def hashed(table: str, values: list[str]) -> list[int]:
        ids = tf.strings.to_hash_bucket_fast(values, config.table_of[table].size - 1).numpy() + 1
        return [0 if value in ("-1", "") else int(i) for value, i in zip(values, ids)]

    row = rows[3]
    assert list(row["FEA_IKEYWORD"]) == hashed("FEA_IKEYWORD", ["k1", "", "k2", "-1"]) + [0] * 4
    assert list(row["FEA_IXFTAG"]) == hashed("FEA_IXFTAG", ["t1", "t2", "t3", "t4", "t5", "t6"])
    assert list(row["FEA_SIKEYWORD"]) == [0] * 8
    assert list(row["FEA_STAG"]) == hashed("FEA_STAG", ["k1"]) + [0] * 5
    assert row["FEA_STAG"][0] == row["FEA_IKEYWORD"][0]
    assert list(row["FEA_VID"]) + list(row["FEA_SVID"]) == hashed("FEA_VID", ["v3", "v1"])


def test_a_shared_vocabulary_counts_the_values_of_all_its_features_within_their_caps(transformed):
    _, rows = transformed
    # category counts within the caps: c9 6 (FEA_UCAT, row 3), 105 3 (FEA_ICAT1, FEA_SICAT1), c1 2 (FEA_UCAT);
    # c8 would come first if its 7 values past FEA_UCAT's cap counted
    first = preprocessing.FIRST_VOCABULARY_ID
    assert list(rows[3]["FEA_UCAT"]) == [first] * 6
    assert rows[0]["FEA_ICAT1"][0] == rows[0]["FEA_SICAT1"][0] == first + 1
    assert list(rows[2]["FEA_UCAT"]) == [first + 2] + [0] * 5
    assert rows[3]["FEA_SICAT2"][0] > first + 2


def test_labels_pass_through(transformed):
    _, rows = transformed
    assert [int(r["label"]) for r in rows] == [1, 0, 0, 0]
    assert [float(r["cvrlabel"]) for r in rows] == pytest.approx([0.75, 0.0, 0.0, 0.0])
