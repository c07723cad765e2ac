"""The latency strip (docs/latency-strip.md) for the Python tools: the test camera, the
gst-launch baseline and the camera benchmark. It must match src/media/strip.rs and web/strip.js.

A frame carries its capture time as a 48-bit word: 40 bits of Unix milliseconds, then their
CRC-8, one bit per cell of a row of 48 cells along the top, most significant first.
"""

CELLS = 48
LUMA_ONE = 235
LUMA_ZERO = 16
NEUTRAL_CHROMA = 128
VALUE_MOD = 1 << 40


def crc8(data):
    """CRC-8/SMBUS: polynomial 0x07, init 0, no reflection, no final XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def word(unix_ms):
    """The strip's six bytes for capture time `unix_ms`."""
    value = (unix_ms % VALUE_MOD).to_bytes(5, "big")
    return value + bytes([crc8(value)])


def luma_row(unix_ms, cell):
    """One luma row of the strip for cells `cell` pixels wide."""
    bits = word(unix_ms)
    cells = (bytes([LUMA_ZERO]) * cell, bytes([LUMA_ONE]) * cell)
    return b"".join(cells[bits[k // 8] >> (7 - k % 8) & 1] for k in range(CELLS))


def chroma_row(cell):
    """One neutral chroma row under the strip (4:2:0; odd cell sizes rounded up)."""
    return bytes([NEUTRAL_CHROMA]) * -(-CELLS * cell // 2)


def value_of(bits):
    """The capture time (ms mod 2^40) in 48 bits read off a frame, or None if the CRC fails."""
    value, crc = bits >> 8, bits & 0xFF
    return value if crc8(value.to_bytes(5, "big")) == crc else None


assert crc8(b"123456789") == 0xF4
assert word(1_795_000_000_123) == bytes.fromhex("A1EE565E7BD4")  # the spec's worked example
assert value_of(int.from_bytes(word(1_795_000_000_123), "big")) == 1_795_000_000_123 % VALUE_MOD
