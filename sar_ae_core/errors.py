"""Error types shared by every front end (CLI, QGIS, training)."""

from __future__ import annotations

import os


class SarInputError(Exception):
    """Bad user input: the message names the file and the problem; front ends exit with code 2."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class Cancelled(Exception):
    """The user cancelled a long-running operation; partial outputs have been removed."""
