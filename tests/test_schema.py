"""The curated schema agrees with the feature spec and accepts the generator's logs."""

import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

from lt4rec import features
from lt4rec.pipeline import configs


def _schema() -> schema_pb2.Schema:
    return io_utils.SchemaReader().read(configs.SCHEMA_PATH)


def test_schema_lists_every_log_column_with_its_type_and_valence():
    by_name = {f.name: f for f in _schema().feature}
    assert set(by_name) == set(features.FEATURE_NAMES) | {
        features.CLICK_LABEL,
        features.WATCH_RATIO_LABEL,
        features.REQUEST_ID,
        features.PRODUCTION_PCTR,
    }
    for spec in features.FEATURES:
        feature = by_name[spec.name]
        assert feature.type == schema_pb2.BYTES
        assert (feature.value_count.min, feature.value_count.max) == (1, spec.max_values)
        assert feature.presence.min_fraction == 1.0
    click, ratio = by_name[features.CLICK_LABEL], by_name[features.WATCH_RATIO_LABEL]
    assert click.type == schema_pb2.INT and (click.int_domain.min, click.int_domain.max) == (0, 1)
    assert ratio.type == schema_pb2.FLOAT and (ratio.float_domain.min, ratio.float_domain.max) == (0.0, 1.0)


def test_generated_logs_have_no_anomalies(tiny_logs):
    statistics = tfdv.generate_statistics_from_tfrecord(os.path.join(tiny_logs, "2020101[12]", "part-*.gz"))
    anomalies = tfdv.validate_statistics(statistics, _schema())
    assert not anomalies.anomaly_info, anomalies.anomaly_info
