"""LogExampleGen: ImportExampleGen for day partitions of logs, with row checks and a day split."""

from lt4rec.components.log_example_gen.component import LogExampleGen, day_span

__all__ = ["LogExampleGen", "day_span"]
