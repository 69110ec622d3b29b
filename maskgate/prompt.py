"""The constant verifier prompt and the answer vocabulary.

Everything the model reads besides the overlay comes from the `prompt` section of params.yaml,
so the wording and the answers (ACCEPT / REJECT, later perhaps BORDERLINE) live in one place.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str  # holds a "{query}" placeholder
    answers: tuple[str, ...]  # answers[0] is the positive answer (ACCEPT)

    @classmethod
    def from_params(cls, params: dict) -> "Prompt":
        p = params["prompt"]
        answers = tuple(p["answers"])
        if len(answers) < 2 or len(set(answers)) != len(answers):
            raise ValueError(f"prompt.answers must list at least two distinct answers, got {answers}")
        if "{query}" not in p["user"]:
            raise ValueError("prompt.user must contain the {query} placeholder")
        return cls(system=p["system"], user=p["user"], answers=answers)

    @property
    def accept(self) -> str:
        return self.answers[0]

    @property
    def reject(self) -> str:
        return self.answers[1]

    def user_text(self, query: str) -> str:
        return self.user.format(query=query.strip().rstrip("."))

    def label_text(self, label: int) -> str:
        """1 -> the positive answer, 0 -> the negative one."""
        return self.accept if label else self.reject

    def messages(self, query: str, answer: str | None = None) -> list[dict]:
        """Chat messages in the processor's format; the image goes before the user text."""
        msgs = [
            {"role": "system", "content": [{"type": "text", "text": self.system}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.user_text(query)}]},
        ]
        if answer is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return msgs
