"""One exception hierarchy: every error spark-ckpt raises is a ``SparkCkptError``.

Each subclass says what went wrong *and* what the caller can do about it; the message
always names the offending thing (backend name, checkpoint id, state key path ...).
"""

from __future__ import annotations


class SparkCkptError(Exception):
    """Base class of every spark-ckpt error."""


class ConfigError(SparkCkptError, ValueError):
    """A configuration value is invalid (unknown backend, bad URL, bad strategy ...)."""


class UnknownBackendError(ConfigError):
    """No registered backend matches the requested name or URL scheme."""


class BackendError(SparkCkptError):
    """The storage backend failed (unwritable path, lost connection ...)."""


class CheckpointNotFoundError(SparkCkptError, LookupError):
    """A checkpoint id (or offset) that does not exist was asked for."""


class DuplicateCheckpointError(BackendError):
    """A checkpoint with the same (execution_id, seq) is already stored; nothing was overwritten."""


class GraphMismatchError(SparkCkptError):
    """A checkpoint belongs to another graph, or the graph's structure changed since it was written."""


class CodecError(SparkCkptError):
    """A checkpoint could not be encoded or decoded."""


class EncodeError(CodecError, TypeError):
    """A state value cannot be encoded; the message names its key path."""


class UntrustedTypeError(CodecError):
    """A checkpoint names a type (Enum, dataclass, attrs class, pydantic model) that is not on the allowed
    types, so it was not imported or rebuilt; allow it if the store is trusted."""


class CorruptCheckpointError(CodecError):
    """Stored bytes are truncated, altered or not a spark-ckpt checkpoint at all."""


class UnsupportedFormatError(CodecError):
    """The checkpoint was written by a newer format version or with an unknown codec layer."""


class CorruptIndexError(CorruptCheckpointError, BackendError):
    """A stored index row (a checkpoint's header, an execution's head) holds a value of the wrong type
    or out of range: the store was changed outside spark-ckpt. The message names the row."""


class NotACheckpointError(CorruptCheckpointError):
    """The bytes do not start with the spark-ckpt signature: another tool wrote them."""


class ChecksumMismatchError(CorruptCheckpointError):
    """The envelope checksum does not match: bytes were altered or lost after writing."""


class TruncatedCheckpointError(ChecksumMismatchError):
    """The checkpoint is shorter than its header says: the write did not complete (torn write)."""


class TamperedCheckpointError(CorruptCheckpointError):
    """Authenticated decryption failed: ciphertext, nonce, tag or the data bound to them was altered."""


class CheckpointSwappedError(GraphMismatchError, CorruptCheckpointError):
    """A checkpoint written for one (graph, execution, seq) was found at another position."""


class DecompressionLimitError(CodecError):
    """A compressed payload would expand past ``max_decompressed_size``; it was not expanded."""


class EncryptionKeyError(CodecError):
    """Base of the key problems met while reading an encrypted checkpoint."""


class MissingKeyError(EncryptionKeyError):
    """The checkpoint was encrypted with a key id that is not configured here."""


class WrongKeyError(EncryptionKeyError):
    """A key with the checkpoint's key id is configured, but it is not the key that encrypted it."""


class PlaintextRefusedError(CodecError):
    """Encryption is configured but the checkpoint is not encrypted (and ``allow_plaintext`` is off)."""


class PickleRefusedError(CodecError):
    """A pickled checkpoint was refused before unpickling it."""


class UnsignedPickleError(PickleRefusedError):
    """The pickle carries no signature, or no pickle signing key is configured to verify it."""


class PickleSignatureError(PickleRefusedError):
    """The pickle's HMAC signature does not match the configured signing key."""


class UnsupportedFeatureError(ConfigError):
    """A Spark feature or execution mode this version cannot checkpoint and recover faithfully; it is
    refused before anything runs or is stored (the message names the feature and what to do)."""


class InvalidKeyError(ConfigError):
    """Key material or a key id in the configuration is malformed (never echoed in the message)."""


class RekeyError(SparkCkptError):
    """``rekey_backend`` could not re-encrypt some checkpoints; the rest were re-encrypted."""


class NothingToRecoverError(SparkCkptError):
    """``recover_and_continue()`` found no unfinished execution; it never silently starts afresh."""


class ExecutionExistsError(SparkCkptError):
    """``run(execution_id=...)`` named an execution the store already holds (execution ids are unique in
    a store, across graph ids); nothing ran. Choose another id, or continue an unfinished one with
    ``recover_and_continue(execution_id=...)`` (or ``run(..., resume=True)``)."""


class UnrecoverableExecutionError(SparkCkptError):
    """The execution cannot be continued from what the store holds (no checkpoint of it verifies);
    nothing was run. Continue from an intact checkpoint you choose, or start a new run."""


class MissingCheckpointError(UnrecoverableExecutionError):
    """Checkpoints the executions index says were written are gone (deleted, or the store was rolled
    back); continuing from the older ones would run finished work again, so nothing was run."""


class RecoveryDivergedError(UnrecoverableExecutionError):
    """Replaying the journal did not reproduce the run that wrote it (the graph routed differently);
    stopped before any live visit. Restore the graph code the run used."""


class CheckpointInUseError(SparkCkptError):
    """``delete_checkpoint`` refused: recovery (an unfinished execution) or a kept record still needs
    that checkpoint; nothing was deleted. Pass ``force=True`` to delete it anyway."""


class LeaseError(SparkCkptError):
    """Another worker owns the execution (or our lease expired and was taken over)."""


class ExecutionCompletedError(LeaseError):
    """A write to an execution that already completed was refused: another worker finished it."""


class PluginError(SparkCkptError):
    """A plugin failed to load or implements an unknown hook."""


class RunStopped(SparkCkptError):
    """A plugin asked to stop the run. Raised from a hook, it propagates to the caller of ``run``
    (every other exception from a plugin is logged and swallowed so it never masks the user's own)."""


class BudgetExceededError(RunStopped):
    """A plugin stopped the run because it exceeded a configured budget."""


class UnsafeToRetryError(SparkCkptError):
    """A tool marked not safe to re-run was in flight at a crash; it is reported, not repeated."""


class RestoreConflictError(SparkCkptError):
    """``run()`` after ``restore_from_checkpoint`` of an unfinished run, with other inputs than that run:
    refused, since continuing on its state could apply work twice. Nothing ran."""


class ApprovalError(SparkCkptError, LookupError):
    """An approval cannot be resolved as asked: the id is unknown, it was already resolved, or its
    execution is not waiting for it. Nothing stored was changed."""
