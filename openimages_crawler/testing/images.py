"""Images of the kinds Flickr serves, and a pixel bomb, generated (no files shipped).

Used by the mirror, the tests and the benchmark's corpus.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: gradients, shapes and noise (compresses like a photo)."""
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.effect_noise((width, height), 40 + seed % 30),
        ),
    )
    draw = ImageDraw.Draw(base)
    for index in range(6):
        x = (seed * 37 + index * 101) % max(width, 1)
        y = (seed * 53 + index * 67) % max(height, 1)
        colour = ((seed * 40 + index * 70) % 256, (index * 90) % 256, (seed * 15) % 256)
        draw.ellipse((x - width // 8, y - height // 8, x + width // 8, y + height // 8), fill=colour)
    return base


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def exif_rotated_jpeg(seed: int) -> bytes:
    """A 300x200 landscape stored as 200x300 pixels plus orientation 6 (rotate 90 CW)."""
    upright = photo(300, 200, seed)
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, 60, 40), fill=(255, 0, 0))  # red marker: top-left when upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stored, "JPEG", quality=90, exif=exif.tobytes())


def sixteen_bit_png(seed: int) -> bytes:
    gradient = Image.linear_gradient("L").resize((320, 240))
    wide = gradient.convert("I").point(lambda value: value * 257)
    return encoded(wide.convert("I;16"), "PNG")


def palette_png_with_transparency(seed: int) -> bytes:
    image = photo(260, 180, seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encoded(image, "PNG", transparency=0)


def rgba_png(seed: int) -> bytes:
    image = photo(400, 300, seed).convert("RGBA")
    alpha = Image.linear_gradient("L").resize((400, 300))
    image.putalpha(alpha)
    return encoded(image, "PNG")


def la_png(seed: int) -> bytes:
    image = photo(240, 240, seed).convert("LA")
    return encoded(image, "PNG")


def bomb_png(side: int = 40000, bit_depth: int = 1) -> bytes:
    """A valid grey PNG of ``side`` x ``side`` black pixels of ``bit_depth`` bits
    (1, 2, 4, 8 or 16) that compresses to a few hundred KB, built row by row so
    making it costs no memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (side * bit_depth + 7) // 8)  # filter byte + packed pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


IMAGE_KINDS: dict[str, tuple[str, object]] = {
    # kind: (extension, maker(seed) -> bytes)
    "jpeg_large": ("jpg", lambda s: encoded(photo(1600, 1067, s), "JPEG", quality=88)),
    "jpeg_portrait": ("jpg", lambda s: encoded(photo(600, 900, s), "JPEG", quality=88)),
    "jpeg_small": ("jpg", lambda s: encoded(photo(160, 120, s), "JPEG", quality=88)),
    "jpeg_progressive": (
        "jpg",
        lambda s: encoded(photo(800, 600, s), "JPEG", quality=85, progressive=True),
    ),
    "jpeg_cmyk": ("jpg", lambda s: encoded(photo(500, 400, s).convert("CMYK"), "JPEG", quality=90)),
    "jpeg_gray": ("jpg", lambda s: encoded(photo(640, 480, s).convert("L"), "JPEG", quality=90)),
    "jpeg_exif_rotated": ("jpg", exif_rotated_jpeg),
    "png_rgb": ("png", lambda s: encoded(photo(500, 350, s), "PNG")),
    "png_rgba": ("png", rgba_png),
    "png_palette": ("png", palette_png_with_transparency),
    "png_gray_alpha": ("png", la_png),
    "png_16bit": ("png", sixteen_bit_png),
    "gif": ("jpg", lambda s: encoded(photo(300, 200, s).convert("P"), "GIF")),
}
