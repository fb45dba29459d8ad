"""Installed package versions, recorded next to every artifact so a result can be traced to what made it."""

from __future__ import annotations

from importlib import metadata

ABSENT = "absent"


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution, or "absent"."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ABSENT
    return versions


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Only the distributions that are installed."""
    return {name: version for name, version in package_versions(names).items() if version != ABSENT}
