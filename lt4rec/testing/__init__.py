"""Tools for the tests and benchmarks, not used by the pipeline: Transform outside a
pipeline (`offline_transform`) and a Trainer's workers as a local cluster (`trainer_cluster`)."""
