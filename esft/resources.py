"""Where esft's shipped configs live (and how a script reads one), and which `esft train` arguments are Hydra overrides.

A leaf module (imports nothing of esft): the command line, the task registry (which lists the task configs)
and the trackers (which name a sweep's runs by their overrides) all need these two facts.
"""

from __future__ import annotations

from pathlib import Path

# Hydra flags that take a value (the value is not an override).
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                    "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}


def conf_dir() -> Path:
    """The shipped configs: esft/conf inside a wheel, the repository's conf/ in a source checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def shipped_config(group: str, name: str) -> dict:
    """One shipped config file (conf/GROUP/NAME.yaml) as a plain dict with its interpolations resolved, for
    scripts that reuse a preset's values outside Hydra (its `defaults` list is not composed)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{name}.yaml"), resolve=True)


def overrides_in(args: list[str]) -> list[str]:
    """The `key=value` overrides among Hydra's arguments (flags and their values left out)."""
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in FLAGS_WITH_VALUE:
            skip = arg not in ("--info", "-i")
            continue
        if not arg.startswith("-"):
            found.append(arg)
    return found
