"""SparseSharingTrainer: TFX's Trainer with a masks input."""

from lt4rec.components.sparse_sharing_trainer.component import SparseSharingTrainer

__all__ = ["SparseSharingTrainer"]
