"""Graph records read from a store without the graph: decoded against the position they are stored at,
made whole (``chain``), and made to stand alone in place (``rebase``, for retention).

Used where no ``CheckpointedGraph`` is at hand (the CLI, ``retention``). A reader that knows the graph
passes its adapter nodes as ``wanted_extras``; without it, a record made whole holds the adapter
states of the whole record its chain reaches, which from content version 4 is every one of them.
"""

from __future__ import annotations

from typing import Any, Iterable

import attrs

from ..codec import Codec, Identity, to_data
from ..errors import CheckpointNotFoundError, SparkCkptError, UnsupportedFormatError
from ..model import CONTENT_VERSION, CheckpointHeader, GraphCheckpoint, StoredCheckpoint
from . import chain
from .damage import damaged
from .value_parts import parts_in_state, take_values


def identity(header: CheckpointHeader) -> Identity:
    return Identity(header.graph_id, header.execution_id, header.seq)


def decode_record(codec: Codec, blob: bytes, header: CheckpointHeader | None = None) -> GraphCheckpoint:
    """A graph record from its bytes, checked against the position it is stored at (if ``header``) and
    refused when a newer spark-ckpt wrote it."""
    with damaged(f"checkpoint {header.checkpoint_id}" if header is not None else "checkpoint"):
        record = codec.decode(blob, GraphCheckpoint, identity(header) if header is not None else None)
    if record.version > CONTENT_VERSION:
        raise UnsupportedFormatError(
            f"checkpoint {record.checkpoint_id} has content version {record.version}, newer than this "
            "spark-ckpt understands; upgrade spark-ckpt"
        )
    return record


class RecordReader:
    """Decodes an execution's records once each (``decoded`` by seq) and makes them whole."""

    def __init__(self, backend: Any, codec: Codec) -> None:
        self.backend = backend
        self.codec = codec
        self.decoded: dict[tuple[str, int], GraphCheckpoint] = {}

    def load(self, header: CheckpointHeader, stored: StoredCheckpoint | None = None) -> GraphCheckpoint:
        """The record at ``header`` (``stored``: its bytes, when already read), decoded once."""
        key = (header.execution_id, header.seq)
        record = self.decoded.get(key)
        if record is None:
            stored = stored or self.backend.get(header.checkpoint_id)
            record = self.decoded[key] = decode_record(self.codec, stored.blob, stored.header)
        return record

    def whole(self, header: CheckpointHeader, earlier: Iterable[CheckpointHeader] | None = None,
              wanted_extras: Iterable[str] = ()) -> GraphCheckpoint:
        """The record at ``header`` made whole (``earlier``: its execution's headers, listed if None)."""
        record = self.load(header)
        if earlier is None:
            earlier = self.backend.list(execution_id=header.execution_id)
        return chain.make_whole(record, earlier, self.load, wanted_extras)


def rebase(backend: Any, codec: Codec, header: CheckpointHeader, wanted_extras: Iterable[str] = ()) -> int | None:
    """Make the record at ``header`` stand alone in place (``Backend.replace`` with its whole form), so
    the records before it can be deleted; returns the seq from which the execution's records must stay.

    A record built on a boundary (in-flight journals, a failure: ``base_seq``) depends on that boundary
    record, whatever is kept after it: then the boundary record is made to stand alone, and the records
    from it on stay. None when that cannot be done (unreadable, a link missing, written before content
    version 4, or a store without ``replace``): then nothing was changed.
    """
    reader = RecordReader(backend, codec)
    try:
        earlier = backend.list(execution_id=header.execution_id)
        by_seq = {h.seq: h for h in earlier}
        target = header
        record = reader.load(target)
        while record.base_seq is not None:
            target = by_seq[record.base_seq]
            record = reader.load(target)
        if chain.stands_alone(record):
            return target.seq
        if record.version < 4:  # may lack the states of adapter nodes its chain does not mention
            return None
        whole = reader.whole(target, earlier, wanted_extras)
        blob = _encoded_whole(backend, codec, whole, identity(target))
        backend.replace(attrs.evolve(backend.get(target.checkpoint_id).header, size=len(blob)), blob)
    except (SparkCkptError, NotImplementedError, KeyError):
        return None
    return target.seq


def _encoded_whole(backend: Any, codec: Codec, record: GraphCheckpoint, ident: Identity) -> Any:
    """A record rewritten whole: its large values stored apart where the store keeps them once
    (``value_parts``), so a rebase does not write them again."""
    apart = getattr(backend, "takes_values", None)
    if apart is None or not codec.writes_plain_json:
        return codec.encode(record, ident)
    data = to_data(record)
    data["graph_state"], values = take_values(parts_in_state(data.get("graph_state") or {}, apart), apart=True)
    return codec.encode_data_in_parts(data, ident, values) if values else codec.encode_data(data, ident)


def readable_whole(reader: RecordReader, headers: list[CheckpointHeader]) -> dict[str, Exception]:
    """For each header (one execution's), the error making it whole raises, if any, by checkpoint id."""
    problems: dict[str, Exception] = {}
    for header in headers:
        try:
            reader.whole(header, headers)
        except CheckpointNotFoundError:
            continue  # deleted meanwhile
        except SparkCkptError as exc:
            problems[header.checkpoint_id] = exc
    return problems
