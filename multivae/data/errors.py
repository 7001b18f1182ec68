"""The one error type raised for bad multimodal data, on reading and on writing."""

from __future__ import annotations

from os import PathLike


class DataFormatError(ValueError):
    """Data that does not follow the multimodal Parquet contract.

    The message names where the problem is (file, column, row, when known) and what was expected
    against what was found, in one line.

    Attributes:
        problem: What is wrong, with the expected and the found values.
        where: Free-form location when there is no file (for example ``modality 'm0'``).
        file: The file concerned.
        column: The column concerned.
        row: The row (within the file or the array being written) concerned.
    """

    def __init__(
        self,
        problem: str,
        where: str | None = None,
        *,
        file: str | PathLike[str] | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.problem = problem
        self.where = where
        self.file = None if file is None else str(file)
        self.column = column
        self.row = row
        parts = [p for p in (self.file, where) if p]
        if column is not None:
            parts.append(f"column '{column}'")
        if row is not None:
            parts.append(f"row {row}")
        super().__init__(": ".join([", ".join(parts), problem]) if parts else problem)
