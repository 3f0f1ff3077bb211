"""Checkpoint storage backends: the contract (``base``) and the built-ins."""

from .base import Backend, LocalBackend

__all__ = ["Backend", "LocalBackend"]
