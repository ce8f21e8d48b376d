"""The ``requests-smartretry`` command: ``demo`` (the guided tour), ``get`` (curl-like) and
``wait`` (poll a task until it is done).

::

    requests-smartretry demo
    requests-smartretry get https://example.com/api --retries 2 --timeout 5 --lang en
    requests-smartretry wait https://example.com/tasks/42 --until status=succeeded --deadline 600

``get`` prints the attempts (the library's log lines) and a summary to stderr, the body to
stdout, and exits with a code that says how the call ended (see ``EXIT_CODES``).  Like
curl's ``--fail``, an error response (status >= 400) writes nothing to stdout: its body goes
to stderr (``--fail-with-body`` sends it to stdout as well), so ``> items.json`` never
receives an error page.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any, Optional

import requests

from . import __version__
from .adapter import SmartRetryAdapter
from .breaker import CircuitBreaker
from .errors import CircuitOpenError, SmartRetryError, TaskFailedError, attempt_history
from .events import EventKind
from .redact import is_secret_header, redact_text, redact_url

__all__ = [
    "EXIT_BREAKER_OPEN",
    "EXIT_CODES",
    "EXIT_HTTP_ERROR",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_TASK_FAILED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "exit_code_for",
    "main",
]

EXIT_OK = 0
#: The last response had a status >= 400 (after any retries).
EXIT_HTTP_ERROR = 1
#: Bad command line (argparse's own code).
EXIT_USAGE = 2
#: Every attempt failed at the network level: refused, reset, DNS…
EXIT_NETWORK = 3
#: Every attempt ran out of time (the per-attempt deadline).
EXIT_TIMEOUT = 4
#: The circuit breaker refused the call (or a retry) without touching the network, whether
#: the call then raised or returned the last failed response.
EXIT_BREAKER_OPEN = 5
#: ``wait``: the task ended without a result (a ``--fail-on`` value).
EXIT_TASK_FAILED = 6

EXIT_CODES = {
    EXIT_OK: "success (status < 400)",
    EXIT_HTTP_ERROR: "HTTP error: final status >= 400 after retries",
    EXIT_USAGE: "bad usage (invalid arguments)",
    EXIT_NETWORK: "network failure: the last attempt was refused, reset, DNS...",
    EXIT_TIMEOUT: "timeout: the last attempt passed its deadline",
    EXIT_BREAKER_OPEN: "circuit breaker open: the call or a retry was refused",
    EXIT_TASK_FAILED: "wait: the task ended without a result (a --fail-on value)",
}

_logger = logging.getLogger("requests_smartretry")


def exit_code_for(error: BaseException) -> int:
    """The exit code for a call that raised ``error``."""
    if isinstance(error, TaskFailedError):
        return EXIT_TASK_FAILED
    if isinstance(error, CircuitOpenError):
        return EXIT_BREAKER_OPEN
    if any(e.give_up_reason == "circuit_open" for e in attempt_history(error)):
        return EXIT_BREAKER_OPEN
    if isinstance(error, requests.Timeout):
        return EXIT_TIMEOUT
    return EXIT_NETWORK


def _breaker_refusal(error: Optional[BaseException],
                    history: Sequence[Any] = ()) -> Optional[str]:
    """What to print when the circuit breaker refused the call (``None`` if it did not):
    before the first attempt (it was open already) or before a retry (it opened during the
    call, whether the call then raised or returned a response)."""
    refused = next((e for e in history if e.kind is EventKind.REJECTED), None)
    if refused is not None and refused.attempt > 1:
        what = f"the retry after {refused.attempt - 1} failed attempt(s): it opened during " \
               "this call"
        service, retry_in = refused.service, refused.wait or 0.0
    elif isinstance(error, CircuitOpenError):
        what = "the call before any attempt: it was already open, nothing was sent"
        service, retry_in = error.service, error.retry_in
    else:
        return None
    return (f"error: circuit breaker open: the breaker for {redact_url(service)} refused "
            f"{what}; next probe in {retry_in:.1f} s")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {redact_text(text)!r}")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``requests-smartretry --help``)."""
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="requests-smartretry",
        description="Deadlines, classified retries and backoff for requests, "
        "from the command line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  requests-smartretry demo\n"
        "  requests-smartretry get https://example.com/ --retries 2 --timeout 5 --lang en\n"
        f"\nexit codes of 'get':\n{codes}",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="walk through every retry scenario against a local fault server",
        description="Start a local fault server and show, with the real log lines, what "
        "the library does for: success, reset, 503, 429 + Retry-After (and one above the "
        "cap), 404, {id} operation names, a urllib3 Retry, a slow drip, a whole-call "
        "deadline, a POST and a generator body that are not resent, the callable API, the "
        "retry budget, the circuit breaker, a verified WeChat Pay answer; then a statistics "
        "table. Takes about ten seconds.")
    demo.add_argument("--lang", choices=("zh", "en"), default="zh",
                      help="language of the log lines (default: zh, the original format)")

    get = commands.add_parser(
        "get", help="GET a URL with retries: attempts to stderr, body to stdout",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "GET URL through a SmartRetryAdapter. The attempts (log lines) and a summary go "
            "to stderr, the response body to stdout. Secrets (Authorization, cookies, "
            "token-like query parameters) never appear in what is printed.", 78),
        epilog=f"exit codes:\n{codes}")
    get.add_argument("url", metavar="URL", help="http:// or https:// URL")
    get.add_argument("--retries", type=_non_negative_int, default=1, metavar="N",
                     help="retries after the first attempt (default: 1, i.e. 2 attempts)")
    get.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S",
                     help="wall-clock seconds per attempt: connect + headers + body "
                     "(default: 30)")
    get.add_argument("--deadline", type=_positive_float, metavar="S",
                     help="wall-clock seconds for the whole command: attempts and waits "
                     "(default: none)")
    get.add_argument("--backoff", type=_non_negative_float, default=1.0, metavar="S",
                     help="seconds before the first retry, doubling, capped at "
                     "--backoff-max (default: 1; 0: retry at once)")
    get.add_argument("--backoff-max", type=_positive_float, default=5.0, metavar="S",
                     help="cap on every wait, Retry-After included (default: 5)")
    get.add_argument("--operation", metavar="NAME",
                     help="operation name in the log lines (default: 'GET host/path-template', "
                     "id-like path segments read {id})")
    get.add_argument("--lang", choices=("zh", "en"), default="zh",
                     help="language of the log lines (default: zh)")
    get.add_argument("-H", "--header", type=_header, action="append", default=[],
                     metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    get.add_argument("--fail-with-body", action="store_true",
                     help="on a status >= 400, write the body to stdout too (by default it "
                     "goes to stderr only, as with curl --fail)")
    get.add_argument("-q", "--quiet", action="store_true",
                     help="print no attempt lines, only errors")
    get.add_argument("--breaker-threshold", type=_positive_int, metavar="N",
                     help="open a circuit breaker after N consecutive failures "
                     "(within this call: it then refuses further retries)")
    get.set_defaults(command_parser=get)

    wait = commands.add_parser(
        "wait", help="poll a task URL until a JSON field says it is done",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "GET URL until the JSON field of --until has one of its values (print the body "
            "to stdout, exit 0), or of --fail-on (exit 6), or --deadline passes (exit 4). "
            "A poll that is not done is no failure; a poll that fails is retried "
            "(--retries), a 4xx ends the wait. Progress lines go to stderr. The task id is "
            "the whole state: run the same command again to resume a wait.", 78),
        epilog=f"examples:\n  requests-smartretry wait https://api.example.com/tasks/42 "
        f"--until status=succeeded --deadline 600\n\nexit codes:\n{codes}")
    wait.add_argument("url", metavar="URL", help="http:// or https:// URL of the task")
    wait.add_argument("--until", type=_field_values, default=("status", ("succeeded", "done")),
                      metavar="FIELD=V1,V2", help="done when the JSON FIELD (dots for nested "
                      "fields: data.status) has one of these values (default: "
                      "status=succeeded,done)")
    wait.add_argument("--fail-on", type=_field_values,
                      default=("status", ("failed", "cancelled", "expired", "not_found")),
                      metavar="FIELD=V1,V2", help="the task failed when FIELD has one of these "
                      "values (default: status=failed,cancelled,expired,not_found)")
    wait.add_argument("--deadline", type=_positive_float, default=600.0, metavar="S",
                      help="wall-clock seconds for the whole wait (default: 600)")
    wait.add_argument("--interval", type=_positive_float, default=1.0, metavar="S",
                      help="seconds before the second poll, growing x1.5 (default: 1)")
    wait.add_argument("--interval-max", type=_positive_float, default=30.0, metavar="S",
                      help="cap on the interval; a Retry-After may ask more (default: 30)")
    wait.add_argument("--retries", type=_non_negative_int, default=1, metavar="N",
                      help="retries of a failed poll (default: 1)")
    wait.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S",
                      help="wall-clock seconds per poll attempt (default: 30)")
    wait.add_argument("--backoff", type=_non_negative_float, default=1.0, metavar="S",
                      help="seconds before retrying a failed poll (default: 1)")
    wait.add_argument("--operation", metavar="NAME", help="operation name in the log lines")
    wait.add_argument("--lang", choices=("zh", "en"), default="zh",
                      help="language of the log lines (default: zh)")
    wait.add_argument("-H", "--header", type=_header, action="append", default=[],
                      metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    wait.add_argument("-q", "--quiet", action="store_true",
                      help="print no progress lines, only errors")
    wait.set_defaults(command_parser=wait)
    return parser


def _field_values(text: str) -> tuple[str, tuple[str, ...]]:
    field, sep, values = text.partition("=")
    chosen = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not field.strip() or not chosen:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE[,VALUE...], got {text!r}")
    return field.strip(), chosen


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (see ``EXIT_CODES``)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with EXIT_USAGE on bad usage
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(lang=args.lang)
    if args.command == "wait":
        return _wait(args.command_parser, args)
    return _get(args.command_parser, args)


def _get(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``get``; ``parser`` is the ``get`` subcommand's (its usage is what errors print)."""
    url: str = args.url
    if not url.lower().startswith(("http://", "https://")):
        parser.error(f"URL must start with http:// or https://, got {redact_url(url)!r}")
    options: dict[str, Any] = {
        "max_retries": args.retries,
        "timeout": args.timeout,
        "backoff_base": args.backoff,
        "backoff_max": max(args.backoff_max, args.backoff),
        "lang": args.lang,
    }
    if args.deadline is not None:
        options["deadline"] = args.deadline
    if args.operation:
        options["operation_name"] = args.operation
    if args.breaker_threshold is not None:
        options["breaker"] = CircuitBreaker(failure_threshold=args.breaker_threshold,
                                            recovery_timeout=max(args.timeout, 1.0))
    try:
        adapter = SmartRetryAdapter(**options)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    err = sys.stderr
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (_logger.level, _logger.propagate)
    if not args.quiet:
        _logger.addHandler(handler)
        # DEBUG: a first-attempt success is quiet at INFO, but here the attempts are the
        # point (use -q for none).
        _logger.setLevel(logging.DEBUG)
        _logger.propagate = False
    started = time.monotonic()
    try:
        response = session.get(url, headers=dict(args.header))
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
            ValueError) as exc:  # a URL that cannot be sent (urllib3's LocationParseError too)
        print(f"error: {type(exc).__name__}: {redact_text(str(exc))}", file=err)
        return EXIT_USAGE
    except requests.RequestException as exc:
        code = exit_code_for(exc)
        attempts = sum(1 for e in attempt_history(exc) if e.kind is EventKind.START)
        refusal = _breaker_refusal(exc, attempt_history(exc))
        if not isinstance(exc, CircuitOpenError):
            print(f"error: {type(exc).__name__}: {redact_text(str(exc))} "
                  f"({attempts} attempt(s), {time.monotonic() - started:.2f} s)", file=err)
        if refusal is not None:
            print(refusal, file=err)
            return EXIT_BREAKER_OPEN
        return code
    finally:
        _logger.removeHandler(handler)
        _logger.setLevel(saved[0])
        _logger.propagate = saved[1]
        session.close()
    history = getattr(response, "retry_history", ())
    attempts = sum(1 for e in history if e.kind is EventKind.START)
    if not args.quiet or response.status_code >= 400:
        shown = {k: v for k, v in response.headers.items() if not is_secret_header(k)}
        print(f"HTTP {response.status_code} {response.reason} from {redact_url(url)} "
              f"({attempts} attempt(s), {time.monotonic() - started:.2f} s, "
              f"{len(response.content)} bytes, {shown.get('Content-Type', 'no content type')})",
              file=err)
    failed = response.status_code >= 400
    if failed and response.content:
        text = response.content.decode(response.encoding or "utf-8", errors="replace")
        print(redact_text(text), file=err)
    if not failed or args.fail_with_body:
        sys.stdout.flush()
        sys.stdout.buffer.write(response.content)
        sys.stdout.flush()
    refusal = _breaker_refusal(None, history)
    if refusal is not None:  # the last failed response, its retry refused by the breaker
        print(refusal, file=err)
        return EXIT_BREAKER_OPEN
    return EXIT_HTTP_ERROR if failed else EXIT_OK


def _field(body: Any, path: str) -> Any:
    """``body``'s value at the dotted ``path`` (``None`` where it has none)."""
    for name in path.split("."):
        body = body.get(name) if isinstance(body, dict) else None
    return body


def _wait(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``wait``: poll URL with :func:`poll_until` until a JSON field says done."""
    from .poll import poll_until

    url: str = args.url
    if not url.lower().startswith(("http://", "https://")):
        parser.error(f"URL must start with http:// or https://, got {redact_url(url)!r}")
    if args.interval_max < args.interval:
        parser.error(f"--interval-max ({args.interval_max:g}) must be >= --interval "
                     f"({args.interval:g})")
    (done_field, done_values), (fail_field, fail_values) = args.until, args.fail_on
    session = requests.Session()
    adapter = SmartRetryAdapter(timeout=args.timeout, lang=args.lang)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    headers = dict(args.header)

    def fetch() -> requests.Response:
        response = session.get(url, headers=headers)
        response.raise_for_status()  # a 5xx/429 is retried by the poll's policy, a 4xx ends
        return response

    def done(response: requests.Response) -> bool:
        try:
            body = response.json()
        except ValueError:
            raise SmartRetryError(f"HTTP {response.status_code} from {redact_url(url)} is "
                                  "not JSON") from None
        if str(_field(body, fail_field)) in fail_values:
            status = str(_field(body, fail_field))
            code = _field(body, "error.code")
            raise TaskFailedError(f"the task ended {status}" + (f": {code}" if code else ""),
                                  status=status, code=code, task=body)
        return str(_field(body, done_field)) in done_values

    err = sys.stderr
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (_logger.level, _logger.propagate)
    if not args.quiet:
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False
    started = time.monotonic()
    try:
        response = poll_until(
            fetch, done=done, deadline=args.deadline, interval=args.interval,
            interval_max=args.interval_max, operation_name=args.operation or "wait",
            describe=lambda r: _describe(r, done_field), max_retries=args.retries,
            timeout=args.timeout, backoff_base=args.backoff,
            backoff_max=max(5.0, args.backoff), lang=args.lang, run_in_thread=False)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        print(f"error: HTTP {status} from {redact_url(url)}: the wait ended "
              f"({time.monotonic() - started:.2f} s)", file=err)
        return EXIT_HTTP_ERROR
    except requests.RequestException as exc:  # ours too: task failed, deadline, not JSON
        print(f"error: {type(exc).__name__}: {redact_text(str(exc))} "
              f"({time.monotonic() - started:.2f} s)", file=err)
        if isinstance(exc, TaskFailedError):
            sys.stdout.write(json.dumps(exc.task, ensure_ascii=False) + "\n")
        return EXIT_HTTP_ERROR if type(exc) is SmartRetryError else exit_code_for(exc)
    finally:
        _logger.removeHandler(handler)
        _logger.setLevel(saved[0])
        _logger.propagate = saved[1]
        session.close()
    print(f"done: {done_field}={_describe(response, done_field)} "
          f"({time.monotonic() - started:.2f} s)", file=err)
    sys.stdout.flush()
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()
    return EXIT_OK


def _describe(response: requests.Response, field: str) -> Optional[str]:
    try:
        value = _field(response.json(), field)
    except ValueError:
        return None
    return None if value is None else str(value)
