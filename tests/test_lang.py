"""Language guessing: the fast word split gives exactly the words of the plain regex."""

import random
import re

from helpdeskd.lang import _LETTERS, guess_language, words_of

_WORD = re.compile(f"[{_LETTERS}]+")  # what words_of must find

SAMPLES = "aábcdeéfghiíjklmnñoópqrstuúüvwxyzÁÉÑÜàçßøœİıΣσςЖж中文😀\u0301\u00a0 \t\n\r.,;:¿?¡!-_'\"0123456789"


def test_words_of_is_the_regex_split_on_any_text():
    rng = random.Random(11)
    texts = ["", "hola", "¿Qué tal? Tengo un problema con mi cuenta", "HELLO, my account", "niño ÑANDÚ pingüino"]
    texts += ["".join(rng.choice(SAMPLES) for _ in range(rng.randrange(200))) for _ in range(3000)]
    for text in texts:
        lowered = text.lower()
        assert words_of(lowered) == [w.encode("latin-1") for w in _WORD.findall(lowered)], text


def test_guesses():
    assert guess_language("Hola, tengo un problema con mi cuenta de correo, gracias") == "es"
    assert guess_language("Hello, I have a problem with my mail account, thanks") == "en"
    assert guess_language("1234 5678") is None


def test_the_guess_is_the_one_the_plain_regex_count_gives():
    from helpdeskd.lang import _MARKERS

    def by_regex(text, sample=2000):
        words = _WORD.findall(text[:sample].lower())
        scores = {lang: sum(map(markers.__contains__, words)) for lang, markers in _MARKERS.items()}
        if any(ch in text[:sample] for ch in "ñ¿¡"):
            scores["es"] += 3
        best = max(scores, key=scores.__getitem__)
        return best if scores[best] >= 2 and scores[best] > 1.5 * min(scores.values()) else None

    rng = random.Random(3)
    vocabulary = "el la de que y en hola gracias the and is to of thanks Ñandú MAIL Cuenta, día. 42".split()
    for _ in range(2000):
        text = " ".join(rng.choice(vocabulary + [rng.choice(SAMPLES)]) for _ in range(rng.randrange(40)))
        assert guess_language(text) == by_regex(text), text
