"""The chat template renderer's child process (bitttt.hf.tokenizer.TemplateRenderer starts it).

A chat template is code from a downloaded folder: jinja2's sandbox stops it from touching
files or Python internals, but not from looping for hours (nested `range(100000)`) or asking
for 10 GB (`'x' * 10000000000`). So templates render here, in a process the parent can kill at
its deadline, under an address-space limit, with output and `*`/`**` operands capped.

Run as a script (it imports neither torch nor bitttt, so it starts in a few tens of ms): one JSON
request per stdin line, {"template": str, "context": {...}}; one JSON answer per stdout line,
{"text": str} or {"error": str}. It exits at the end of stdin.
"""

from __future__ import annotations

import json
import sys
from typing import Any

MAX_OUTPUT_CHARS = 1 << 22  # 4M characters: far more than any prompt the model can take
MAX_MEMORY_BYTES = 1 << 30  # the child's address space beyond what it has at start
MAX_EXPONENT = 4096  # `x ** n` with |x| > 1: 2 ** 4096 is a 1233-digit number; 2 ** 10**9 takes minutes


def _limit_memory() -> None:
    try:
        import resource
    except ImportError:  # not POSIX: the parent's deadline still bounds the time
        return
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    limit = used + MAX_MEMORY_BYTES
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def make_environment():
    """transformers' chat template environment (sandboxed, trim_blocks, lstrip_blocks,
    raise_exception) with `*` and `**` on huge operands refused."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Environment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(("*", "**"))

        def call_binop(self, context, operator, left, right):  # type: ignore[override]
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                        raise SecurityError(f"'*' would build {len(seq) * n} items (at most {MAX_OUTPUT_CHARS})")
            if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT \
                    and isinstance(left, (int, float)) and abs(left) > 1:
                raise SecurityError(f"'**' with exponent {right} (at most {MAX_EXPONENT})")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def render(env: Any, template: str, context: dict[str, Any]) -> str:
    """The rendered text; TemplateError/MemoryError/... as the template raises them, ValueError
    past MAX_OUTPUT_CHARS (checked as the pieces come, so a runaway loop of output stops early)."""
    pieces, size = [], 0
    for piece in env.from_string(template).generate(**context):
        size += len(piece)
        if size > MAX_OUTPUT_CHARS:
            raise ValueError(f"output longer than {MAX_OUTPUT_CHARS} characters")
        pieces.append(piece)
    return "".join(pieces)


def answer(env: Any, line: str) -> dict[str, str]:
    try:
        req = json.loads(line)
        return {"text": render(env, req["template"], req["context"])}
    except MemoryError:
        return {"error": f"needs more than {MAX_MEMORY_BYTES >> 20} MiB"}
    except RecursionError:
        return {"error": "nested too deeply"}
    except Exception as e:  # the template's own error, or a limit above: the parent reports it
        return {"error": f"{type(e).__name__}: {str(e)[:500]}"}


def main() -> int:
    _limit_memory()
    env = make_environment()
    for line in sys.stdin:
        sys.stdout.write(json.dumps(answer(env, line)) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
