"""Teacher conditioning: the same model, shown the privileged context c, acts as teacher.

The teacher prompt is the student prompt with a privileged block in front of it.
The template lives here, in one place:

    student  "<bos>123+045="
    teacher  "<bos>168|123+045="                                   (context = answer)
    teacher  "<bos>3+5+0=08 2+4+0=06 1+0+0=01\\n168|123+045="       (context = solution)

Because the question still ends the teacher prompt, the student's completion reads
naturally after either prompt, and the teacher can score it token by token.
"""

from __future__ import annotations

PRIVILEGED_TEMPLATE = "{context}|{prompt}"
"""Teacher prompt: privileged context c, a '|' separator, then the student prompt x."""


def teacher_prompt(prompt: str, context: str, template: str = PRIVILEGED_TEMPLATE) -> str:
    """The teacher's prompt for student prompt x and privileged context c."""
    for field in ("{context}", "{prompt}"):
        if field not in template:
            raise ValueError(f"privileged template {template!r} lacks the {field} placeholder")
    return template.format(context=context, prompt=prompt)
