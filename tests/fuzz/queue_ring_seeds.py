#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_queue_ring (tests/fuzz/corpus/queue_ring): inputs laid out
as the harness reads them, each a queue state a get can take whole (an inline message, a
spilled one, a spare and a retired block kept), from which the fuzzer mutates."""
import os
import struct
import sys

SPILLED = 1 << 63


def addr(kind, value):
    """An address word: 0 raw, 1 arena base + value, 2 a block (value >> 32) + (int16) value,
    3 the ring + (int16) value."""
    return struct.pack('<BQ', kind, value)


NULL = addr(0, 0)


def block(i, offset=0):
    return addr(2, i << 32 | (offset & 0xffff))


def seed(ring, msgs, used, gets=2, how=0, cap=4096, retired=NULL, retired_room=0,
         spares=(), spares_in=0, patches=()):
    out = b'\0'  # the queue's own ring
    out += struct.pack('<Q', 0)  # head
    out += b'\0' + struct.pack('<BH', msgs, used)  # tail: msgs and bytes past head
    out += b'\0'  # tail_seen = tail
    out += retired + b'\0' + struct.pack('<I', retired_room)  # retired_head = head
    out += struct.pack('<BBB', spares_in, 0, 0)  # spares_in, spares_out, closed
    for i in range(4):
        a, room = spares[i] if i < len(spares) else (NULL, 0)
        out += a + struct.pack('<I', room)
    out += struct.pack('<BBH', gets, how, cap)
    for i in range(2):
        at, a = patches[i] if i < len(patches) else (4088, NULL)  # past the records
        out += struct.pack('<H', at) + a
    return out + ring


def record(payload):
    body = payload + b'\0' * (-len(payload) % 8)
    return struct.pack('<Q', len(payload)) + body


def main(folder):
    one = record(b'a message')
    two = one + record(b'x' * 100)
    spilled = struct.pack('<QQQ', 600 | SPILLED, 0, 600)  # the block is patched in at 8
    seeds = {
        'inline_one': seed(one, 1, len(one)),
        'inline_two_alloc': seed(two, 2, len(two), gets=3, how=0xff),
        'inline_small_buffer': seed(one, 1, len(one), cap=4),
        'spilled': seed(spilled, 1, len(spilled), patches=[(8, block(0))]),
        'spilled_then_inline': seed(spilled + one, 2, len(spilled) + len(one), gets=3,
                                    patches=[(8, block(0))]),
        'retired_kept': seed(one, 1, len(one), retired=block(1), retired_room=5000),
        'spares_full': seed(spilled, 1, len(spilled), spares_in=4,
                            spares=[(block(i % 3), 600) for i in range(4)],
                            patches=[(8, block(2))]),
        'empty': seed(b'', 0, 0),
    }
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(data)


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus', 'queue_ring'))
