"""Every exception the projections raise, each with when it is raised."""

from __future__ import annotations


class ProjectionError(Exception):
    """Base of every error the projections raise on purpose."""


class UnknownView(ProjectionError, LookupError):  # noqa: N818 - reads as "unknown view: ..."
    """Raised when a command names a view that does not exist."""


class ViewOutdated(ProjectionError):  # noqa: N818
    """Raised when a stored view was built by another version of its rules: rebuild it."""


class ViewNotTracked(ProjectionError):  # noqa: N818
    """Raised when a view is used before its tables and tracked position exist."""


class ViewMoved(ProjectionError):  # noqa: N818
    """Raised inside a batch when another writer moved the view first; the batch is retried."""


class ViewsKeepMoving(ProjectionError):  # noqa: N818
    """Raised when catching up lost the race to other writers more times than allowed."""


class MalformedRow(ProjectionError):  # noqa: N818
    """Raised when a row of the events table lacks a value, or holds one of the wrong type."""

    def __init__(self, sequence: int, detail: str) -> None:
        self.sequence = sequence
        super().__init__(f"event {sequence} of the log is malformed: {detail}")
