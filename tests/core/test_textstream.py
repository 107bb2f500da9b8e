from ember.core.textstream import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    out = [stream.feed(p) for p in pieces]
    out.append(stream.finish())
    return out


def test_stop_string_split_across_tokens_is_not_leaked():
    s = TextStream(["<END>"])
    out = feed_all(s, [b"hello <", b"EN", b"D> more"])
    assert "".join(out) == "hello " and s.stopped
    assert "<" not in "".join(out)


def test_held_prefix_released_when_it_does_not_become_a_stop():
    s = TextStream(["<END>"])
    assert "".join(feed_all(s, [b"a <", b"b"])) == "a <b"


def test_russian_split_inside_a_character():
    word = "Привет".encode()
    s = TextStream([])
    out = feed_all(s, [word[:3], word[3:7], word[7:]])
    assert "".join(out) == "Привет" and "\ufffd" not in "".join(out)


def test_stop_in_russian():
    s = TextStream(["стоп"])
    assert "".join(feed_all(s, ["да ст".encode(), "оп нет".encode()])) == "да "
