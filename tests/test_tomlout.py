"""The store's TOML writer against tomli_w itself: the same text for every record, ours or not."""

import random
import string
import tomllib
from datetime import datetime, timezone

import tomli_w

from helpdeskd.store import tomlout
from helpdeskd.store.tickets import ticket_from_dict, ticket_to_dict

# every control character, the quote and the backslash, some non-ASCII, and plain text
ALPHABET = [chr(i) for i in range(32)] + ["\x7f", '"', "\\", "'", "é", "ñ", "€", "𝄞", "\u2028", " "] + \
    list(string.ascii_letters + string.digits + "-_.#[]=")


def _text(rng: random.Random, most: int = 12) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(most)))


def _scalar(rng: random.Random):
    return rng.choice([_text(rng), rng.randrange(-10**12, 10**12), rng.random() < 0.5, 0, ""])


def _record(rng: random.Random, nested: bool = True) -> dict:
    record = {}
    for _ in range(rng.randrange(8)):
        key = rng.choice([_text(rng, 6), "id", "subject", "bare-key_1"])
        roll = rng.random()
        if roll < 0.5:
            record[key] = _scalar(rng)
        elif roll < 0.8:
            record[key] = [rng.choice([_text(rng), rng.randrange(100)]) for _ in range(rng.randrange(4))]
        elif nested:
            record[key] = _record(rng, nested=False)
    return record


def test_the_same_text_as_tomli_w_for_records_of_our_shape():
    rng = random.Random(5)
    for _ in range(2000):
        record = _record(rng)
        text = tomlout.dumps(record)
        assert text == tomli_w.dumps(record), record
        assert tomllib.loads(text) == tomllib.loads(tomli_w.dumps(record))
    assert 0 < len(tomlout._KEYS) <= 4096  # keys written are remembered, up to a bound


def test_other_shapes_are_left_to_tomli_w():
    others = [
        {"when": datetime(2026, 11, 22, tzinfo=timezone.utc)},
        {"ratio": 0.5},
        {"nested": [[1, 2], ["a"]]},
        {"tables": [{"a": 1}, {"b": 2}]},
        {"outer": {"inner": {"x": 1}}},
        {"outer": {"inline": [{"x": 1}]}},
        {"flag": [True, False]},
        {"a": 1, "deep": {"b": {"c": "d"}}, "e": "f"},
    ]
    for record in others:
        assert tomlout.dumps(record) == tomli_w.dumps(record), record


def test_a_ticket_round_trips(tmp_path):
    from helpdeskd.ticket import Requester, Status, Ticket

    ticket = Ticket(id=7, subject='Cuota "llena"\\ ya\x01', status=Status.OPEN, queue="soporte", priority="alta",
                    category="correo", requester=Requester("ana@example.net", "Ana Ñ", "es"),
                    created="2026-11-22T10:00:00+00:00", updated="2026-11-22T10:00:00+00:00", token="t" * 32,
                    message_ids=("<a@b>",), message_keys=("k1", "k2"), mail_count=2, linked=(3,),
                    extra={"later": 1.5})
    data = ticket_to_dict(ticket)
    text = tomlout.dumps(data)
    assert text == tomli_w.dumps(data)
    assert ticket_from_dict(tomllib.loads(text)) == ticket
