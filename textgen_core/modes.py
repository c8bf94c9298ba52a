"""Scenario modes: each is a system prompt plus how the user's text is placed in the chat.

User text always travels as a message's content (data), never formatted into a template
string, so a prompt cannot rewrite the instructions it is wrapped in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Bump when a template changes: anything keyed on rendered prompts (caches) must miss.
TEMPLATE_VERSION = 1


class Mode(enum.StrEnum):
    general = "general"
    recommendation = "recommendation"
    support = "support"
    ecommerce = "ecommerce"


@dataclass(frozen=True)
class ModeTemplate:
    system: str
    description: str


TEMPLATES: dict[Mode, ModeTemplate] = {
    Mode.general: ModeTemplate(
        system="You are a helpful assistant. Answer clearly and concisely.",
        description="Plain assistant.",
    ),
    Mode.recommendation: ModeTemplate(
        system=(
            "You are a recommendation assistant. Suggest a few specific options that fit the "
            "user's request, each with a one-line reason."
        ),
        description="Suggestions with short reasons.",
    ),
    Mode.support: ModeTemplate(
        system=(
            "You are a polite customer support agent. Acknowledge the customer's problem, give "
            "clear next steps, and do not invent policies."
        ),
        description="Customer support replies.",
    ),
    Mode.ecommerce: ModeTemplate(
        system=(
            "You are an e-commerce copywriter. Write an engaging, accurate product description "
            "from the details given. Do not invent features that are not listed."
        ),
        description="Product copy from product details.",
    ),
}


def build_messages(
    mode: Mode,
    *,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    history: list[dict[str, str]] | None = None,
) -> list[dict[str, str]]:
    """The chat the model sees: the mode's system prompt, earlier turns, then the new turn.

    A caller-supplied system message replaces the mode's system prompt.
    """
    turn = list(messages) if messages is not None else [{"role": "user", "content": prompt or ""}]
    system = [m for m in turn if m["role"] == "system"]
    rest = [m for m in turn if m["role"] != "system"]
    head = system[:1] or [{"role": "system", "content": TEMPLATES[mode].system}]
    return [*head, *(history or []), *rest]


def product_message(product: dict[str, object]) -> str:
    """The user message for a product (ecommerce mode): its fields as labelled data lines.

    Values are placed as data in the user turn, never into the system prompt, so product text
    cannot rewrite the copywriter's instructions.
    """
    lines = ["Write a product description for this product.", ""]
    for label in ("name", "category", "price", "description"):
        value = product.get(label)
        if value not in (None, ""):
            lines.append(f"{label.capitalize()}: {value}")
    attributes = product.get("attributes") or {}
    if isinstance(attributes, dict) and attributes:
        lines.append("Attributes:")
        lines += [f"- {key}: {value}" for key, value in attributes.items() if value not in (None, "")]
    return "\n".join(lines)
