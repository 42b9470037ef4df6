"""A Griffe extension for the API reference: transformers-style parameter types read as plain types.

The docstrings follow transformers' conventions: ``name (`int`, *optional*, defaults to `16`):`` for a parameter and
``[`MatryoshkaModel`]`` for a reference (transformers' doc builder turns it into a link). mkdocstrings shows the part
in parentheses as a code span, where the backticks and asterisks would appear literally, and keeps the brackets. This
rewrites the types to ``name (int, optional):`` and the references to plain code before Griffe parses the docstring;
the default itself is in the table's Default column, read from the signature.
"""

import re

import griffe

ENTRY = re.compile(r"^(?P<head>[ \t]*\*{0,2}\w+(?:, \w+)* )\((?P<type>[^\n]*?)\):", re.MULTILINE)
DEFAULT = re.compile(r",?\s*defaults to .*$")
REFERENCE = re.compile(r"\[(`[^`\]\n]+`)\]")


def plain_type(match):
    words = DEFAULT.sub("", match["type"]).replace("`", "").replace("*", "")
    return f"{match['head']}({words.strip(' ,')}):"


class TransformersDocstringTypes(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None and "`" in obj.docstring.value:
            obj.docstring.value = REFERENCE.sub(r"\1", ENTRY.sub(plain_type, obj.docstring.value))
