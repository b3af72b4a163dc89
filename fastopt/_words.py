"""Words for messages: counts with their nouns, class names with their articles."""

from __future__ import annotations

__all__ = ["plural", "with_article"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun``, plural unless ``count`` is 1: ``"1 entry"``, ``"2 entries"``.

    The plural is ``noun + "s"`` unless ``plural_form`` gives it.
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form if plural_form is not None else noun + 's'}"


# Capital letters read by name with a leading vowel sound ("an SGD", "an RMSprop").
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")


def with_article(word: str) -> str:
    """``word`` after "a" or "an", for class names: "an Adam", "a FlatParams", "an SGD".

    An acronym (two leading capitals) is read letter by letter; any other word takes "an"
    before a vowel letter.
    """
    if word[:2].isupper():
        vowel_sound = word[0] in _VOWEL_SOUND_LETTERS
    else:
        vowel_sound = word[:1].lower() in ("a", "e", "i", "o", "u")
    return f"{'an' if vowel_sound else 'a'} {word}"
