"""`lt4rec serve`'s settings: one field each, with its default, range and help.

The command's options are generated from these fields (`options.click_options`), and the
server (`serving/server.py`) takes them as one object, so a default is written once. Where
TF Serving's `tensorflow_model_server` has the same flag, the name and meaning follow it.
Nothing here imports TensorFlow or gRPC: the command line checks its options first.
"""

from __future__ import annotations

import dataclasses

from lt4rec.options import setting


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    model_base_path: str = setting(help="Folder of models: MODEL_BASE_PATH/<model>/<version>/saved_model.pb.")
    port: int = setting(8500, "gRPC port (0: pick a free one, logged).", low=0, high=65535)
    rest_api_port: int | None = setting(
        None,
        "Also answer TF Serving's REST API on this port (TF Serving's --rest_api_port; 0: pick a free one).",
        low=0,
        high=65535,
    )
    num_versions: int = setting(1, "Latest versions served per model.", low=1)
    poll_seconds: float = setting(
        2.0, "How often to look for new versions (TF Serving's --file_system_poll_wait_seconds).", low=0, low_open=True
    )
    max_batch_size: int = setting(1000, "Most examples per request; larger ones get RESOURCE_EXHAUSTED.", low=1)
    # What one request may cost. TF Serving allows INT32_MAX bytes; a ranking request of
    # 1,000 candidates of a few KB each is far below these.
    max_request_bytes: int = setting(32 << 20, "Largest request; larger ones get RESOURCE_EXHAUSTED.", low=1024)
    max_values_per_feature: int = setting(
        4096, "Most values in one feature of one example; more get INVALID_ARGUMENT.", low=1
    )
    workers: int = setting(8, "Threads answering RPCs.", low=1)
    # One thread per op and one op per core: measured on 2 cores with ranking requests of 200
    # candidates (benchmarks/grpc_latency.py), 1.13x the requests/s of TensorFlow's default
    # (every op on every core) at concurrency 16, and a lower p50 and p99 at concurrency 1.
    tensorflow_intra_op_parallelism: int = setting(
        1, "Threads one TensorFlow op may use (TF Serving's --tensorflow_intra_op_parallelism; 0: one per core).", low=0
    )
    tensorflow_inter_op_parallelism: int = setting(
        0, "TensorFlow ops run at once (TF Serving's --tensorflow_inter_op_parallelism; 0: one per core).", low=0
    )
    grace_seconds: float = setting(
        5.0, "On SIGTERM, the time to drain: every request received is answered within it.", low=0
    )
