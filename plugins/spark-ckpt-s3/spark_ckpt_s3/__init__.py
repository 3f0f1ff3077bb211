"""S3 checkpoint backend for spark-ckpt (any S3-compatible endpoint, through boto3).

Installed, it registers the ``s3`` backend (URL scheme ``s3://``) through the ``spark_ckpt``
entry-point group. boto3 is imported only when a backend is opened.
"""

from __future__ import annotations

from typing import Callable

from spark_ckpt.markers import hookimpl

from .backend import S3Backend

__all__ = ["S3Backend"]


@hookimpl
def spark_ckpt_register_backends(register: Callable[[type], None]) -> None:
    register(S3Backend)
