"""Exit 0 when ser-jax is installed and every requirement of pyproject.toml (plus the extras
named in argv[1], comma-separated) is met in this environment; 1 otherwise."""

import importlib.metadata as metadata
import sys
import tomllib

from packaging.requirements import Requirement


def main() -> int:
    with open("pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    extras = [e for e in sys.argv[1].split(",") if e] if len(sys.argv) > 1 else []
    wanted = [*project["dependencies"],
              *(r for e in extras for r in project["optional-dependencies"][e])]
    try:
        metadata.version(project["name"])
        for requirement in map(Requirement, wanted):
            if requirement.marker and not requirement.marker.evaluate():
                continue
            if not requirement.specifier.contains(metadata.version(requirement.name),
                                                  prereleases=True):
                return 1
    except (metadata.PackageNotFoundError, KeyError):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
