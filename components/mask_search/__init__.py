"""MaskSearch: Algorithm 1's warmup and per-task mask search, as a TFX component."""

from lt4rec.components.mask_search.component import MaskSearch

__all__ = ["MaskSearch"]
