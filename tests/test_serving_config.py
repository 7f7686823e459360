"""The TF Serving config files in `serving/` parse as the messages TF Serving reads."""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from lt4rec.models import export, network

SERVING = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving")


def test_models_config_serves_every_pushed_model_latest_version():
    with open(os.path.join(SERVING, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    models = {model.name: model for model in config.model_config_list.config}
    assert set(models) == {*network.OUTPUT_NAMES.values(), export.RANK_MODEL}
    for name, model in models.items():
        assert model.base_path == f"/models/{name}" and model.model_platform == "tensorflow"
        assert model.model_version_policy.latest.num_versions == 1


def _batching_parameters_class():
    """TF Serving's BatchingParameters (session_bundle_config.proto), which its pip package lacks."""
    int64 = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
    proto = descriptor_pb2.FileDescriptorProto(
        name="lt4rec_test_batching.proto", package="tensorflow.serving", syntax="proto3"
    )
    proto.dependency.append("google/protobuf/wrappers.proto")
    message = proto.message_type.add(name="BatchingParameters")
    for number, name in enumerate(int64, start=1):
        message.field.add(name=name, number=number, type=11, type_name=".google.protobuf.Int64Value", label=1)
    message.field.add(name="thread_pool_name", number=5, type=11, type_name=".google.protobuf.StringValue", label=1)
    message.field.add(name="allowed_batch_sizes", number=6, type=3, label=3)
    message.field.add(name="pad_variable_length_inputs", number=7, type=8, label=1)
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_parameters_parse_and_fit_a_request_of_200_candidates():
    with open(os.path.join(SERVING, "batching_parameters.txt")) as f:
        parameters = text_format.Parse(f.read(), _batching_parameters_class()())
    assert parameters.max_batch_size.value >= 200 and parameters.batch_timeout_micros.value > 0
    assert parameters.num_batch_threads.value >= 1 and not parameters.pad_variable_length_inputs
