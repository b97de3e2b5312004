"""What only a request's wire bytes show, read in C: how many members of a oneof it carried.

Protobuf parsing keeps only the last member of a oneof, so "two inputs" is visible only on the wire. Walking the
bytes in Python costs time per field, and a 16 MiB message can hold about eight million empty fields: on the event
loop that froze every other call for seconds. Instead the bytes are parsed a second time by protobuf's C parser
into a shadow message that declares the oneof's field numbers as plain optional `bytes` fields (every other field
number is an unknown field, skipped without being kept as a Python object), and `HasField` tells which appeared.
The cost is one C parse, linear in bytes and bounded by the message size limit (`max_message_bytes`).
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

# GenerateRequest / GenerateStreamRequest: prompt = 3, chat = 4, prompt_token_ids = 5.
INPUT_FIELD_NUMBERS = (3, 4, 5)


@functools.cache
def _shadow_class(field_numbers: tuple[int, ...]) -> type[message.Message]:
    """A message class with one optional `bytes` field per number (proto2: presence is tracked)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="autoglm_wire_shadow.proto", package="autoglm_wire", syntax="proto2"
    )
    shadow = file.message_type.add(name="Shadow")
    for number in field_numbers:
        shadow.field.add(
            name=f"field_{number}",
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("autoglm_wire.Shadow"))


def count_oneof_members(data: bytes, field_numbers: tuple[int, ...] = INPUT_FIELD_NUMBERS) -> int:
    """How many distinct fields of `field_numbers` the serialized message carries (length-delimited).

    Malformed data returns 0: the real parser then reports it.
    """
    try:
        shadow = _shadow_class(field_numbers).FromString(data)
    except message.DecodeError:
        return 0
    return sum(shadow.HasField(f"field_{number}") for number in field_numbers)
