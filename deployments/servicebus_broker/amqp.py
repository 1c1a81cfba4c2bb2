"""AMQP 1.0 message sections, read and written with proton's codec, byte for byte where the broker changes nothing.

A message is a run of described sections. The broker rewrites only the header (so that `delivery-count` is
always written: `proton.Message` leaves a count of 0 out) and the message annotations (sequence number,
enqueued time, lock expiry), and, on dead-lettering, the application properties; the rest passes through.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from proton import Data, Described, symbol, timestamp, ubyte, uint, ulong

HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS = 0x70, 0x71, 0x72
PROPERTIES, APPLICATION_PROPERTIES, DATA, FOOTER = 0x73, 0x74, 0x75, 0x78
SECTION_CODES = range(HEADER, FOOTER + 1)
HEADER_FIELDS = 5  # durable, priority, ttl, first-acquirer, delivery-count


class NotAMessage(ValueError):
    pass


@dataclass(frozen=True)
class StoredMessage:
    """A message as a queue holds it: what the sender wrote, plus what the broker stamps on each delivery."""

    sequence_number: int
    enqueued_ms: int
    header: list[Any]
    annotations: dict[Any, Any]
    properties: bytes  # the encoded properties section, or b""
    application_properties: dict[Any, Any]
    body: bytes  # the encoded body and footer sections
    delivery_count: int = 0
    extra_annotations: dict[Any, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str | None:
        """The sender's message id, as text (AMQP allows a string, UUID, ulong or binary id)."""
        fields = section_value(self.properties) if self.properties else None
        return None if not fields or fields[0] is None else str(fields[0])

    def redelivered(self) -> StoredMessage:
        return replace(self, delivery_count=self.delivery_count + 1)

    def dead_lettered(self, source: str, reason: str, description: str) -> StoredMessage:
        properties = {**self.application_properties, "DeadLetterReason": reason,
                      "DeadLetterErrorDescription": description}
        return replace(self, application_properties=properties,
                       extra_annotations={symbol("x-opt-deadletter-source"): source})

    def encode(self, locked_until_ms: int | None) -> bytes:
        header = [*self.header[:HEADER_FIELDS - 1], uint(self.delivery_count)]
        annotations = {**self.annotations, **self.extra_annotations,
                       symbol("x-opt-sequence-number"): self.sequence_number,
                       symbol("x-opt-enqueued-time"): timestamp(self.enqueued_ms)}
        if locked_until_ms is not None:
            annotations[symbol("x-opt-locked-until")] = timestamp(locked_until_ms)
        application_properties = (encode_section(APPLICATION_PROPERTIES, self.application_properties)
                                  if self.application_properties else b"")
        return (encode_section(HEADER, header) + encode_section(MESSAGE_ANNOTATIONS, annotations)
                + self.properties + application_properties + self.body)


def messages_in_transfer(payload: bytes) -> list[list[tuple[int, bytes]]]:
    """The messages of one transfer, each as its sections: one message, or the several of a batch.

    A batch (message-format 0x80013700, which proton does not report) is recognised by its shape: a body of
    data sections that each hold a whole encoded message.
    """
    sections = split_sections(payload)
    bodies = [section_value(raw) for code, raw in sections if code == DATA]
    if bodies and all(_is_message(body) for body in bodies):
        return [split_sections(body) for body in bodies]
    return [sections]


def stored_message(sections: list[tuple[int, bytes]], sequence_number: int, enqueued_ms: int) -> StoredMessage:
    by_code = dict(sections)
    header = list(section_value(by_code[HEADER])) if HEADER in by_code else []
    header += [None] * (HEADER_FIELDS - len(header))
    header[0] = bool(header[0])
    header[1] = ubyte(4 if header[1] is None else header[1])
    return StoredMessage(
        sequence_number=sequence_number,
        enqueued_ms=enqueued_ms,
        header=header,
        annotations=dict(section_value(by_code[MESSAGE_ANNOTATIONS])) if MESSAGE_ANNOTATIONS in by_code else {},
        properties=by_code.get(PROPERTIES, b""),
        application_properties=(dict(section_value(by_code[APPLICATION_PROPERTIES]))
                                if APPLICATION_PROPERTIES in by_code else {}),
        body=b"".join(raw for code, raw in sections if code >= DATA),
    )


def split_sections(encoded: bytes) -> list[tuple[int, bytes]]:
    """(descriptor code, encoded section) pairs; raises NotAMessage if `encoded` is not a run of sections."""
    sections, offset = [], 0
    while offset < len(encoded):
        data = Data()
        try:
            consumed = data.decode(encoded[offset:])
        except Exception as error:  # proton raises DataException and friends
            raise NotAMessage(str(error)) from error
        data.rewind()
        data.next()
        value = data.get_object()
        code = value.descriptor if isinstance(value, Described) else None
        if not isinstance(code, int) or code not in SECTION_CODES or consumed <= 0:
            raise NotAMessage(f"not a message section at byte {offset}")
        sections.append((code, encoded[offset:offset + consumed]))
        offset += consumed
    return sections


def section_value(encoded: bytes) -> Any:
    data = Data()
    data.decode(encoded)
    data.rewind()
    data.next()
    section = data.get_object()
    assert isinstance(section, Described)
    return _copy_binary(section.value)


def encode_section(code: int, value: Any) -> bytes:
    data = Data()
    data.put_object(Described(ulong(code), value))
    return data.encode()


def _is_message(encoded: bytes) -> bool:
    try:
        return bool(split_sections(encoded))
    except NotAMessage:
        return False


def _copy_binary(value: Any) -> Any:
    """Proton hands out binary values as memoryviews into buffers it reuses."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return {_copy_binary(k): _copy_binary(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_binary(v) for v in value]
    return value
