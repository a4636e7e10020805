"""Errors of the migration lifecycle; each message names the shop and what to do."""

from __future__ import annotations


class MigrationError(Exception):
    """A lifecycle step was refused or failed (message is for the operator)."""


class IllegalTransition(MigrationError):
    """The state machine does not allow this move from the shop's current phase."""


class PhaseConflict(MigrationError):
    """Someone else moved the shop first (the fenced update found a newer version)."""
