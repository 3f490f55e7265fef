"""Small legacy-encoded (cp1252 / Latin-1) CSV files: a few of their bytes may happen to
form valid UTF-8 ("É»" is the UTF-8 of U+027B), which must not make the file UTF-8 with
a refused row and a silently wrong value. Real UTF-8 files with a stray byte stay UTF-8
(only the stray byte's row is refused), Cyrillic and Greek ones too."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crmqueue.formats.readers import open_table

WESTERN = [
    "José", "Müller", "Zoë", "François", "Øystein", "Björk", "Straße", "Œuvre", "Renée",
    "São Paulo", "ÉCOLE", "MÜNCHEN", "naïve", "€uro", "±10", "½ price", "°C", "µm",
    "“quote”", "—dash", "…", "©2024", "ÜBER®",
]  # fmt: skip
# Two cp1252 bytes that are valid UTF-8 by chance: a capital accented letter (0xC0-0xDF)
# before a symbol (0x80-0xBF).
BY_CHANCE = ["CAFÉ»", "Ñ«x»", "DÉ€", "«ÉLAN»"]


def read(path: Path) -> tuple[list[str | None], list[str]]:
    table = open_table(path, "csv")
    return [row.get("name") for _, row in table.rows], table.notes


def test_a_few_bytes_that_look_like_utf8_do_not_make_a_cp1252_file_utf8(tmp_path: Path) -> None:
    for names in (["José", "CAFÉ»"], ["Ñ«x»", "Müller"], ["DÉ€", "°C"], ["«ÉLAN»", "…"]):
        path = tmp_path / "legacy.csv"
        path.write_bytes(("name\n" + "\n".join(names) + "\n").encode("cp1252"))
        values, notes = read(path)
        assert values == names
        assert "decoded as cp1252" in notes[0]


@given(
    st.lists(st.sampled_from(WESTERN + BY_CHANCE), min_size=1, max_size=4),
    st.sampled_from(["cp1252", "latin-1"]),
)
@settings(max_examples=150, deadline=None)
def test_small_legacy_files_read_back_exactly(names: list[str], encoding: str) -> None:
    """Any few Western names in cp1252 or Latin-1 with at least one byte that is not
    UTF-8 (a file that is valid UTF-8 throughout is read as UTF-8: nothing tells)."""
    import tempfile

    try:
        data = ("name\n" + "\n".join(names) + "\n").encode(encoding)
    except UnicodeEncodeError:  # Latin-1 has no €, “ or —
        return
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.csv"
        path.write_bytes(data)
        assert read(path)[0] == names


def test_utf8_files_with_a_stray_byte_stay_utf8(tmp_path: Path) -> None:
    cases = [
        ["José", "Renée", "Zoë"],
        ["Иван Петров", "Мария"],  # Cyrillic
        ["3μm filter", "Αθήνα"],  # Greek, also next to Latin letters
        ["café", "CAFÉ»"],  # a real UTF-8 file may hold what cp1252 bytes could make
    ]
    for names in cases:
        path = tmp_path / "utf8.csv"
        stray = b"stray \xe9 byte"
        path.write_bytes(("name\n" + "\n".join(names) + "\n").encode() + stray + b"\n")
        values, notes = read(path)
        assert values[: len(names)] == names
        assert values[-1] != "stray é byte"  # its row is refused, not decoded another way
        assert "not valid UTF-8: the rows holding them are refused" in notes[0]
