"""The answer vocabulary lives in params.yaml's prompt.answers: labels, label_text and the user text follow it."""
import copy

import pytest

from maskgate.prompt import ACCEPT_LABEL, REJECT_LABEL, gate_label
from tests.conftest import settings

THREE = ["ACCEPT", "REJECT", "BORDERLINE"]


def with_answers(params, answers, user=None):
    p = copy.deepcopy(params)
    p["prompt"]["answers"] = answers
    if user is not None:
        p["prompt"]["user"] = user
    return settings(p).prompt


def test_default_prompt_text_and_labels(params):
    prompt = settings(params).prompt
    assert prompt.answers == ("ACCEPT", "REJECT")
    assert prompt.user_text(" red car. ") == (
        "Query: red car. Does the highlighted mask group match the query? Answer exactly: ACCEPT or REJECT."
    )
    assert (prompt.label_text(ACCEPT_LABEL), prompt.label_text(REJECT_LABEL)) == ("ACCEPT", "REJECT")
    assert (ACCEPT_LABEL, REJECT_LABEL) == (1, 0)  # the negatives stage writes label = int(kind == "positive")
    assert prompt.decision_names == ("ACCEPT", "REJECT")


def test_a_third_answer_is_a_params_change(params):
    prompt = with_answers(params, THREE)
    assert prompt.user_text("dog").endswith("Answer exactly: ACCEPT, REJECT or BORDERLINE.")
    assert [prompt.label_text(y) for y in (1, 0, 2)] == THREE
    assert prompt.decision_names == ("ACCEPT", "not ACCEPT")
    assert [gate_label(y) for y in (1, 0, 2)] == [1, 0, 0]  # the gate auto-passes ACCEPT only
    assert prompt.messages("dog", prompt.label_text(2))[-1]["content"][0]["text"] == "BORDERLINE"
    with pytest.raises(ValueError, match="label 3 names no answer"):
        prompt.label_text(3)
    with pytest.raises(ValueError, match="label -1 names no answer"):
        prompt.label_text(-1)
    with pytest.raises(ValueError, match="label 2 names no answer"):
        settings(params).prompt.label_text(2)


def test_user_text_must_name_every_answer(params):
    literal = "Query: {query}. Answer exactly: ACCEPT or REJECT."
    two = with_answers(params, ["ACCEPT", "REJECT"], literal)
    assert two.user_text("dog") == "Query: dog. Answer exactly: ACCEPT or REJECT."
    with pytest.raises(ValueError, match=r"does not name the answers \['BORDERLINE'\]"):
        with_answers(params, THREE, literal)
    with pytest.raises(ValueError, match="only the {query} and {answers} placeholders"):
        with_answers(params, THREE, "Query: {query}. Answer {answers} in {language}.")
    with pytest.raises(ValueError, match="{query} placeholder"):
        with_answers(params, THREE, "Answer {answers}.")


@pytest.mark.parametrize("answers", [["ACCEPT"], ["ACCEPT", "ACCEPT"], ["ACCEPT", " REJECT"], ["ACCEPT", ""]])
def test_bad_vocabularies_are_refused(params, answers):
    with pytest.raises(ValueError, match="prompt.answers"):
        with_answers(params, answers)
