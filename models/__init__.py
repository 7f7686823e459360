"""TensorFlow code the pipeline's components call; knows nothing of TFX orchestration."""
