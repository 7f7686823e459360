"""LT4REC: sparse-sharing CTR and CVR models, from video logs to TF Serving.

Every module of the project is imported as `lt4rec.<package>`, so this file runs first:
it selects Keras 2 (tf_keras) before TensorFlow is imported anywhere, which TF-MOT's
pruning wrappers and TFX need (TensorFlow 2.16 would otherwise give Keras 3).

`lt4rec.Masks` is the masks artifact type under the name its schema title carries in a
compiled Kubeflow / Vertex spec: TFX's container entrypoint imports a custom artifact
type by that title, so it must resolve here (lazily: this file stays free of TFX).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def __getattr__(name: str):
    if name == "Masks":
        from lt4rec.components.artifacts import Masks

        return Masks
    raise AttributeError(f"module 'lt4rec' has no attribute {name!r}")
