"""One list of runtime packages: pyproject, the plugin's dependency check and its README agree with it."""

import tomllib
from pathlib import Path

from sar_ae_core.requirements import CLI, RUNTIME, TRAIN, pip_requirements

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_exactly_the_runtime_packages():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(deps) == {"numpy<2"} | set(pip_requirements()) | {req for _, req in CLI}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["train"]) == {req for _, req in TRAIN}


def test_every_runtime_module_imports_and_the_default_model_needs_constriction():
    modules = [m for m, _ in RUNTIME]
    assert "constriction" in modules and "onnxruntime" in modules and "torch" not in modules
    for m in modules:
        __import__(m)


def test_plugin_check_and_readme_name_every_runtime_package():
    from qgis_plugin import deps

    assert deps.REQUIRED == RUNTIME
    command = deps.install_command([(m, r, "") for m, r in RUNTIME])
    readme = (ROOT / "qgis_plugin" / "README.md").read_text()
    for _, req in RUNTIME:
        assert f'"{req}"' in command
        assert readme.count(f'"{req}"') >= 3, req  # the user, venv and Windows install commands
