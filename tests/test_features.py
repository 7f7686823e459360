"""The feature spec: the log's columns, and the id tables built from it."""

import pytest

from lt4rec import features


def test_spec_matches_the_log_format():
    assert len(features.FEATURES) == 20
    assert sum(not f.multivalued for f in features.FEATURES) == 15
    assert {f.name for f in features.FEATURES if f.multivalued} == {
        "FEA_UCAT",
        "FEA_IKEYWORD",
        "FEA_IXFTAG",
        "FEA_SIKEYWORD",
        "FEA_STAG",
    }
    assert all(name.startswith("FEA_") for name in features.FEATURE_NAMES)


def test_shared_tables_group_related_features():
    config = features.feature_config()
    table_of = config.table_of
    assert table_of["FEA_VID"] is table_of["FEA_SVID"]
    assert table_of["FEA_IKEYWORD"] is table_of["FEA_SIKEYWORD"] is table_of["FEA_STAG"]
    assert table_of["FEA_ICAT1"].name == "category"
    assert set(table_of["FEA_ICAT1"].features) == {"FEA_ICAT1", "FEA_ICAT2", "FEA_SICAT1", "FEA_SICAT2", "FEA_UCAT"}
    assert table_of["FEA_UID"] is not table_of["FEA_VID"]
    assert sorted(table_of) == sorted(features.FEATURE_NAMES)


def test_unshared_tables_are_one_per_feature():
    config = features.feature_config(share_tables=False)
    assert len(config.tables) == 20
    assert all(table.features == (table.name,) for table in config.tables)


def test_overrides_by_table_or_feature_name():
    config = features.feature_config(overrides={"video": {"size": 1000}, "FEA_AGE": {"encoding": "hash", "size": 99}})
    assert config.table_of["FEA_SVID"].size == 1000
    assert config.table_of["FEA_AGE"].encoding == features.Encoding.HASH
    assert config.table_of["FEA_AGE"].size == 99


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"no_such_table": {"size": 3}}, "no_such_table"),
        ({"video": {"buckets": 3}}, "unknown setting"),
        ({"age": {"size": 2}}, "too small"),
        ({"age": {"encoding": "bloom"}}, "bloom"),
    ],
)
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        features.feature_config(overrides=overrides)


def test_config_round_trips_through_its_dict():
    config = features.scaled_config(0.01)
    assert features.FeatureConfig.from_dict(config.to_dict()) == config


def test_scaled_config_scales_hashed_tables_only():
    config = features.scaled_config(0.01)
    assert config.table_of["FEA_UID"].size == int((1 << 18) * 0.01)
    assert config.table_of["FEA_AGE"].size == features.DEFAULT_TABLES["age"][1]
    assert features.scaled_config(1e-9).table_of["FEA_UID"].size == 64


def test_from_dict_rejects_a_feature_in_two_tables():
    config = features.feature_config().to_dict()
    config["tables"][0]["features"].append("FEA_VID")
    with pytest.raises(ValueError, match="FEA_VID"):
        features.FeatureConfig.from_dict(config)
