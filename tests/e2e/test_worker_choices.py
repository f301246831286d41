"""A generate frame's `choices`: a real worker on stories260K answers with exactly one of
the given strings (a grammar sampler in its chain), whatever the prompt, streamed or
not; a bad `choices` is a bad request, and the worker serves on."""

from __future__ import annotations

import pytest

from e2e.test_worker_process import Worker

CHOICES = ["code", "chat", "summarize"]


@pytest.fixture
def stories(tmp_path, stories_model_path):
    w = Worker(stories_model_path, tmp_path)
    w.boot()
    yield w
    w.close()


@pytest.mark.parametrize("prompt", ["Once upon a time", "Route: ", "def main():\n    print('hi')\nRoute: ", "s"])
def test_the_answer_is_one_of_the_choices(stories, prompt):
    done, _ = stories.generate("c1", prompt=prompt, max_tokens=16, temperature=0.0, choices=CHOICES)
    assert done["type"] == "done", done
    assert done["text"] in CHOICES, done
    assert done["finish_reason"] == "stop"


def test_unconstrained_the_same_prompt_is_not_a_choice(stories):
    """The constraint is what makes the answer a choice: stories260K left alone tells a story."""
    done, _ = stories.generate("u1", prompt="Once upon a time", max_tokens=16, temperature=0.0)
    assert done["type"] == "done"
    assert done["text"] not in CHOICES


def test_streamed_pieces_spell_the_choice(stories):
    done, tokens = stories.generate("s1", prompt="Once upon a time", max_tokens=16, temperature=0.0, choices=CHOICES, stream=True)
    assert done["type"] == "done", done
    assert "".join(t["text"] for t in tokens if t["type"] == "token") in CHOICES


def test_a_single_choice_and_escaped_text(stories):
    done, _ = stories.generate("e1", prompt="Once", max_tokens=16, temperature=0.0, choices=['say "é"'])
    assert done["text"] == 'say "é"', done


@pytest.mark.parametrize("choices", [["ok", ""], ["x" * 65], "code", [1, 2]])
def test_bad_choices_are_bad_requests(stories, choices):
    frame, _ = stories.generate("b1", prompt="Once", max_tokens=4, choices=choices)
    assert frame["type"] == "error" and frame["kind"] == "bad_request", frame
    assert "choices" in frame["message"]
    done, _ = stories.generate("b2", prompt="Once", max_tokens=4, temperature=0.0, choices=["a", "b"])
    assert done["text"] in ("a", "b")
