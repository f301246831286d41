"""A reply's text token by token (msting.worker.reply.ReplyText): UTF-8 split over
tokens, stop sequences held back and cut, a chat reply's leading whitespace."""

from msting.worker.reply import ReplyText


def run(pieces: list[bytes], stops: list[str] = (), strip: bool = False) -> tuple[list[tuple[str, int]], bool]:
    reply = ReplyText(list(stops), strip_leading=strip)
    out = []
    for p in pieces:
        got = reply.feed(p)
        if got is not None:
            out.append(got)
        if reply.stopped:
            break
    else:
        end = reply.end()
        if end is not None:
            out.append(end)
    return out, reply.stopped


def test_every_token_is_counted_once():
    out, stopped = run([b"Hello", b" wor", b"ld"])
    assert out == [("Hello", 1), (" wor", 1), ("ld", 1)] and not stopped


def test_a_character_split_over_two_tokens_waits_for_its_second_half():
    e = "é".encode()
    out, _ = run([b"caf", e[:1], e[1:], b"!"])
    assert out == [("caf", 1), ("é", 2), ("!", 1)]
    out, _ = run([b"x", e[:1]])  # an incomplete tail at the end
    assert out == [("x", 1), ("\ufffd", 1)]


def test_a_stop_sequence_is_held_back_then_cut():
    out, stopped = run([b"one", b" tw", b"o\nUs", b"er: hi"], stops=["\nUser:"])
    assert stopped and "".join(t for t, _ in out) == "one two"
    assert out == [("one", 1), (" tw", 1), ("o", 1)]


def test_held_text_that_was_not_a_stop_goes_out():
    out, stopped = run([b"a\nU", b"nder"], stops=["\nUser:"])
    assert not stopped and "".join(t for t, _ in out) == "a\nUnder"
    out, stopped = run([b"a\nUs"], stops=["\nUser:"])  # held at the end: not a stop
    assert not stopped and out == [("a", 1), ("\nUs", 0)]


def test_leading_whitespace_of_a_chat_reply_is_dropped():
    out, _ = run([b" ", b"\n", b" Hi", b" there"], strip=True)
    assert out == [("Hi", 3), (" there", 1)]
    out, _ = run([b"  "], strip=True)
    assert out == [("", 1)]  # the tokens still count
