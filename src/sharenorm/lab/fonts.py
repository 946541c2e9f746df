"""A Devanagari font for the report and its figures, found where a package ships it.

The report quotes the documents' Hindi in every language, and a browser or matplotlib
without a Devanagari font shows boxes: :func:`font_face_css` embeds a subset of Noto Sans
Devanagari (the glyphs the report uses, with their shaping rules) as a base64
``@font-face``, and :func:`use_in_matplotlib` registers it for figure labels. The font comes
from ``fontpkg-noto-sans-devanagari`` (PyPI, OFL-1.1; the ``lab`` extra) or Debian's
``fonts-noto-core``; without either the report renders in the reader's own fonts.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

from sharenorm._cache import cached_bytes

__all__ = ["devanagari_font", "font_face_css", "use_in_matplotlib", "has_devanagari",
           "FONT_FAMILY"]

FONT_FAMILY = "SN Devanagari"
# Devanagari, Devanagari Extended, Vedic Extensions, and the joiners shaping needs
_RANGES = ((0x0900, 0x097F), (0xA8E0, 0xA8FF), (0x1CD0, 0x1CFF), (0x200C, 0x200D))
_DEBIAN = ("/usr/share/fonts/truetype/noto/NotoSansDevanagari-Regular.ttf",
           "/usr/share/fonts/opentype/noto/NotoSansDevanagari-Regular.ttf")


def has_devanagari(text: str) -> bool:
    """Whether ``text`` holds a character of the Devanagari blocks.

    Example:
        >>> has_devanagari("GN उच्च"), has_devanagari("GN high")
        (True, False)
    """
    return any(lo <= ord(ch) <= hi for ch in text for lo, hi in _RANGES)


@functools.lru_cache(maxsize=1)
def devanagari_font() -> Path | None:
    """The path of a Noto Sans Devanagari font file, or None when none is installed."""
    try:
        from importlib import resources

        files = resources.files("fontpkg_noto_sans_devanagari") / "files"
        for f in sorted(files.iterdir(), key=lambda p: p.name):
            if f.name.endswith((".ttf", ".otf")):
                return Path(str(f))
    except (ImportError, FileNotFoundError, NotADirectoryError):
        pass
    for p in _DEBIAN:
        if Path(p).is_file():
            return Path(p)
    return None


def _font_key(path: Path) -> list[str]:
    """What a font derived from ``path`` depends on: the file and fontTools' version."""
    import fontTools

    st = path.stat()
    return [str(path), str(st.st_size), str(st.st_mtime_ns), fontTools.version]


@functools.lru_cache(maxsize=1)
def _regular_instance() -> bytes | None:
    """The font at its regular weight and width (a variable font pinned; smaller to embed).
    Pinning takes ~5 s: done once, then read from sharenorm's cache dir."""
    path = devanagari_font()
    if path is None:
        return None
    return cached_bytes("fonts", ["regular", *_font_key(path)], lambda: _pin(path), _is_sfnt)


def _is_sfnt(data: bytes) -> bool:
    """Whether ``data`` starts as a TrueType/OpenType file (a cache file someone else wrote
    is made again rather than embedded)."""
    return data[:4] in (b"\x00\x01\x00\x00", b"OTTO", b"true")


def _pin(path: Path) -> bytes:
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), recalcTimestamp=False)
    if "fvar" in font:
        from fontTools.varLib import instancer

        axes = {a.axisTag: a.defaultValue for a in font["fvar"].axes}
        axes.update({k: v for k, v in (("wght", 400), ("wdth", 100)) if k in axes})
        font = instancer.instantiateVariableFont(font, axes)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


def font_face_css(text: str) -> str:
    """An ``@font-face`` rule embedding the Devanagari glyphs ``text`` uses, or ``""`` when
    ``text`` has none or no font is installed.

    ``unicode-range`` limits the face to Devanagari, so Latin text keeps the reader's own
    font.
    """
    if not has_devanagari(text):
        return ""
    data = _regular_instance()
    if data is None:
        return ""
    chars = "".join(sorted({ch for ch in text if has_devanagari(ch)})) + "\u200c\u200d"
    # a report's Hindi is mostly fixed text: the same subset again, read from the cache
    key = ["subset", *_font_key(devanagari_font()), chars]
    font = cached_bytes("fonts", key, lambda: _subset(data, chars), _is_sfnt)
    b64 = base64.b64encode(font).decode()
    ranges = ",".join(f"U+{lo:04X}-{hi:04X}" for lo, hi in _RANGES)
    return (f"@font-face{{font-family:'{FONT_FAMILY}';src:url(data:font/ttf;base64,{b64}) "
            f"format('truetype');unicode-range:{ranges}}}")


def _subset(font_bytes: bytes, chars: str) -> bytes:
    """The glyphs of ``chars`` with every OpenType layout feature (conjuncts and vowel signs
    shape as in the full font)."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(io.BytesIO(font_bytes), recalcTimestamp=False)
    opts = subset.Options()
    opts.layout_features = ["*"]
    opts.name_IDs = ["*"]
    opts.notdef_outline = True
    sub = subset.Subsetter(opts)
    sub.populate(text=chars)
    sub.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def use_in_matplotlib() -> bool:
    """Register the Devanagari font with matplotlib as a fallback after its default font, so
    figure labels in Hindi render; False when no font is installed."""
    path = devanagari_font()
    if path is None:
        return False
    import matplotlib
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(path))
    name = font_manager.FontProperties(fname=str(path)).get_name()
    # matplotlib falls back glyph by glyph only across the families font.family names itself
    # (a generic "sans-serif" resolves to one font): name the default font, then this one
    fams = [f for f in matplotlib.rcParams["font.family"] if f != name]
    if fams == ["sans-serif"]:
        fams = [matplotlib.rcParams["font.sans-serif"][0]]
    matplotlib.rcParams["font.family"] = fams + [name]
    return True
