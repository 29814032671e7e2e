"""StopMatcher: text after a stop sequence never reaches the client, whatever the piece boundaries."""

from __future__ import annotations

import itertools
import random

import pytest

from adapters.stops import StopMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    """Push every piece, then flush unless stopped, as the engine does; returns (emitted, stopped)."""
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(piece) for piece in pieces)
    out += matcher.flush()
    return out, matcher.stopped


def test_no_stops_passes_every_piece_through_unchanged() -> None:
    matcher = StopMatcher([])
    for piece in ["Hel", "lo", " ", "\n", "😀"]:
        assert matcher.push(piece) == piece
    assert matcher.flush() == ""
    assert not matcher.stopped


def test_empty_stop_strings_are_ignored() -> None:
    matcher = StopMatcher(["", ""])
    assert matcher.push("abc") == "abc"
    assert not matcher.stopped


def test_stop_inside_one_piece_cuts_before_it() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.push("Hello END world") == "Hello "
    assert matcher.stopped


def test_stop_split_across_pieces_is_cut() -> None:
    out, stopped = _run(["STOP"], ["one S", "T", "OP two"])
    assert out == "one "
    assert stopped


def test_stop_split_across_pieces_emits_nothing_of_the_stop() -> None:
    matcher = StopMatcher(["STOP"])
    emitted = [matcher.push(p) for p in ["ab", "S", "TO", "P", "after"]]
    assert emitted == ["ab", "", "", "", ""]
    assert matcher.stopped
    assert matcher.flush() == ""


def test_possible_stop_prefix_is_held_back() -> None:
    matcher = StopMatcher(["</s>"])
    assert matcher.push("text </") == "text "
    assert not matcher.stopped


def test_held_prefix_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(["</s>"])
    assert matcher.push("a </") == "a "
    assert matcher.push("b> c") == "</b> c"
    assert not matcher.stopped


def test_held_prefix_is_released_only_as_far_as_it_cannot_start_a_stop() -> None:
    matcher = StopMatcher(["aab"])
    assert matcher.push("xa") == "x"  # "a" may start "aab"
    assert matcher.push("a") == ""  # "aa" may start "aab"
    assert matcher.push("a") == "a"  # "aaa": the first "a" cannot, the last two still may
    assert matcher.push("b") == ""  # "aab" completes
    assert matcher.stopped


def test_flush_returns_the_held_text() -> None:
    matcher = StopMatcher(["###"])
    assert matcher.push("done #") == "done "
    assert matcher.push("#") == ""
    assert matcher.flush() == "##"
    assert matcher.flush() == ""


def test_flush_after_stop_returns_nothing() -> None:
    matcher = StopMatcher(["x"])
    matcher.push("abxcd")
    assert matcher.flush() == ""


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = _run(["world", "lo"], ["hello world"])
    assert out == "hel"
    assert stopped


def test_earliest_stop_wins_regardless_of_list_order() -> None:
    text = "alpha beta gamma"
    for stops in (["gamma", "beta"], ["beta", "gamma"]):
        assert _run(stops, [text]) == ("alpha ", True)


def test_text_after_stop_is_never_emitted() -> None:
    matcher = StopMatcher(["\n\n"])
    out = matcher.push("para one\n")
    out += matcher.push("\npara two")
    for piece in ["more", " text", "\n\n", "end"]:
        assert matcher.push(piece) == ""
    out += matcher.flush()
    assert out == "para one"


def test_stop_at_very_start_emits_nothing() -> None:
    assert _run(["Q:"], ["Q", ":", " next"]) == ("", True)


def test_multibyte_stop_across_pieces() -> None:
    assert _run(["東京"], ["私は東", "京に行く"]) == ("私は", True)


def test_text_that_ends_inside_a_stop_prefix_is_released_by_flush() -> None:
    assert _run(["STOP"], ["go ST", "O"]) == ("go STO", False)


def _first_stop_cut(text: str, stops: list[str]) -> str:
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


def _random_split(rng: random.Random, text: str) -> list[str]:
    cuts = (
        sorted(rng.sample(range(1, len(text)), rng.randint(0, min(8, len(text) - 1))))
        if len(text) > 1
        else []
    )
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    # Empty pieces happen (a step that completed no character); sprinkle some in.
    for _ in range(rng.randint(0, 2)):
        pieces.insert(rng.randint(0, len(pieces)), "")
    return pieces


# No stop is a substring of another, so "first occurrence" does not depend on piece boundaries.
_STOP_SETS = [["ab"], ["aab", "bb"], ["abc", "ca"], ["\n\n", "END"], ["ba", "aa"], ["abab"], ["c"], []]


@pytest.mark.parametrize("stops", _STOP_SETS, ids=repr)
def test_emitted_text_is_text_up_to_first_stop_for_random_splits(stops: list[str]) -> None:
    rng = random.Random(1234)
    alphabet = "aabbc\nEND"
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        pieces = _random_split(rng, text)
        assert "".join(pieces) == text
        out, stopped = _run(stops, pieces)
        expected = _first_stop_cut(text, stops)
        assert out == expected, (text, pieces, stops)
        assert stopped == any(s in text for s in stops), (text, pieces, stops)
