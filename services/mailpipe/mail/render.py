"""Render an email template's subject, text and HTML bodies with Jinja2's sandbox.

The publisher renders each email of a chunk through one `TemplateRenderer`, which compiles every
template once per (id, version) and turns any template failure into a `PermanentError`.

Limits: an email's render stops with a `PermanentError` once its output passes `max_output_chars`
(the publisher passes `smtp.maxMessageBytes`: a message never has fewer bytes than characters),
and once it has run for `time_limit_seconds`. The time limit uses SIGALRM, so it holds only when
rendering runs in the main thread of the process and nothing else handles SIGALRM, as in the
publisher.
"""

from __future__ import annotations

import signal
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from mailpipe.errors import PermanentError

_DEFAULT_CACHE_SIZE = 256
DEFAULT_TIME_LIMIT_SECONDS = 5.0
DEFAULT_MAX_OUTPUT_CHARS = 10_000_000


@dataclass(frozen=True)
class TemplateSource:
    """A template row as the application stores it."""

    id: int
    subject: str
    body_text: str
    body_html: str | None
    # Changes whenever the row changes (for example its updated_at), so an edited template is
    # compiled again instead of being served from the cache.
    version: str = ""


@dataclass(frozen=True)
class RenderedContent:
    """The rendered subject and bodies of one email."""

    subject: str
    text: str
    html: str | None


@dataclass(frozen=True)
class _CompiledTemplate:
    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template | None


class TemplateRenderer:
    """Renders templates in a sandbox, with a bounded cache of compiled templates.

    Subject and text are rendered without escaping, and HTML is autoescaped. An undefined variable
    fails the render, and a context key whose value is None counts as undefined, so templates
    must use the `default` filter for optional values.
    """

    def __init__(
        self,
        *,
        cache_size: int = _DEFAULT_CACHE_SIZE,
        time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    ) -> None:
        self._cache_size = cache_size
        self._time_limit_seconds = time_limit_seconds
        self._max_output_chars = max_output_chars
        self._cache: OrderedDict[tuple[int, str], _CompiledTemplate | PermanentError] = OrderedDict()
        self._plain_env = SandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
        )
        self._html_env = SandboxedEnvironment(
            undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=True
        )

    def render(self, template: TemplateSource, context: Mapping[str, Any]) -> RenderedContent:
        """Render the template with `context`, or raise `PermanentError` naming the template."""
        compiled = self._compiled(template)
        values = {key: value for key, value in context.items() if value is not None}

        limit = _OutputLimit(self._max_output_chars, template_id=template.id)
        with _time_limit(self._time_limit_seconds, template_id=template.id):
            subject = _render_part(compiled.subject, values, limit, template_id=template.id, part="subject")
            text = _render_part(compiled.text, values, limit, template_id=template.id, part="text body")
            html = None
            if compiled.html is not None:
                html = _render_part(compiled.html, values, limit, template_id=template.id, part="HTML body")

        # A template or a value may end the subject with a newline, which is harmless once
        # stripped. A line break inside it would start a new header, so that fails.
        subject = subject.strip()
        if "\r" in subject or "\n" in subject:
            raise PermanentError(
                f"Template {template.id}: the rendered subject contains a line break (CR or LF), "
                f"which would inject headers: {subject[:200]!r}"
            )
        return RenderedContent(subject=subject, text=text, html=html)

    def _compiled(self, template: TemplateSource) -> _CompiledTemplate:
        key = (template.id, template.version)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._compile(template)
            self._cache[key] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)

        # A template that failed to compile is cached as its error, so a chunk of a thousand
        # emails with a broken template parses it once, not a thousand times.
        if isinstance(cached, PermanentError):
            raise PermanentError(cached.reason)
        return cached

    def _compile(self, template: TemplateSource) -> _CompiledTemplate | PermanentError:
        try:
            subject = _compile_part(self._plain_env, template.subject, part="subject")
            text = _compile_part(self._plain_env, template.body_text, part="text body")
            html = None
            if template.body_html is not None:
                html = _compile_part(self._html_env, template.body_html, part="HTML body")
        except _PartSyntaxError as error:
            return PermanentError(f"Template {template.id}: {error}")
        return _CompiledTemplate(subject=subject, text=text, html=html)


class _PartSyntaxError(Exception):
    """A syntax error in one part of a template, with the part named in the message."""


def _compile_part(environment: SandboxedEnvironment, source: str, *, part: str) -> jinja2.Template:
    try:
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        # The template text is the application's data, so only editing it can fix this.
        raise _PartSyntaxError(
            f"syntax error in the {part} at line {error.lineno}: {error.message}"
        ) from error


class _RenderTimeout(Exception):
    """Raised by the SIGALRM handler inside a render that ran out of time."""


class _OutputLimit:
    """Counts the characters an email's render produced, across its parts."""

    def __init__(self, max_chars: int, *, template_id: int) -> None:
        self.left = max_chars
        self.max_chars = max_chars
        self.template_id = template_id

    def take(self, piece: str, *, part: str) -> None:
        self.left -= len(piece)
        if self.left < 0:
            raise PermanentError(
                f"Template {self.template_id}: the rendered {part} makes the email larger than the"
                f" limit of {self.max_chars} bytes (smtp.maxMessageBytes); rendering stopped"
            )


@contextmanager
def _time_limit(seconds: float, *, template_id: int) -> Iterator[None]:
    """Interrupt the block after `seconds` with a PermanentError (main thread only)."""
    if (
        seconds <= 0
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    ):
        # No limit rather than breaking another user of SIGALRM, or outside the main thread.
        yield
        return

    active = [True]

    def interrupt(signum: int, frame: object) -> None:
        if active[0]:
            raise _RenderTimeout

    previous = signal.signal(signal.SIGALRM, interrupt)
    # The alarm repeats every 0.1 s, in case code inside the template swallows the first one.
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    except _RenderTimeout:
        raise PermanentError(f"Template {template_id}: rendering took longer than {seconds:g} s; stopped") from None
    finally:
        active[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _render_part(
    compiled: jinja2.Template, values: Mapping[str, Any], limit: _OutputLimit, *, template_id: int, part: str
) -> str:
    pieces: list[str] = []
    try:
        for piece in compiled.generate(values):
            limit.take(piece, part=part)
            pieces.append(piece)
        return "".join(pieces)
    except (PermanentError, _RenderTimeout):
        raise
    except jinja2.UndefinedError as error:
        # A missing value, or a null one that was left out of the context.
        raise PermanentError(
            f"Template {template_id}: undefined variable in the {part}: {error.message}"
            " (a null value counts as undefined, so use the default filter for optional values)"
        ) from error
    except SecurityError as error:
        # The sandbox blocked access to an unsafe attribute or call.
        raise PermanentError(
            f"Template {template_id}: the sandbox blocked an unsafe operation in the {part}: "
            f"{error}"
        ) from error
    except Exception as error:
        # A template is code written by the application's users, so any exception it raises
        # (a division by zero, a bad filter argument) is that template's failure.
        raise PermanentError(
            f"Template {template_id}: rendering the {part} failed: "
            f"{type(error).__name__}: {error}"
        ) from error
