"""Check `esft train` arguments before Hydra runs anything, so a typo costs one line, not a traceback.

Hydra reports a bad override with a multi-line message and exit code 1 after creating output dirs. Here the
overrides are parsed and composed with the compose API first (each sweep reduced to its first value), and
the composed config goes through the same validation as a real run: unknown config groups/options/keys,
values of the wrong type and out-of-range ES/AWD settings all become one `EsftError` line.
"""

from __future__ import annotations

import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from esft.errors import EsftError

# Hydra flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}


def overrides_in(args: list[str]) -> list[str]:
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in _FLAGS_WITH_VALUE:
            skip = arg not in ("--info", "-i")
            continue
        if not arg.startswith("-"):
            found.append(arg)
    return found


def _first_point(overrides: list[str]) -> list[str]:
    """Reduce sweeps (`a=1,2`, `range(...)`, `glob(...)`) to their first value, for a single composition."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise EsftError(f"cannot parse override: {_first_line(exc)}") from None
    single = []
    for override, text in zip(parsed, overrides):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()), None)
            single.append(f"{override.get_key_element()}={first}")
        else:
            single.append(text)
    return single


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_option_message(exc: MissingConfigException, conf: Path) -> str:
    match = re.search(r"Could not find '([^/']+)/([^']+)'", str(exc))
    if not match:
        return _first_line(exc)
    group, option = match.groups()
    options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
    hint = f"; available: {', '.join(options)}" if options else ""
    return f"unknown {group} '{option}'{hint}"


def check_train_args(args: list[str], conf: Path) -> None:
    """Raise EsftError (one line) if the arguments cannot make a valid run."""
    overrides = _first_point(overrides_in(args))
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        container = OmegaConf.to_container(cfg, resolve=True)
    except MissingConfigException as exc:
        raise EsftError(_missing_option_message(exc, conf)) from None
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        cause = _first_line(exc.__cause__ or exc)
        unknown = re.search(r"Key '([^']+)' is not in struct", cause)
        if unknown:
            key = unknown.group(1)
            raise EsftError(f"unknown config key '{key}' (see `esft train --cfg job` for all keys)") from None
        raise EsftError(f"bad override: {cause}") from None
    from esft.curriculum import build_eval_tasks, build_stages
    from esft.trainers import validate_method_config

    validate_method_config(str(container["method"]["name"]), container)
    build_eval_tasks(container, build_stages(container))
    _check_existing_run_dir(overrides, container)


def _check_existing_run_dir(overrides: list[str], container: dict) -> None:
    """Refuse to point a different config at an existing run dir: Hydra would overwrite its .hydra/ record."""
    from esft.experiment import config_fingerprint
    from esft.rundir import RUN_INFO_FILE, read_json

    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if not run_dirs:
        return
    info = Path(run_dirs[-1]) / RUN_INFO_FILE
    if info.exists() and read_json(info).get("config_fingerprint") != config_fingerprint(container):
        raise EsftError(f"run dir {run_dirs[-1]} was made by a different config; resume it with "
                        "`esft train --resume DIR` (same overrides) or choose a new hydra.run.dir")
