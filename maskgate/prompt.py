"""The constant verifier prompt and the answer vocabulary.

Everything the model reads besides the overlay comes from the `prompt` section of params.yaml,
so the wording and the answers live in one place: `prompt.answers`. The user text names them
through its `{answers}` placeholder ("ACCEPT or REJECT", "ACCEPT, REJECT or BORDERLINE"), so a new
answer is a params change (plus examples that carry it), not a code change.

Answers and labels. An example's integer `label` says which answer is right:

    label 1  -> answers[0]  ACCEPT: the candidate group is the one the query names
    label 0  -> answers[1]  REJECT
    label i  -> answers[i]  for i >= 2, e.g. 2 -> BORDERLINE in [ACCEPT, REJECT, BORDERLINE]

1 and 0 keep the binary convention (1 = positive) that the negatives stage writes and every
metric reads; a further answer takes the next integers without renumbering the first two.

The gate stays binary whatever the vocabulary: it auto-passes a candidate when P(answers[0])
reaches its threshold and sends everything else to a person. So the score is P(first answer),
a softmax over the first tokens of *all* answers (see scoring), and metrics, plots and the audit
see `gate_label(label)`: 1 for label 1, 0 for every other answer. With a BORDERLINE answer, a
borderline example is one the gate must not auto-pass, and the model's BORDERLINE probability
counts against ACCEPT, never for it.
"""
from __future__ import annotations

from pydantic import ConfigDict, StrictStr
from pydantic.dataclasses import dataclass

ACCEPT_LABEL = 1  # the label of an example whose right answer is answers[0]
REJECT_LABEL = 0  # ... answers[1]; a label i >= 2 names answers[i]


def gate_label(label: int) -> int:
    """1 if the label's answer is the one the gate auto-passes (answers[0]), else 0: what metrics call a label.

    Labels are checked against the vocabulary where they meet it (Prompt.label_text, in render).
    """
    return int(int(label) == ACCEPT_LABEL)


@dataclass(config=ConfigDict(extra="forbid", frozen=True))
class Prompt:
    """params.yaml's `prompt` section, checked when made (config.Params.prompt, or a verifier.json's copy)."""

    system: StrictStr
    user: StrictStr  # holds a "{query}" placeholder, and "{answers}" where the answers are named
    answers: tuple[StrictStr, ...]  # answers[0] is the positive answer (ACCEPT), answers[1] the negative one

    def __post_init__(self):
        answers = self.answers
        if len(answers) < 2 or len(set(answers)) != len(answers):
            raise ValueError(f"prompt.answers must list at least two distinct answers, got {list(answers)}")
        if not all(a.strip() and a == a.strip() for a in answers):
            raise ValueError(f"prompt.answers must be words without surrounding spaces, got {list(answers)}")
        if "{query}" not in self.user:
            raise ValueError("prompt.user must contain the {query} placeholder")
        try:
            text = self.user_text("")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"prompt.user may hold only the {{query}} and {{answers}} placeholders: {e!r}") from None
        unnamed = [a for a in answers if a not in text]
        if unnamed:
            # the model would be asked for answers it is never told about
            raise ValueError(f"prompt.user does not name the answers {unnamed}: write {{answers}} where they go")

    @property
    def accept(self) -> str:
        return self.answers[0]

    @property
    def reject(self) -> str:
        return self.answers[1]

    @property
    def answers_text(self) -> str:
        """The answers as the user text names them: "ACCEPT or REJECT", "ACCEPT, REJECT or BORDERLINE"."""
        return f"{', '.join(self.answers[:-1])} or {self.answers[-1]}"

    @property
    def decision_names(self) -> tuple[str, str]:
        """Names of the gate's two decisions: auto-pass (answers[0]) and the rest.

        With two answers the rest is answers[1]; with more, no single answer is "the rest", so it is
        "not " + answers[0] (a BORDERLINE or a REJECT both go to a person).
        """
        return self.accept, self.reject if len(self.answers) == 2 else f"not {self.accept}"

    def user_text(self, query: str) -> str:
        return self.user.format(query=query.strip().rstrip("."), answers=self.answers_text)

    def answer_index(self, label: int) -> int:
        """The index in `answers` of the label's answer (see the module docstring); ValueError if none."""
        label = int(label)
        index = {ACCEPT_LABEL: 0, REJECT_LABEL: 1}.get(label, label)
        if label < 0 or index >= len(self.answers):
            raise ValueError(f"label {label} names no answer of prompt.answers {list(self.answers)}")
        return index

    def label_text(self, label: int) -> str:
        """1 -> the positive answer, 0 -> the negative one, i >= 2 -> answers[i]."""
        return self.answers[self.answer_index(label)]

    def messages(self, query: str, answer: str | None = None) -> list[dict]:
        """Chat messages in the processor's format; the image goes before the user text."""
        msgs = [
            {"role": "system", "content": [{"type": "text", "text": self.system}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.user_text(query)}]},
        ]
        if answer is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return msgs
