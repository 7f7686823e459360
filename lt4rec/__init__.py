"""LT4REC: sparse-sharing CTR and CVR models, from video logs to TF Serving.

Every module of the project is imported as `lt4rec.<package>`, so this file runs first:
it selects Keras 2 (tf_keras) before TensorFlow is imported anywhere, which TF-MOT's
pruning wrappers and TFX need (TensorFlow 2.16 would otherwise give Keras 3).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
