"""The two ways an admission call goes wrong, kept apart.

- Refused: the object is well formed but its model annotations are not acceptable. The answer is
  a normal AdmissionReview with `allowed: false` and status code 400.
- MalformedReview: the call itself is broken (not JSON, not an AdmissionReview v1, an object of
  the wrong shape). The answer is HTTP 400 with a JSON error, since there is nothing to review.
"""

from __future__ import annotations

import json

from webhook.core.redact import redact


class Refused(Exception):
    """Annotations that cannot be honoured; `problems` are complete, user-facing sentences."""

    def __init__(self, problems: list[str]) -> None:
        # Each sentence may quote a value; none may repeat a secret a URL carried.
        problems = [redact(problem) for problem in problems]
        super().__init__("; ".join(problems))
        self.problems = problems

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


class MalformedReview(Exception):
    """The request body is not an AdmissionReview this webhook can read."""


def invalid_value(key: str, value: str, expected: str) -> str:
    """The standard refusal sentence: which key, which value (redacted), what would be accepted."""
    return f"{key}: {json.dumps(redact(value))} is not valid; expected {expected}"
