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



class StripDecoder:
    """Reads the strip the camera drew on a frame `source_width` wide.

    A transcoding gateway scales the frame (and the strip with it) without redrawing it, so the
    cells are placed by the camera's width, scaled to the decoded one; when the two are equal
    this is exactly the spec's decoder (central half of each cell, luma above 128 is 1).
    """

    def __init__(self, source_width):
        self.source_cell = source_width // CELLS
        self.source_width = source_width
        self.caps = None

    def _layout(self, caps):
        from gi.repository import GstVideo  # only the tools that read frames need GStreamer

        info = GstVideo.VideoInfo.new_from_caps(caps)
        cell = self.source_cell * info.width / self.source_width
        lo, hi = round(cell / 4), max(round(cell / 4) + 1, round(3 * cell / 4))
        self.stride = info.stride[0]
        self.rows = range(lo, hi)
        self.columns = [(int(k * cell) + lo, int(k * cell) + hi) for k in range(CELLS)]
        self.threshold = 128 * (hi - lo) * (hi - lo)
        self.extent = hi * self.stride
        self.caps = caps

    def read(self, sample):
        """The frame's capture time in ms mod 2^40, or None when the CRC does not match."""
        caps = sample.get_caps()
        if self.caps is None or not caps.is_equal(self.caps):
            self._layout(caps)
        data = sample.get_buffer().extract_dup(0, self.extent)
        lines = [data[y * self.stride:(y + 1) * self.stride] for y in self.rows]
        word = 0
        for x0, x1 in self.columns:
            word = word << 1 | (sum(sum(line[x0:x1]) for line in lines) > self.threshold)
        return value_of(word)

assert crc8(b"123456789") == 0xF4
assert word(1_795_000_000_123) == bytes.fromhex("A1EE565E7BD4")  # the spec's worked example
assert value_of(int.from_bytes(word(1_795_000_000_123), "big")) == 1_795_000_000_123 % VALUE_MOD
