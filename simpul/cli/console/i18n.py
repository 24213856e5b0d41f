"""Languages and clocks of the console: Bahasa Indonesia (default) and English from gettext
catalogs (Babel), dates in the city's WIB/WITA/WIT.

The source strings are English; ``locale/id/LC_MESSAGES/messages.po`` holds the Indonesian,
and its compiled ``.mo`` is committed (regenerate with ``python -m simpul.cli.console.i18n``),
so users need no build step.
"""

from __future__ import annotations

import datetime as dt
import gettext as gettext_module
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES: dict[str, str] = {"id": "Bahasa Indonesia", "en": "English"}
DEFAULT_LANGUAGE = "id"


def language(value: str | None) -> str:
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


@lru_cache(maxsize=len(LANGUAGES))
def translations(lang: str) -> gettext_module.NullTranslations:
    if lang == "en":
        return NullTranslations()
    return Translations.load(str(LOCALE_DIR), [lang], domain="messages")


def format_time(value: dt.datetime | None, timezone: str, abbreviation: str, lang: str) -> str:
    """``1 Des 2026 18.40 WITA``: the city's clock, the user's language."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    text = format_datetime(value, "d MMM y HH:mm:ss", tzinfo=ZoneInfo(timezone), locale=lang)
    return f"{text} {abbreviation}"


def compile_catalogs() -> list[Path]:
    """Compile every ``.po`` to its ``.mo`` (run after editing a catalog)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po in sorted(LOCALE_DIR.glob("*/LC_MESSAGES/*.po")):
        with po.open("rb") as handle:
            catalog = read_po(handle)
        mo = po.with_suffix(".mo")
        with mo.open("wb") as handle:
            write_mo(handle, catalog)
        written.append(mo)
    return written


if __name__ == "__main__":
    for path in compile_catalogs():
        print(path)
