"""Errors a user can act on. Every message says what went wrong, what was found and what to do next."""

from __future__ import annotations


class EdgeClipError(Exception):
    """Base class of every error edgeclip raises on purpose."""


class InputError(EdgeClipError, ValueError):
    """Bad user input: an image, a text, a label list, an option value."""


class ImageDecodeError(InputError):
    """An image that cannot be read or decoded."""


class CheckpointError(EdgeClipError):
    """A checkpoint of an unknown layout, a corrupt file, or weights that do not fit the model."""


class BundleError(EdgeClipError):
    """A bundle that is missing, foreign, of an unknown format version, or tampered with."""


class BackendError(EdgeClipError):
    """A runtime backend that is not available or failed to initialise."""


class MissingExtraError(EdgeClipError):
    """A command that needs an optional part of edgeclip (an extra: torch and onnx for export) that is not installed."""
