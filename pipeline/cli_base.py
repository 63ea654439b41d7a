"""The ``cskd-pipeline`` group and what every command module shares: one-line errors with
their exit codes, the ``-m`` and ``-o`` options, manifest loading. The command modules
(``cli``, ``cli_manage``, ``cli_data``, ``cli_serve``, ``cli_study``) import this one and
register on ``main``; ``pipeline.cli`` imports them all, so nothing imports back up.

Exit codes: 0 ok, 1 gate failed, 2 bad input, 3 missing optional back-end or
hardware, 4 failure at run time, 130/143 interrupted.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click

from foundation.errors import (
    EXIT_BAD_INPUT,
    EXIT_MISSING_BACKEND,
    EXIT_RUNTIME,
    ManifestError,
    PipelineError,
)

DEFAULT_MANIFEST = Path("manifests") / "quickstart.yaml"
# The ready manifests ship inside the package (`manifests/` in a checkout links here), so
# `-m quickstart` works from any folder, as Ultralytics' configs do.
EXAMPLES = Path(__file__).resolve().parent / "examples"
LOCAL_MANIFEST = Path("manifest.yaml")  # what `init DIR` writes: `cd DIR && cskd-pipeline run` finds it


def _fail(message: str, code: int) -> None:
    for line in message.splitlines() or [""]:  # one line per problem, each with the prefix
        click.echo(f"cskd-pipeline: error: {line}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Map every expected failure to one line on stderr and its exit code (no traceback)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from cskd.errors import CheckpointError, DataError
        from cskd.interrupts import Interrupted
        from exports.errors import BackendUnavailable

        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            _fail(str(exc), exc.exit_code)
        except (DataError, CheckpointError) as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except BackendUnavailable as exc:
            _fail(str(exc), EXIT_MISSING_BACKEND)
        except Interrupted as exc:
            _fail(str(exc), 128 + exc.signum)  # 130 for SIGINT, 143 for SIGTERM
        except KeyboardInterrupt:
            _fail("interrupted; rerun the same command to resume", 130)
        except BrokenPipeError:  # `cskd-pipeline plan | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a command killed by it
        except Exception as exc:  # a bug or an environment failure: one line, traceback on request
            if os.environ.get("CSKD_DEBUG"):
                raise
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                _fail(f"disk full while writing {exc.filename or 'the store'}; free space and rerun "
                      f"(nothing partial was committed)", EXIT_RUNTIME)
            _fail(f"{type(exc).__name__}: {exc} (set CSKD_DEBUG=1 for the traceback)", EXIT_RUNTIME)

    return wrapper


def resolve_manifest_path(value: str | None) -> Path:
    """``-m`` takes a path, or a bare name: ``./NAME.yaml``, then ``manifests/NAME.yaml``, then the
    example of that name installed with the package (with or without .yaml). Without ``-m``:
    ``./manifest.yaml`` (what ``init`` writes), else the quickstart."""
    if value is None:
        for default in (LOCAL_MANIFEST, DEFAULT_MANIFEST):
            if default.is_file():
                return default
        raise ManifestError(f"no manifest given, and neither {LOCAL_MANIFEST} nor {DEFAULT_MANIFEST} is here; "
                            f"pass -m PATH, or write one with `cskd-pipeline init`")
    path = Path(value)
    if path.exists():
        return path
    named = [folder / name for folder in (Path("manifests"), EXAMPLES) for name in (value, f"{value}.yaml")]
    for candidate in (Path(f"{value}.yaml"), *named):  # the examples installed with the package last
        if candidate.is_file():
            return candidate
    return path  # load_manifest reports it as not found


def load_from_option(manifest_opt: str | None, overrides: tuple[str, ...] = ()):
    from pipeline.manifest_io import load_manifest

    return load_manifest(resolve_manifest_path(manifest_opt), overrides)


def store_from_option(manifest_opt: str | None) -> str:
    """The manifest's store, read without the schema (no stage, no torch): what ``gc`` needs."""
    from pipeline.manifest_yaml import store_of

    return store_of(resolve_manifest_path(manifest_opt))


manifest_option = click.option("-m", "--manifest", "manifest_opt", metavar="PATH",
                               help="manifest file, or a name: ./NAME.yaml, then manifests/NAME.yaml, then the examples "
                                    "installed with the package, e.g. -m quickstart (default: ./manifest.yaml, "
                                    "else manifests/quickstart.yaml)")
set_option = click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override a manifest value, e.g. -o student.train.epochs=3 (repeatable; validated "
                               "like the file and part of the ids)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cskd-pipeline", prog_name="cskd-pipeline")
def main() -> None:
    """Declarative compression pipeline: teacher, CS-KD distillation, export, validation, gate, ship.

    \b
    Start:    cskd-pipeline init my-project && cd my-project && cskd-pipeline run
    Examples: cskd-pipeline run -m quickstart -o student.train.epochs=5
              cskd-pipeline plan --json
    """


def registered_backends() -> dict:
    import stages  # noqa: F401 - registers the back-ends
    from foundation.backends import backends

    return backends()
