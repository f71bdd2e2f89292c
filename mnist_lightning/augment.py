"""Release 0.1.0's class paths `mnist_lightning.augment.*`, which its configs and checkpoints name; they load as
`mnist_lightning.data.*`, where new configs name them (docs/extending.md, "Class paths")."""

from mnist_lightning.data import AffineJitter, BatchAugment, ElasticJitter

__all__ = ["AffineJitter","" "BatchAugment","" "ElasticJitter"]
