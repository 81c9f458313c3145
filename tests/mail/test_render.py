"""Template rendering: escaping, the sandbox, the compile cache and every template failure."""

from __future__ import annotations

import signal
import time

import pytest

from mailpipe.errors import PermanentError
from mailpipe.mail.render import TemplateRenderer, TemplateSource


def make_template(
    *,
    subject: str = "Hello {{ first_name }}",
    text: str = "Dear {{ first_name }},\n",
    html: str | None = "<p>Dear {{ first_name }},</p>\n",
    template_id: int = 7,
    version: str = "2026-01-01 00:00:00",
) -> TemplateSource:
    return TemplateSource(
        id=template_id, subject=subject, body_text=text, body_html=html, version=version
    )


def render_error(template: TemplateSource, context: dict[str, object]) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        TemplateRenderer().render(template, context)
    return caught.value


def test_render_fills_all_parts() -> None:
    content = TemplateRenderer().render(make_template(), {"first_name": "Ana"})

    assert content.subject == "Hello Ana"
    assert content.text == "Dear Ana,\n"
    assert content.html == "<p>Dear Ana,</p>\n"


def test_html_escaped_text_not() -> None:
    name = "<script>alert(1)</script>"
    content = TemplateRenderer().render(make_template(), {"first_name": name})

    assert content.html == "<p>Dear &lt;script&gt;alert(1)&lt;/script&gt;,</p>\n"
    assert content.text == f"Dear {name},\n"
    assert content.subject == f"Hello {name}"


def test_template_without_html() -> None:
    content = TemplateRenderer().render(make_template(html=None), {"first_name": "Ana"})

    assert content.html is None


def test_null_first_name_fails() -> None:
    error = render_error(make_template(), {"first_name": None})

    assert "Template 7" in error.reason
    assert "'first_name' is undefined" in error.reason
    assert "subject" in error.reason


def test_null_first_name_with_default() -> None:
    template = make_template(
        subject="Hello {{ first_name | default('there') }}", text="Hi\n", html=None
    )

    content = TemplateRenderer().render(template, {"first_name": None})

    assert content.subject == "Hello there"


def test_undefined_variable_fails() -> None:
    template = make_template(text="Your code: {{ coupon_code }}\n")

    error = render_error(template, {"first_name": "Ana"})

    assert "Template 7" in error.reason
    assert "'coupon_code' is undefined" in error.reason
    assert "text body" in error.reason


def test_undefined_attribute_fails() -> None:
    template = make_template(html="<p>{{ order.total }}</p>")

    error = render_error(template, {"first_name": "Ana", "order": {}})

    assert "Template 7" in error.reason
    assert "HTML body" in error.reason


def test_syntax_error_fails() -> None:
    template = make_template(text="Line one\n{% if first_name %}unclosed\n")

    error = render_error(template, {"first_name": "Ana"})

    assert "Template 7" in error.reason
    assert "syntax error in the text body" in error.reason
    assert "line 2" in error.reason


def test_sandbox_blocks_dunder_attribute() -> None:
    template = make_template(subject="{{ ''.__class__ }}")

    error = render_error(template, {})

    assert "Template 7" in error.reason
    assert "sandbox" in error.reason
    assert "__class__" in error.reason


def test_sandbox_blocks_subclass_walk() -> None:
    template = make_template(
        subject="Hi", text="{{ ''.__class__.__mro__[1].__subclasses__() }}", html=None
    )

    error = render_error(template, {})

    assert "sandbox" in error.reason


def test_runtime_exception_fails() -> None:
    template = make_template(subject="Hi", text="{{ 1 / 0 }}", html=None)

    error = render_error(template, {})

    assert "Template 7" in error.reason
    assert "ZeroDivisionError" in error.reason


@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r"])
def test_subject_line_break_fails(line_break: str) -> None:
    name = f"Ana{line_break}Bcc: victim@example.com"

    error = render_error(make_template(), {"first_name": name})

    assert "Template 7" in error.reason
    assert "line break" in error.reason


def test_subject_outer_whitespace_stripped() -> None:
    template = make_template(subject="  Hello {{ first_name }}\n")

    content = TemplateRenderer().render(template, {"first_name": "Ana"})

    assert content.subject == "Hello Ana"


def test_text_keeps_trailing_newlines() -> None:
    template = make_template(text="Line {{ first_name }}\nSecond\n\n")

    content = TemplateRenderer().render(template, {"first_name": "Ana"})

    assert content.text == "Line Ana\nSecond\n\n"


def test_compiles_once_per_version(monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = TemplateRenderer()
    calls: list[str] = []
    original = renderer._plain_env.from_string

    def counting_from_string(source: str) -> object:
        calls.append(source)
        return original(source)

    monkeypatch.setattr(renderer._plain_env, "from_string", counting_from_string)
    template = make_template()

    for number in range(1000):
        renderer.render(template, {"first_name": f"User {number}"})

    assert len(calls) == 2  # subject and text


def test_new_version_recompiles() -> None:
    renderer = TemplateRenderer()
    old = make_template(subject="Old {{ first_name }}", version="v1")
    new = make_template(subject="New {{ first_name }}", version="v2")

    assert renderer.render(old, {"first_name": "Ana"}).subject == "Old Ana"
    assert renderer.render(new, {"first_name": "Ana"}).subject == "New Ana"


def test_broken_template_fails_every_render() -> None:
    renderer = TemplateRenderer()
    template = make_template(subject="{{ first_name")

    for _ in range(3):
        with pytest.raises(PermanentError, match="syntax error in the subject"):
            renderer.render(template, {"first_name": "Ana"})


def test_cache_evicts_oldest() -> None:
    renderer = TemplateRenderer(cache_size=2)
    for template_id in range(3):
        renderer.render(make_template(template_id=template_id), {"first_name": "Ana"})

    assert (0, "2026-01-01 00:00:00") not in renderer._cache
    assert len(renderer._cache) == 2


def test_failure_leaves_renderer_usable() -> None:
    renderer = TemplateRenderer()
    with pytest.raises(PermanentError):
        renderer.render(make_template(), {"first_name": None})

    content = renderer.render(make_template(), {"first_name": "Ana"})

    assert content.subject == "Hello Ana"


def test_endless_template_stops_at_time_limit() -> None:
    loops = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    template = make_template(text=loops)
    started = time.monotonic()

    with pytest.raises(PermanentError, match="took longer than 0.3 s"):
        TemplateRenderer(time_limit_seconds=0.3).render(template, {"first_name": "Ana"})

    assert time.monotonic() - started < 5


def test_huge_output_stops_at_size_limit() -> None:
    template = make_template(text="{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}")

    with pytest.raises(PermanentError, match="limit of 50000 bytes"):
        TemplateRenderer(max_output_chars=50_000).render(template, {"first_name": "Ana"})


def test_limits_leave_no_alarm_behind() -> None:
    TemplateRenderer(time_limit_seconds=0.2).render(make_template(), {"first_name": "Ana"})

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
